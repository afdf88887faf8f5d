//! The batch watermark never passes data the archive has not stored yet
//! (issue 18, item 9): a partition counts as complete only when its
//! archived progress reached the broker's high-water mark, not when its
//! last flush is older than `speed.idle_timeout`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, GeneratedRecord};
use support::expected;
use support::{TestEnv, rows_at, run_ok};

const MINUTE: i64 = 60_000;
const START: i64 = 1_795_341_600_000;

/// In order within each partition (no disorder, no late events), so an
/// event produced later never belongs below a published watermark.
fn stream() -> ClickstreamConfig {
    ClickstreamConfig {
        seed: 29,
        events: 12_000,
        users: 200,
        partitions: 4,
        start_ms: START,
        step_ms: 300,
        out_of_order_fraction: 0.0,
        late_fraction: 0.0,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        cohort_ms: 20 * MINUTE,
        ..ClickstreamConfig::default()
    }
}

fn config_of(env: &TestEnv) -> strata_schemas::Config {
    let (db, ch, kafka) = (
        env.database.clone(),
        env.clickhouse_url.clone(),
        env.kafka_brokers.clone(),
    );
    strata_schemas::config::load_with_env(&env.config, move |name| match name {
        "STRATA_CLICKHOUSE_DATABASE" => Some(db.clone()),
        "STRATA_CLICKHOUSE_URL" => Some(ch.clone()),
        "STRATA_KAFKA_BROKERS" => Some(kafka.clone()),
        _ => None,
    })
    .unwrap()
}

/// Produces `records` to their partitions, in order.
async fn produce(env: &TestEnv, records: &[&GeneratedRecord]) {
    let config = config_of(env);
    strata_kafka::ensure_topic(&config.kafka, &env.topic, 4)
        .await
        .unwrap();
    let producer: FutureProducer = strata_kafka::client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Enqueued in order (one partition's records keep their order), then
    // awaited together.
    let deliveries: Vec<_> = records
        .iter()
        .map(|r| {
            producer
                .send_result(
                    FutureRecord::to(&env.topic)
                        .partition(r.partition)
                        .key(&r.key)
                        .payload(&r.payload),
                )
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// page_views_per_minute as published: (window, page, country) → views.
async fn published_per_minute(env: &TestEnv) -> BTreeMap<(i64, String, String), u64> {
    let db = &env.database;
    rows_at(&env.clickhouse_url, &format!(
        "SELECT window_start_ms, page, country, argMax(agg_events, run_id) AS c, argMax(retracted, run_id) AS r \
         FROM {db}.page_views_per_minute_batch WHERE run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = 'page_views_per_minute' AND status = 'published') \
         GROUP BY window_start_ms, page, country HAVING r = 0"
    ))
    .await
    .into_iter()
    .map(|r| {
        (
            (
                r["window_start_ms"].as_i64().unwrap(),
                r["page"].as_str().unwrap().to_string(),
                r["country"].as_str().unwrap().to_string(),
            ),
            r["c"].as_u64().unwrap(),
        )
    })
    .collect()
}

/// Every event in Kafka (`records`) of the windows before the watermark.
fn expected_below(
    records: &[GeneratedRecord],
    watermark: i64,
) -> BTreeMap<(i64, String, String), u64> {
    expected::compute(records, None)
        .per_minute
        .into_iter()
        .filter(|(k, _)| k.0 < watermark)
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Runs `strata batch run --once` and checks the published per-minute view
/// against every event in Kafka below the watermark; returns the watermark.
async fn run_and_check(env: &TestEnv, in_kafka: &[GeneratedRecord], what: &str) -> i64 {
    let out = run_ok(env.strata().args(["batch", "run", "--once"]));
    let (_, watermark) = env.published("page_views_per_minute").await;
    let view = published_per_minute(env).await;
    let want = expected_below(in_kafka, watermark);
    let missing: u64 = want
        .iter()
        .map(|(k, v)| v.saturating_sub(view.get(k).copied().unwrap_or(0)))
        .sum();
    assert_eq!(
        missing, 0,
        "{what}: events in Kafka below the watermark {watermark} missing from the published view\n{out}"
    );
    assert_eq!(
        view, want,
        "{what}: published view at watermark {watermark}"
    );
    watermark
}

#[tokio::test]
async fn batch_watermark_waits_for_partitions_the_archive_has_not_caught_up_with() {
    let env = TestEnv::new("horizon", "");
    // Short idle timeout: with the old rule every partition is "idle" a
    // few seconds after its last flush.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"2s\"");
    std::fs::write(&env.config, text).unwrap();
    env.init();
    let records: Vec<_> = Clickstream::new(stream()).collect();
    // Partition 0 whole; partitions 1-3 only up to minute 20 at first.
    let cut = START + 20 * MINUTE;
    let cut_seq = records
        .iter()
        .find(|r| r.event.as_ref().is_some_and(|e| e.event_time_ms >= cut))
        .unwrap()
        .seq;
    let (first, second): (Vec<&GeneratedRecord>, Vec<&GeneratedRecord>) = records
        .iter()
        .partition(|r| r.partition == 0 || r.seq < cut_seq);
    assert!(second.len() > 5_000, "{}", second.len());
    produce(&env, &first).await;
    let first_valid = first.iter().filter(|r| r.event.is_some()).count() as u64;
    env.archive_all(first_valid).await;
    // The rest reaches Kafka while no archiver runs.
    produce(&env, &second).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let watermark = run_and_check(&env, &records, "archiver stopped").await;
    assert!(
        watermark <= cut && watermark > START,
        "the lagging partitions hold the watermark at minute 20: {watermark}"
    );
    // While the archiver catches up, a run at any moment publishes only
    // complete windows.
    let mut archive = env.spawn(&["archive"], "archive-catch-up");
    let mut last = watermark;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let w = run_and_check(&env, &records, "archiver catching up").await;
        assert!(w >= last, "the watermark moved back: {last} -> {w}");
        last = w;
    }
    let total = support::valid(&records);
    assert!(
        support::wait_until(Duration::from_secs(120), || async {
            env.archived_events() == total
        })
        .await,
        "{}",
        env.log("archive-catch-up")
    );
    let newest = records
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(|e| e.event_time_ms)
        .max()
        .unwrap();
    // Every partition caught up: the newest event bounds the watermark.
    let w = run_and_check(&env, &records, "archive caught up").await;
    assert_eq!(w, (newest - 30_000).div_euclid(MINUTE) * MINUTE);
    support::terminate(&mut archive.0);
    env.drop_database().await;
}

#[tokio::test]
async fn batch_run_skips_while_a_partition_with_records_has_no_archived_event() {
    let env = TestEnv::new("horizon_blocked", "");
    env.init();
    let records: Vec<_> = Clickstream::new(stream()).collect();
    // Partitions 0-2 archived; partition 3 receives records afterwards.
    let (first, second): (Vec<&GeneratedRecord>, Vec<&GeneratedRecord>) =
        records.iter().partition(|r| r.partition != 3);
    produce(&env, &first).await;
    env.archive_all(first.iter().filter(|r| r.event.is_some()).count() as u64)
        .await;
    produce(&env, &second).await;
    let out = run_ok(env.strata().args(["batch", "run", "--once"]));
    assert!(
        out.contains("partition 3 of") && out.contains("the archive has stored no event yet"),
        "{out}"
    );
    let runs = rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT count() AS n FROM {}.strata_batch_runs",
            env.database
        ),
    )
    .await;
    assert_eq!(runs[0]["n"].as_u64(), Some(0), "nothing published: {out}");
    env.drop_database().await;
}
