//! An Avro source beside the JSON one, through every layer: the same
//! clickstream is sent as JSON to `page_views` and as Confluent-framed Avro
//! (the generator's own writer schema, registered in a schema registry
//! serving Confluent's documented API on loopback) to `page_views_avro`,
//! whose metrics are the reference metrics' twins. Speed, archive, batch
//! and the API then give the Avro metrics exactly the JSON metrics'
//! answers, and those equal the aggregates the test computes itself. Kafka
//! is librdkafka's in-process mock cluster.

mod support;

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use serde_json::{Map, Value as Json};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use strata_registry::LocalRegistry;
use support::{TestEnv, expected, http_get, query_rows, run_ok, terminate, wait_until};

const MINUTE: i64 = 60_000;

/// The API's rows for `metric`, in a fixed order (the twin metrics' rows
/// are compared as sets).
fn answer(port: u16, metric: &str) -> Vec<Map<String, Json>> {
    let mut rows = query_rows(port, metric);
    rows.sort_by_key(|r| Json::Object(r.clone()).to_string());
    rows
}

/// The Avro source and the reference metrics' twins over it.
fn avro_source(topic: &str, registry_url: &str) -> String {
    let text = std::fs::read_to_string(support::repo().join("strata.toml")).unwrap();
    let metrics = &text[text.find("[metrics.page_views_per_minute]").unwrap()..];
    let twins = metrics
        .replace(
            "[metrics.page_views_per_minute]",
            "[metrics.page_views_per_minute_avro]",
        )
        .replace(
            "[metrics.active_users_5m]",
            "[metrics.active_users_5m_avro]",
        )
        .replace("[metrics.user_sessions]", "[metrics.user_sessions_avro]")
        .replace("source = \"page_views\"", "source = \"page_views_avro\"");
    format!(
        r#"
[sources.page_views_avro]
topic = "{topic}"
contract = "page_view"
contract_version = 2
event_time_field = "event_time"
allowed_lateness = "30s"
max_past = "3650d"
format = "avro"
schema_registry = {{ url = "{registry_url}", timeout = "2s" }}

{twins}
"#
    )
}

/// Counts of `strata.error.kind` among the first `expected` records of a
/// dead-letter topic.
fn dead_letter_kinds(
    env: &TestEnv,
    topic: &str,
    expected: usize,
) -> std::collections::BTreeMap<String, usize> {
    use rdkafka::consumer::Consumer as _;
    use rdkafka::message::{Headers as _, Message as _};
    let consumer = support::read_from_start(&env.kafka_brokers, topic, 2, "avro_dlq");
    let mut kinds = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < expected && std::time::Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        seen += 1;
        let kind = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "strata.error.kind")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            })
            .unwrap_or_default();
        *kinds.entry(kind).or_default() += 1;
    }
    // Nothing more may follow.
    if let Some(Ok(extra)) = consumer.poll(Duration::from_secs(2)) {
        panic!(
            "more than {expected} dead letters in {topic}: offset {}",
            extra.offset()
        );
    }
    consumer.unsubscribe();
    kinds
}

async fn events_in(env: &TestEnv, table: &str) -> u64 {
    support::try_rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT sum(agg_events) AS c FROM {}.{table} FINAL WHERE retracted = 0",
            env.database
        ),
    )
    .await
    .and_then(|rows| rows.first().and_then(|r| r["c"].as_u64()))
    .unwrap_or(0)
}

// Multi-threaded: the registry serves on one worker while the test blocks
// on `strata` commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avro_source_gives_the_json_sources_answers_in_every_layer() {
    let registry = LocalRegistry::new();
    let running = registry
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let avro_topic = support::unique("avro");
    // librdkafka's in-process mock cluster (a real Kafka-protocol broker;
    // it serves no CreateTopics, so the topics are made here): two whole
    // platforms' worth of traffic stay off the shared Tansu.
    let mock = MockCluster::new(1).unwrap();
    let mut env = TestEnv::new("avro_json", &avro_source(&avro_topic, &running.url()));
    env.kafka_brokers = mock.bootstrap_servers();
    for topic in [&env.topic, &avro_topic] {
        mock.create_topic(topic, 2, 1).unwrap();
        mock.create_topic(&format!("{topic}.dlq"), 2, 1).unwrap();
    }
    env.init();
    let config = ClickstreamConfig {
        seed: 17,
        events: 6_000,
        users: 120,
        partitions: 2,
        start_ms: 1_795_341_600_000,
        step_ms: 600,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        late_fraction: 0.02,
        late_by_ms: 3 * MINUTE,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        cohort_ms: 20 * MINUTE,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    // The source's format is avro: the generator registers its writer
    // schema under page_views_avro's subject and frames every record.
    let out = run_ok(
        env.generate_command(&config)
            .args(["--source", "page_views_avro"]),
    );
    assert!(
        out.contains(&format!(
            "producer schema registered as id 1 under subject {avro_topic}-value"
        )),
        "{out}"
    );
    let records: Vec<_> = Clickstream::new(config).collect();
    let speed_truth = expected::compute(&records, Some(30_000));
    let valid = support::valid(&records);
    let dead = records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Malformed | RecordKind::Invalid))
        .count();

    let mut speed = env.spawn_speed(0);
    let mut archive = env.spawn(&["archive"], "archive");
    let archived = wait_until(Duration::from_secs(240), || async {
        env.archived_events() == valid
            && env.archived_events_of("page_views_avro", &avro_topic) == valid
    })
    .await;
    assert!(
        archived,
        "archived {} JSON and {} Avro of {valid}:\n{}",
        env.archived_events(),
        env.archived_events_of("page_views_avro", &avro_topic),
        env.log("archive")
    );
    wait_until(Duration::from_secs(60), || async {
        env.log("archive").contains("archiver subscribed")
    })
    .await;
    assert_eq!(terminate(&mut archive.0), Some(0), "{}", env.log("archive"));
    let done = wait_until(Duration::from_secs(240), || async {
        events_in(&env, "page_views_per_minute_speed").await == speed_truth.counted
            && events_in(&env, "page_views_per_minute_avro_speed").await == speed_truth.counted
    })
    .await;
    assert!(done, "speed views incomplete:\n{}", env.speed_log(0));
    assert_eq!(terminate(&mut speed.0), Some(0), "{}", env.speed_log(0));
    let log = env.speed_log(0);
    assert!(
        log.contains(&format!(" records read, {} dead letters", 2 * dead)),
        "every malformed or invalid record of either source is a dead letter ({dead} each): {log}"
    );
    // The Avro source's dead letters carry the Avro reasons: records not
    // framed, bodies that do not decode, values breaking the contract.
    let kinds = dead_letter_kinds(&env, &format!("{avro_topic}.dlq"), dead);
    assert_eq!(kinds.values().sum::<usize>(), dead, "{kinds:?}");
    for kind in ["not_confluent_avro", "corrupt_avro", "invalid_value"] {
        assert!(kinds.get(kind).is_some_and(|n| *n > 0), "{kind}: {kinds:?}");
    }

    run_ok(env.strata().args(["batch", "run", "--once"]));
    let (server, port) = env.start_server().await;
    for metric in ["page_views_per_minute", "active_users_5m", "user_sessions"] {
        let (_, json_watermark) = env.published(metric).await;
        let (_, avro_watermark) = env.published(&format!("{metric}_avro")).await;
        assert_eq!(json_watermark, avro_watermark, "{metric}: batch watermarks");
        let json = answer(port, metric);
        let avro = answer(port, &format!("{metric}_avro"));
        assert!(
            json.iter().any(|r| r["source"] == "batch")
                && json.iter().any(|r| r["source"] == "speed"),
            "{metric}: both views answer"
        );
        assert_eq!(json.len(), avro.len(), "{metric}: row count");
        assert_eq!(json, avro, "{metric}: Avro and JSON answers");
    }
    // And the JSON answers are the true aggregates (tests/e2e.rs checks the
    // same in depth): the per-minute total of the speed side and the batch
    // side together counts every valid event the views hold.
    let batch_truth = expected::compute(&records, None);
    let (_, w) = env.published("page_views_per_minute").await;
    let want: u64 = batch_truth
        .per_minute
        .iter()
        .filter(|(k, _)| k.0 < w)
        .map(|(_, v)| v.0)
        .chain(
            speed_truth
                .per_minute
                .iter()
                .filter(|(k, _)| k.0 >= w)
                .map(|(_, v)| v.0),
        )
        .sum();
    let got: u64 = answer(port, "page_views_per_minute_avro")
        .iter()
        .map(|r| r["views"].as_u64().unwrap())
        .sum();
    assert_eq!(
        got, want,
        "page_views_per_minute_avro across the boundary at {w}"
    );
    drop(server);
    running.stop().await;
    env.drop_database().await;
}

/// The registry is down when the speed layer meets the topic's schema id:
/// every record is a dead letter of kind registry_unavailable, nothing is
/// counted and nothing stalls. Once the registry is back, replaying those
/// dead letters (`strata dlq replay --kind registry_unavailable`) gives the
/// view the uninterrupted run gives: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_dead_letters_records_that_a_replay_restores() {
    let registry = LocalRegistry::new();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let running = registry.start(addr).await.unwrap();
    let mock = MockCluster::new(1).unwrap();
    let mut env = TestEnv::new("avro_outage", "");
    env.kafka_brokers = mock.bootstrap_servers();
    mock.create_topic(&env.topic, 2, 1).unwrap();
    mock.create_topic(&format!("{}.dlq", env.topic), 2, 1)
        .unwrap();
    // The reference source, as Avro.
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        "format = \"json\"\n",
        &format!(
            "format = \"avro\"\nschema_registry = {{ url = \"{}\", timeout = \"1s\", retry_after = \"1s\" }}\n",
            running.url()
        ),
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    env.init();
    let stream = TestEnv::two_partition_stream(23, 1_500, 40);
    env.generate(&stream);
    let records: Vec<_> = Clickstream::new(stream).collect();
    let truth = expected::compute(&records, Some(30_000));
    running.stop().await;

    let mut speed = env.spawn_speed(0);
    let mut archive = env.spawn(&["archive"], "archive");
    let all_dead = wait_until(Duration::from_secs(120), || async {
        TestEnv::counter(&env.scrape(), "strata_speed_dead_letters_total") == records.len() as f64
    })
    .await;
    assert!(all_dead, "{}", env.speed_log(0));
    // The archive waits for the registry instead (it cannot dead-letter).
    let archive_waits = wait_until(Duration::from_secs(30), || async {
        env.log("archive")
            .contains("waiting for the schema registry")
    })
    .await;
    assert!(archive_waits, "{}", env.log("archive"));
    assert_eq!(
        env.archived_events(),
        0,
        "nothing archived during the outage"
    );
    assert_eq!(env.speed_progress().await, (0, 0), "nothing counted");
    let kinds = dead_letter_kinds(&env, &format!("{}.dlq", env.topic), records.len());
    assert_eq!(
        kinds,
        [("registry_unavailable".to_string(), records.len())].into(),
        "{kinds:?}"
    );

    // Back on the same address; the replay re-publishes every letter and
    // the running speed layer now decodes them.
    let running = registry.start(addr).await.unwrap();
    let out =
        run_ok(
            env.strata()
                .args(["dlq", "replay", "--quiet", "--kind", "registry_unavailable"]),
        );
    assert!(
        out.contains(&format!(
            "replayed {} of {} scanned",
            records.len(),
            records.len()
        )),
        "{out}"
    );
    let session_events: u64 = truth.sessions.values().map(|v| v.0).sum();
    let done = wait_until(Duration::from_secs(120), || async {
        env.speed_progress().await == (truth.counted, session_events)
    })
    .await;
    assert!(
        done,
        "{:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed.0), Some(0), "{}", env.speed_log(0));
    // The master dataset has every event too (the archive, like the speed
    // layer, left the undecodable records out and read the replayed ones).
    let valid = support::valid(&records);
    let archived = wait_until(Duration::from_secs(60), || async {
        env.archived_events() == valid
    })
    .await;
    assert!(
        archived,
        "archived {} of {valid}\n{}",
        env.archived_events(),
        env.log("archive")
    );
    // Every replayed letter reaches the archive too, which skips it: it
    // archived the original once the registry answered.
    let archive_port = env.port("archive", "metrics_listen");
    let skipped = wait_until(Duration::from_secs(60), || async {
        TestEnv::counter(
            &http_get(archive_port, "/metrics", &[]).text(),
            "strata_archive_replays_skipped_total",
        ) == records.len() as f64
    })
    .await;
    assert!(
        skipped,
        "{}",
        http_get(archive_port, "/metrics", &[]).text()
    );
    assert_eq!(terminate(&mut archive.0), Some(0), "{}", env.log("archive"));
    assert_eq!(env.archived_events(), valid, "each event archived once");
    let view = env.speed_view().await;
    assert_eq!(view.per_minute, truth.per_minute);
    assert_eq!(view.active_users, truth.active_users);
    assert_eq!(view.sessions, truth.sessions);
    running.stop().await;
    env.drop_database().await;
}

/// `strata schemas check` reads each Avro source's subject: not registered
/// yet (fine), a readable latest version (fine), a latest version the
/// contract cannot read (fails, naming why), the registry down (fails).
/// `strata validate` names a missing registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_check_reads_the_registry_subject() {
    let registry = LocalRegistry::new();
    let running = registry
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env = TestEnv::new("avro_check", "");
    let config = std::fs::read_to_string(&env.config).unwrap();
    let avro = config.replacen(
        "format = \"json\"\n",
        &format!(
            "format = \"avro\"\nschema_registry = {{ url = \"{}\", subject = \"views-value\" }}\n",
            running.url()
        ),
        1,
    );
    std::fs::write(&env.config, &avro).unwrap();
    let check = || {
        let out = env.strata().args(["schemas", "check"]).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("page_views: subject views-value is not registered"),
        "{out}"
    );

    let id = registry
        .register(
            "views-value",
            strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA,
        )
        .unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "views-value v1 (schema id {id}) reads as contract page_view v2"
        )),
        "{out}"
    );
    assert!(out.contains("is compatible with views-value"), "{out}");

    // A compatible next version for the registry (a new field with a
    // default) that contract page_view v2, which rejects unknown fields,
    // cannot read.
    let next = strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA.replace(
        r#"{"name":"page","type":"string"},"#,
        r#"{"name":"page","type":"string"},{"name":"colour","type":"string","default":"red"},"#,
    );
    assert_ne!(next, strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA);
    registry.register("views-value", &next).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("views-value v2: writer schema id")
            && err
                .contains("field \"colour\" is not in the contract, which rejects unknown fields"),
        "{err}"
    );

    running.stop().await;
    let (code, out, err) = check();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("page_views: cannot check subject views-value"),
        "{err}"
    );
    assert!(err.contains("unreachable"), "{err}");

    // An Avro source without its registry is a config problem.
    std::fs::write(
        &env.config,
        config.replacen("format = \"json\"\n", "format = \"avro\"\n", 1),
    )
    .unwrap();
    let out = env.strata().arg("validate").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("sources.page_views.schema_registry"),
        "{text}"
    );
    assert!(text.contains("an Avro source needs its registry"), "{text}");
}
