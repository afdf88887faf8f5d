//! Speed layer from a real broker: `strata speed` (in process, writing to
//! the real ClickHouse) on a topic pre-filled with `STRATA_BENCH_EVENTS`
//! (default 1 M) clickstream events, against a bare rdkafka consumer that
//! only reads the same topic with the same fetch settings, in the same run.
//!
//!   scripts/bench-broker.sh   (starts Tansu and ClickHouse, then runs this)
//!
//! Runs only under `cargo bench` (`--bench` argument).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use strata_generator::clickstream::ClickstreamConfig;
use strata_kafka::client_config;

fn stack_env(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let env = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.strata/stack.env");
    std::fs::read_to_string(env)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix(&format!("export {name}="))
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| panic!("{name}: start the local stack first (deploy/local/up.sh)"))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let events: u64 = std::env::var("STRATA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut config =
        strata_schemas::config::load_with_env(&repo.join("strata.toml"), |_| None).unwrap();
    let tag = std::process::id();
    config.kafka.brokers = stack_env("STRATA_KAFKA_BROKERS");
    config.clickhouse.url = stack_env("STRATA_CLICKHOUSE_URL");
    config.clickhouse.database = format!("strata_bench_broker_{tag}");
    config.speed.group_id = format!("bench-speed-{tag}");
    config.speed.checkpoint_namespace = config.speed.group_id.clone();
    config.speed.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let topic = format!("bench_broker_{tag}");
    let source_name = config.sources.keys().next().unwrap().clone();
    let mut source = (*config.sources[&source_name]).clone();
    source.topic = topic.clone();
    source.dead_letter_topic = format!("{topic}.dlq");
    let source = Arc::new(source);
    config.sources.insert(source_name, source.clone());
    let metrics: Vec<_> = config
        .metrics
        .iter()
        .map(|m| {
            let mut m = (**m).clone();
            m.source = source.clone();
            Arc::new(m)
        })
        .collect();
    config.metrics = metrics;

    let started = Instant::now();
    let report = strata_generator::generate(
        &config.kafka,
        &topic,
        ClickstreamConfig {
            events,
            partitions: 4,
            users: 20_000,
            ..ClickstreamConfig::default()
        },
        0,
        |_| {},
    )
    .await
    .unwrap();
    println!(
        "pre-filled {topic}: {} records in {:.1}s",
        report.sent,
        started.elapsed().as_secs_f64()
    );

    // Bare consumer: reads and counts, nothing else.
    let bare = {
        let kafka = config.kafka.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = client_config(&kafka)
                .set("group.id", format!("bench-bare-{tag}"))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.max.bytes", "1048576")
                .set("max.partition.fetch.bytes", "262144")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let started = Instant::now();
            let mut n = 0u64;
            let mut bytes = 0usize;
            while n < events {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    n += 1;
                    bytes += m.payload().map_or(0, <[u8]>::len);
                }
            }
            (started.elapsed().as_secs_f64(), bytes)
        })
        .await
        .unwrap()
    };
    println!(
        "bare consumer : {events} records in {:.2}s = {:>9.0} records/s ({} payload bytes)",
        bare.0,
        events as f64 / bare.0,
        bare.1
    );

    // strata speed: the whole pipeline, ClickHouse writes included.
    let client = strata_warehouse::client(&config.clickhouse);
    strata_warehouse::init(&client, &config).await.unwrap();
    let config = Arc::new(config);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = strata_speed::metrics::install();
    let started = Instant::now();
    let run = tokio::spawn(strata_speed::run::run(config.clone(), shutdown.clone()));
    let read = || -> f64 {
        handle
            .render()
            .lines()
            .filter(|l| l.starts_with("strata_speed_records_in_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    while read() < events as f64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let speed_secs = started.elapsed().as_secs_f64();
    shutdown.store(true, Ordering::Relaxed);
    let report = run.await.unwrap().unwrap();
    println!(
        "strata speed  : {events} records in {speed_secs:.2}s = {:>9.0} records/s ({} rows written to ClickHouse)",
        events as f64 / speed_secs,
        report.rows_written
    );
    println!(
        "ratio: speed / bare = {:.2} (target >= 0.9)",
        bare.0 / speed_secs
    );
    let _ = strata_warehouse::execute(
        &client,
        &format!("DROP DATABASE IF EXISTS {}", config.clickhouse.database),
    )
    .await;
}
