//! A rerun of a metric grouped by a float field keeps every window: the
//! batch layer compares the keys it writes with the keys ClickHouse returns
//! by type, not by JSON text (`3.0` written, `3` read back), so it never
//! retracts a window it rewrites under its own run id.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{TestEnv, rows_at, run_ok, terminate, unique, wait_until};

const MINUTE: i64 = 60_000;
const START: i64 = 1_795_341_600_000;
const LEVELS: [f64; 4] = [1.0, 2.0, 2.5, 3.0];

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_rerun_keeps_windows_grouped_by_a_float_field() {
    let env = TestEnv::new("float_key", "");
    // The reference contracts plus one with a float field.
    let contracts = env.dir.path().join("contracts");
    copy_dir(&support::repo().join("schemas/contracts"), &contracts);
    std::fs::create_dir_all(contracts.join("reading")).unwrap();
    std::fs::write(
        contracts.join("reading/v1.json"),
        r#"{
  "name": "reading",
  "version": 1,
  "description": "A sensor reading.",
  "unknown_fields": "reject",
  "fields": [
    {"name": "event_time", "type": "timestamp", "required": true, "formats": ["epoch_ms"], "doc": "When it was read."},
    {"name": "sensor", "type": "string", "required": true, "doc": "Sensor id."},
    {"name": "level", "type": "float", "required": true, "doc": "Reading."}
  ]
}"#,
    )
    .unwrap();
    let topic = unique("readings");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!(
            "dir = {:?}",
            support::repo()
                .join("schemas/contracts")
                .display()
                .to_string()
        ),
        &format!("dir = {:?}", contracts.display().to_string()),
    );
    let text = format!(
        "{text}\n[sources.readings]\ntopic = {topic:?}\ncontract = \"reading\"\ncontract_version = 1\nevent_time_field = \"event_time\"\nallowed_lateness = \"30s\"\n\n\
         [metrics.readings_per_level]\ndescription = \"Readings per level and minute.\"\nsource = \"readings\"\nwindow = {{ kind = \"tumbling\", size = \"1m\" }}\ngroup_by = [\"level\"]\naggregations = [{{ name = \"readings\", function = \"count\" }}]\n"
    );
    std::fs::write(&env.config, text).unwrap();
    env.init();

    // One reading every 10 s for an hour, levels in turn.
    let config = strata_schemas::config::load(&env.config).unwrap();
    let kafka = strata_schemas::config::KafkaSection {
        brokers: env.kafka_brokers.clone(),
        ..config.kafka.clone()
    };
    for t in [&topic, &env.topic] {
        strata_kafka::ensure_topic(&kafka, t, 1).await.unwrap();
    }
    let producer: FutureProducer = strata_kafka::client_config(&kafka).create().unwrap();
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    let n = 360;
    let mut deliveries = Vec::new();
    for i in 0..n {
        let t = START + i * 10_000;
        let level = LEVELS[(i % 4) as usize];
        let payload = format!(r#"{{"event_time": {t}, "sensor": "s1", "level": {level:.1}}}"#);
        *expected
            .entry((t.div_euclid(MINUTE) * MINUTE, format!("{level}")))
            .or_default() += 1;
        deliveries.push(
            producer
                .send_result(FutureRecord::<str, _>::to(&topic).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let lake = strata_batch::lake::Lake::open(&config.object_store, &config.base_dir).unwrap();
    let mut archive = env.spawn(&["archive"], "archive");
    let archived = wait_until(Duration::from_secs(120), || async {
        lake.all_progress("readings")
            .await
            .unwrap()
            .values()
            .map(|p| p.events)
            .sum::<u64>()
            == n as u64
    })
    .await;
    terminate(&mut archive.0);
    assert!(archived, "{}", env.log("archive"));

    let view = || async {
        let db = &env.database;
        rows_at(&env.clickhouse_url, &format!(
            "SELECT window_start_ms, toString(level) AS level, argMax(agg_events, run_id) AS c, argMax(retracted, run_id) AS r \
             FROM {db}.readings_per_level_batch WHERE run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = 'readings_per_level' AND status = 'published') \
             GROUP BY window_start_ms, level HAVING r = 0"
        ))
        .await
        .into_iter()
        .map(|r| {
            (
                (
                    r["window_start_ms"].as_i64().unwrap(),
                    r["level"].as_str().unwrap().to_string(),
                ),
                r["c"].as_u64().unwrap(),
            )
        })
        .collect::<BTreeMap<_, _>>()
    };
    let retractions = || async {
        rows_at(
            &env.clickhouse_url,
            &format!(
                "SELECT count() AS n FROM {}.readings_per_level_batch WHERE retracted = 1",
                env.database
            ),
        )
        .await[0]["n"]
            .as_u64()
            .unwrap()
    };
    run_ok(
        env.strata()
            .args(["batch", "run", "--once", "--metric", "readings_per_level"]),
    );
    let (_, watermark) = env.published("readings_per_level").await;
    let want: BTreeMap<_, _> = expected
        .into_iter()
        .filter(|(k, _)| k.0 < watermark)
        .collect();
    assert_eq!(want.len(), 59 * 4, "{watermark}");
    assert_eq!(view().await, want, "first run");
    // The rerun recomputes the same windows: nothing to retract.
    run_ok(
        env.strata()
            .args(["batch", "run", "--once", "--metric", "readings_per_level"]),
    );
    assert_eq!(retractions().await, 0, "windows retracted by the rerun");
    assert_eq!(view().await, want, "after the rerun");
    env.drop_database().await;
}
