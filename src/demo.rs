//! `strata demo`: the whole platform in one process on local defaults.
//!
//! A generator publishes a steady clickstream (with out-of-order, late and
//! malformed records) to librdkafka's in-process mock cluster (or to the
//! configured brokers with `--external-kafka`); the speed layer, the
//! archive, the batch layer (every minute) and the API run as tasks against
//! the local ClickHouse. Before going live the generator replays a history
//! (the last `--history` of events, fast), so the batch view has closed
//! windows and sessions to publish within the first minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use strata_generator::clickstream::ClickstreamConfig;
use strata_schemas::config::{Config, SchemaRegistry, SourceFormat};
use strata_schemas::value::format_rfc3339_ms;
use strata_warehouse as warehouse;

/// The demo's Avro source (and topic).
const AVRO_SOURCE: &str = "page_views_avro";

/// `strata demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Live events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How much event history to replay before going live.
    #[arg(long, default_value = "45m")]
    pub history: String,
    /// ClickHouse database of the demo (dropped and recreated at start).
    #[arg(long, default_value = "strata_demo")]
    pub database: String,
    /// Use kafka.brokers from the config (or STRATA_KAFKA_BROKERS) instead
    /// of the in-process mock cluster.
    #[arg(long)]
    pub external_kafka: bool,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<String>,
}

fn stream(seed: u64, start_ms: i64, step_ms: i64, events: u64) -> ClickstreamConfig {
    ClickstreamConfig {
        seed,
        events,
        users: 400,
        pages: 40,
        countries: 8,
        partitions: 4,
        start_ms,
        step_ms,
        out_of_order_fraction: 0.1,
        max_disorder_ms: 5_000,
        late_fraction: 0.005,
        late_by_ms: 120_000,
        malformed_fraction: 0.003,
        invalid_fraction: 0.003,
        cohort_ms: 10 * 60_000,
        ..ClickstreamConfig::default()
    }
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(
    mut config: Config,
    args: &DemoArgs,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let history_ms = args
        .history
        .parse::<strata_schemas::DurationMs>()
        .map_err(|e| anyhow::anyhow!("--history {:?}: {e}", args.history))?
        .as_i64();
    anyhow::ensure!(args.rate >= 1, "--rate must be at least 1");
    let stop_after = args
        .duration
        .as_deref()
        .map(|d| {
            d.parse::<strata_schemas::DurationMs>()
                .map_err(|e| anyhow::anyhow!("--duration {d:?}: {e}"))
        })
        .transpose()?;

    // Fresh state: the mock cluster starts empty, so checkpoints and
    // archive progress of an earlier demo must not survive.
    config.clickhouse.database = args.database.clone();
    let lake = config.base_dir.join(".strata/demo/lake");
    let _ = std::fs::remove_dir_all(&lake);
    config.object_store.url = format!("file://{}", lake.display());
    config.batch.schedule = "0 * * * * *".parse().context("demo schedule")?;
    config.archive.flush_interval = strata_schemas::DurationMs(5_000);
    config.batch.schedule_text = "0 * * * * *".into();
    let source = config
        .sources
        .values()
        .next()
        .cloned()
        .context("the config defines no source")?;
    // An Avro source beside the JSON one: the same clickstream as
    // Confluent-framed Avro, its writer schema in an in-memory schema
    // registry (Confluent's REST API), and the first metric's twin over it.
    let registry = strata_registry::LocalRegistry::new();
    let registry_server = registry
        .start(([127, 0, 0, 1], 0).into())
        .await
        .context("starting the demo's schema registry")?;
    let avro_source = Arc::new(strata_schemas::Source {
        name: AVRO_SOURCE.into(),
        topic: AVRO_SOURCE.into(),
        dead_letter_topic: format!("{AVRO_SOURCE}.dlq"),
        format: SourceFormat::Avro(SchemaRegistry {
            url: registry_server.url(),
            subject: format!("{AVRO_SOURCE}-value"),
            basic_auth: None,
            timeout: strata_schemas::DurationMs(2_000),
            retry_after: strata_schemas::DurationMs(5_000),
        }),
        ..(*source).clone()
    });
    let avro_schema_id = registry
        .register(
            &format!("{AVRO_SOURCE}-value"),
            strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA,
        )
        .map_err(|(code, message)| {
            anyhow::anyhow!("registering the demo's Avro schema: {code} {message}")
        })?;
    let twin = {
        // The metric the banner's queries use.
        let first = config
            .metric("page_views_per_minute")
            .or(config.metrics.first())
            .context("the config defines no metric")?;
        strata_schemas::MetricDef {
            name: format!("{}_avro", first.name),
            description: Some(format!(
                "{} (the same events as Avro, from source {AVRO_SOURCE})",
                first.description.as_deref().unwrap_or(&first.name)
            )),
            source: avro_source.clone(),
            ..(**first).clone()
        }
    };
    config
        .sources
        .insert(AVRO_SOURCE.into(), avro_source.clone());
    config.metrics.push(Arc::new(twin));
    let mock = if args.external_kafka {
        None
    } else {
        let mock = rdkafka::mocking::MockCluster::new(1)
            .context("starting the in-process Kafka mock cluster")?;
        config.kafka.brokers = mock.bootstrap_servers();
        // The mock cluster does not serve CreateTopics: create them here.
        for s in config.sources.values() {
            mock.create_topic(&s.topic, 4, 1)
                .context("creating the demo topic")?;
            mock.create_topic(&s.dead_letter_topic, 4, 1)
                .context("creating the dead-letter topic")?;
        }
        Some(mock)
    };
    let client = warehouse::client(&config.clickhouse);
    warehouse::execute(
        &client,
        &format!("DROP DATABASE IF EXISTS `{}`", args.database),
    )
    .await
    .with_context(|| {
        format!(
            "reaching ClickHouse at {} (start the local stack: deploy/local/up.sh)",
            config.clickhouse.url
        )
    })?;
    warehouse::init(&client, &config).await?;
    let config = Arc::new(config);

    let mut tasks = Vec::new();
    let speed = tokio::spawn(strata_speed::run::run(config.clone(), shutdown.clone()));
    let archive = tokio::spawn(strata_batch::archive::run(config.clone(), shutdown.clone()));
    let serve_flag = shutdown.clone();
    let api = tokio::spawn(strata_serving::serve(config.clone(), async move {
        while !serve_flag.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));

    // History, fast: 20 events/s of event time over --history.
    let now = chrono::Utc::now().timestamp_millis();
    let history_events = (history_ms / 50).max(0) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    eprintln!(
        "strata demo: replaying {} of history ({history_events} events) into {} ...",
        args.history,
        if mock.is_some() {
            "the in-process Kafka mock cluster".to_string()
        } else {
            config.kafka.brokers.clone()
        }
    );
    let report = match strata_generator::generate(
        &config.kafka,
        &source.topic,
        stream(7, now - history_ms, 50, history_events),
        0,
        |n| counter.store(n, Ordering::Relaxed),
    )
    .await
    {
        Ok(report) => report,
        Err(e) => {
            // Stop the layers before the broker goes away with this frame.
            shutdown.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                let _ = speed.await;
                let _ = archive.await;
                let _ = api.await;
            })
            .await;
            return Err(e.into());
        }
    };
    let history_sent = report.sent;
    let avro_history = ClickstreamConfig {
        avro_schema_id: Some(avro_schema_id),
        ..stream(7, now - history_ms, 50, history_events)
    };
    strata_generator::generate(&config.kafka, &avro_source.topic, avro_history, 0, |_| {})
        .await
        .context("replaying the Avro history")?;
    // Live: event time follows the wall clock.
    let live_counter = sent.clone();
    let live_kafka = config.kafka.clone();
    let live_topic = source.topic.clone();
    let rate = args.rate;
    tasks.push(tokio::spawn(async move {
        let step = (1000 / rate.max(1)).max(1) as i64;
        let start = chrono::Utc::now().timestamp_millis();
        strata_generator::generate(
            &live_kafka,
            &live_topic,
            stream(8, start, step, rate * 86_400),
            rate,
            |n| {
                live_counter.store(history_sent + n, Ordering::Relaxed);
            },
        )
        .await
        .map(|_| ())
        .map_err(anyhow::Error::from)
    }));
    let (avro_kafka, avro_topic) = (config.kafka.clone(), avro_source.topic.clone());
    tasks.push(tokio::spawn(async move {
        let step = (1000 / rate.max(1)).max(1) as i64;
        let start = chrono::Utc::now().timestamp_millis();
        let live = ClickstreamConfig {
            avro_schema_id: Some(avro_schema_id),
            ..stream(8, start, step, rate * 86_400)
        };
        strata_generator::generate(&avro_kafka, &avro_topic, live, rate, |_| {})
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
    }));

    // First batch run as soon as the archive holds the history.
    let batch_ctx = strata_batch::run::BatchContext::new(config.clone())?;
    for _ in 0..240 {
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        let metric = &config.metrics[0];
        if let Some(h) = strata_batch::run::archive_horizon(&batch_ctx, metric).await?
            && h >= now - 120_000
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for r in strata_batch::run::run_once(&batch_ctx, None).await? {
        eprintln!(
            "strata demo: batch run of {}: watermark {}",
            r.metric,
            r.watermark_ms
                .map_or_else(|| "none".into(), format_rfc3339_ms)
        );
    }
    let batch = tokio::spawn(strata_batch::schedule::run_scheduled(
        batch_ctx,
        shutdown.clone(),
    ));

    let api_url = format!("http://{}", config.serving.listen);
    let metric = &config
        .metrics
        .iter()
        .find(|m| m.name == "page_views_per_minute")
        .unwrap_or(&config.metrics[0])
        .name;
    println!(
        "\nStrata demo is running.\n\
         \n  API          {api_url}/docs   (OpenAPI: {api_url}/openapi.json)\
         \n  metrics      curl -s {api_url}/v1/metrics\
         \n  query        curl -s '{api_url}/v1/metrics/{metric}/query?from={}&to={}&group_by=country'\
         \n  top pages    curl -s '{api_url}/v1/metrics/{metric}/query?from={}&to={}&group_by=page&granularity=5m&top=3&order_by=views'\
         \n  CSV          curl -s '{api_url}/v1/metrics/active_users_5m/query?from={}&to={}&format=csv'\
         \n  Avro twin    curl -s '{api_url}/v1/metrics/{metric}_avro/query?from={}&to={}&group_by=country'   (schema registry {})\
         \n  ClickHouse   clickhouse-client --port 19000 -q 'SELECT * FROM {}.{metric}_merged ORDER BY window_start DESC LIMIT 10'\
         \n  Grafana      docker compose -f deploy/docker-compose.yml up grafana (dashboards in deploy/grafana/)\
         \n  Prometheus   curl -s http://{}/metrics | grep strata_speed\
         \n\nPress Ctrl-C to stop.\n",
        format_rfc3339_ms(now - history_ms).replace(".000Z", "Z"),
        format_rfc3339_ms(now + 3_600_000).replace(".000Z", "Z"),
        format_rfc3339_ms(now - history_ms).replace(".000Z", "Z"),
        format_rfc3339_ms(now + 3_600_000).replace(".000Z", "Z"),
        format_rfc3339_ms(now - history_ms).replace(".000Z", "Z"),
        format_rfc3339_ms(now + 3_600_000).replace(".000Z", "Z"),
        format_rfc3339_ms(now - history_ms).replace(".000Z", "Z"),
        format_rfc3339_ms(now + 3_600_000).replace(".000Z", "Z"),
        registry_server.url(),
        args.database,
        config.speed.metrics_listen,
    );

    let started = std::time::Instant::now();
    let mut last = (std::time::Instant::now(), sent.load(Ordering::Relaxed));
    let handle = strata_speed::metrics::install();
    while !shutdown.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(limit) = stop_after
            && started.elapsed().as_millis() as u64 >= limit.millis()
        {
            shutdown.store(true, Ordering::Relaxed);
            break;
        }
        let now_sent = sent.load(Ordering::Relaxed);
        let rate = (now_sent - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
        last = (std::time::Instant::now(), now_sent);
        let m = config
            .metrics
            .iter()
            .find(|m| &m.name == metric)
            .unwrap_or(&config.metrics[0]);
        let state = warehouse::run_log::query_state(&client, &args.database, &m.name)
            .await
            .ok();
        let speed_wm = state.and_then(|s| s.speed_watermark);
        let batch_wm = state.and_then(|s| s.batch);
        let text = handle.render();
        let dead: f64 = text
            .lines()
            .filter(|l| l.starts_with("strata_speed_dead_letters_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "{}  events/s {rate:>5.0}  sent {now_sent:>8}  {}: speed watermark {}  batch watermark {}  dead letters {dead:.0}",
            chrono::Utc::now().format("%H:%M:%S"),
            m.name,
            speed_wm.map_or_else(|| "-".into(), format_rfc3339_ms),
            batch_wm.map_or_else(|| "-".into(), |b| format_rfc3339_ms(b.1)),
        );
    }
    eprintln!("strata demo: stopping (flushing the speed layer and the archive) ...");
    for t in tasks {
        t.abort();
    }
    let speed = speed.await.context("speed task")??;
    let archive = archive.await.context("archive task")??;
    batch.await.context("batch task")??;
    api.await.context("api task")??;
    drop(mock);
    registry_server.stop().await;
    println!(
        "strata demo stopped cleanly: speed read {} records ({} dead letters), archive stored {} events in {} files",
        speed.records, speed.dead_letters, archive.events, archive.files
    );
    Ok(())
}
