//! The whole platform, every layer a separate process against real servers:
//! `strata generate` → Tansu → `strata speed` + `strata archive` →
//! `strata batch run --once` → `strata serve`. The API's answers equal the
//! aggregates the test computes from the generated events: windows before
//! each metric's batch watermark include the late events (batch view), the
//! newer ones do not (speed view); every dead letter is accounted for.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value as Json;
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::expected;
use support::{TestEnv, query_rows, terminate, wait_until};

const MINUTE: i64 = 60_000;

/// Key → ((count, total duration), source).
type WithSource<K, S> = BTreeMap<K, ((u64, i64), S)>;
const LATENESS_MS: i64 = 30_000;

fn ms(text: &Json) -> i64 {
    strata_schemas::value::parse_rfc3339_ms(text.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn generator_to_api_across_the_batch_speed_boundary() {
    let env = TestEnv::new("e2e", "");
    env.init();
    let config = ClickstreamConfig {
        seed: 99,
        events: 20_000,
        users: 300,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 300,
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
    let records: Vec<_> = Clickstream::new(config).collect();
    let batch_truth = expected::compute(&records, None);
    let speed_truth = expected::compute(&records, Some(LATENESS_MS));
    assert!(
        batch_truth.counted > speed_truth.counted,
        "the stream has late events"
    );
    let dead_letters = records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Malformed | RecordKind::Invalid))
        .count();

    // Speed and archive run side by side, as separate processes.
    let mut speed = env.spawn_speed(0);
    env.archive_all(support::valid(&records)).await;
    let session_events: u64 = speed_truth.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(300), || async {
            env.speed_progress().await == (speed_truth.counted, session_events)
        })
        .await,
        "speed view incomplete: {:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed.0), Some(0), "{}", env.speed_log(0));
    let log = env.speed_log(0);
    assert!(
        log.contains(&format!(" records read, {dead_letters} dead letters")),
        "every malformed or invalid record is a dead letter ({dead_letters}): {log}"
    );

    support::run_ok(env.strata().args(["batch", "run", "--once"]));
    let (server, port) = env.start_server().await;

    // page_views_per_minute
    let (_, w) = env.published("page_views_per_minute").await;
    let got = query_rows(port, "page_views_per_minute");
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.per_minute {
        if k.0 < w {
            want.insert(k.clone(), (*v, "batch"));
        }
    }
    for (k, v) in &speed_truth.per_minute {
        if k.0 >= w {
            want.insert(k.clone(), (*v, "speed"));
        }
    }
    let got_map: WithSource<(i64, String, String), &str> = got
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["page"].as_str().unwrap().into(),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    (
                        r["views"].as_u64().unwrap(),
                        r["total_duration_ms"].as_i64().unwrap(),
                    ),
                    r["source"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), got_map.len(), "no window twice");
    assert!(want.values().any(|v| v.1 == "batch") && want.values().any(|v| v.1 == "speed"));
    assert_eq!(
        got_map, want,
        "page_views_per_minute across the boundary at {w}"
    );

    // active_users_5m
    let (_, w) = env.published("active_users_5m").await;
    let got: BTreeMap<(i64, String), (u64, String)> = query_rows(port, "active_users_5m")
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    r["active_users"].as_u64().unwrap(),
                    r["source"].as_str().unwrap().into(),
                ),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.active_users {
        if k.0 < w {
            want.insert(k.clone(), (*v, "batch".to_string()));
        }
    }
    for (k, v) in &speed_truth.active_users {
        if k.0 >= w {
            want.insert(k.clone(), (*v, "speed".to_string()));
        }
    }
    assert_eq!(got, want, "active_users_5m across the boundary at {w}");

    // user_sessions
    let (_, w) = env.published("user_sessions").await;
    let got: WithSource<(String, i64, i64), String> = query_rows(port, "user_sessions")
        .iter()
        .map(|r| {
            (
                (
                    r["user_id"].as_str().unwrap().into(),
                    ms(&r["window_start"]),
                    ms(&r["window_end"]),
                ),
                (
                    (
                        r["page_views"].as_u64().unwrap(),
                        r["total_duration_ms"].as_i64().unwrap(),
                    ),
                    r["source"].as_str().unwrap().into(),
                ),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.sessions {
        if k.1 < w {
            want.insert(k.clone(), (*v, "batch".to_string()));
        }
    }
    for (k, v) in &speed_truth.sessions {
        if k.1 >= w {
            want.insert(k.clone(), (*v, "speed".to_string()));
        }
    }
    assert!(
        want.values().any(|v| v.1 == "batch"),
        "sessions closed before the end are in the batch view"
    );
    assert_eq!(got, want, "user_sessions across the boundary at {w}");
    drop(server);
    env.drop_database().await;
}
