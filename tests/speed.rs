//! The speed layer end to end: `strata generate` → Tansu → `strata speed`
//! (a separate process) → ClickHouse, compared with aggregates computed
//! independently from the same seeded events.

mod support;

use std::time::Duration;

use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::expected::{self, Expected};
use support::{TestEnv, terminate, wait_until};

const LATENESS_MS: i64 = 30_000;

fn stream(events: u64, seed: u64) -> ClickstreamConfig {
    ClickstreamConfig {
        seed,
        events,
        users: 2_000,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 20,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        ..ClickstreamConfig::default()
    }
}

fn assert_views_equal(actual: &Expected, expected: &Expected) {
    assert_eq!(
        actual.counted, expected.counted,
        "events counted in page_views_per_minute"
    );
    for (name, a, e) in [
        (
            "page_views_per_minute",
            format!("{:?}", actual.per_minute.len()),
            format!("{:?}", expected.per_minute.len()),
        ),
        (
            "active_users_5m",
            format!("{:?}", actual.active_users.len()),
            format!("{:?}", expected.active_users.len()),
        ),
        (
            "user_sessions",
            format!("{:?}", actual.sessions.len()),
            format!("{:?}", expected.sessions.len()),
        ),
    ] {
        assert_eq!(a, e, "{name}: number of (window, group) rows");
    }
    for (k, v) in &expected.per_minute {
        assert_eq!(
            actual.per_minute.get(k),
            Some(v),
            "page_views_per_minute {k:?}"
        );
    }
    for (k, v) in &expected.active_users {
        assert_eq!(actual.active_users.get(k), Some(v), "active_users_5m {k:?}");
    }
    for (k, v) in &expected.sessions {
        assert_eq!(actual.sessions.get(k), Some(v), "user_sessions {k:?}");
    }
}

/// Waits until the view holds every expected event, then stops the process
/// with SIGTERM (which flushes) and checks it exited cleanly.
async fn finish(env: &TestEnv, child: &mut std::process::Child, expected: &Expected, n: usize) {
    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
    let done = wait_until(Duration::from_secs(400), || async {
        env.speed_progress().await == (expected.counted, session_events)
    })
    .await;
    let progress = env.speed_progress().await;
    assert!(
        done,
        "speed view stuck at {progress:?}, expected ({}, {session_events}); log:\n{}",
        expected.counted,
        env.speed_log(n)
    );
    assert_eq!(
        terminate(child),
        Some(0),
        "speed did not exit cleanly:\n{}",
        env.speed_log(n)
    );
}

#[tokio::test]
async fn golden_speed_view_equals_independent_aggregates() {
    let env = TestEnv::new("golden", "");
    env.init();
    let config = stream(30_000, 11);
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));
    assert_eq!(expected.counted, 30_000, "no event of this stream is late");

    let mut speed = env.spawn_speed(0);
    finish(&env, &mut speed, &expected, 0).await;
    assert_views_equal(&env.speed_view().await, &expected);
    let log = env.speed_log(0);
    assert!(
        log.contains("speed layer stopped cleanly: ")
            && log.contains(" records read, 0 dead letters"),
        "{log}"
    );

    // Windows behind the watermark are final; every row of every window has
    // its final (or latest) version exactly once under FINAL.
    let finals = support::rows(&format!(
        "SELECT countIf(is_final = 1) AS f, count() AS n FROM {}.page_views_per_minute_speed FINAL",
        env.database
    ))
    .await;
    assert!(finals[0]["f"].as_u64().unwrap() > 0, "{finals:?}");
    env.drop_database().await;
}

#[tokio::test]
async fn late_events_do_not_change_final_windows_and_are_counted() {
    let env = TestEnv::new("late", "");
    env.init();
    let config = ClickstreamConfig {
        late_fraction: 0.05,
        late_by_ms: 600_000,
        ..stream(20_000, 12)
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let late_records = records
        .iter()
        .filter(|r| r.kind == RecordKind::Late)
        .count();
    assert!(late_records > 500);
    let expected = expected::compute(&records, Some(LATENESS_MS));
    let everything = expected::compute(&records, None);
    assert!(
        expected.counted < everything.counted,
        "late events must be left out of the speed view"
    );

    let mut speed = env.spawn_speed(0);
    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(180), || async {
            env.speed_progress().await == (expected.counted, session_events)
        })
        .await,
        "{:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    // Every late event is counted once per metric it missed.
    let late_per_metric = count_late(&records);
    let metrics = env.scrape();
    assert_eq!(
        TestEnv::counter(&metrics, "strata_speed_late_events_total") as u64,
        late_per_metric,
        "{metrics}"
    );
    assert_eq!(terminate(&mut speed), Some(0));
    assert_views_equal(&env.speed_view().await, &expected);
    env.drop_database().await;
}

/// Events late for at least one window, summed over the three metrics.
fn count_late(records: &[strata_generator::clickstream::GeneratedRecord]) -> u64 {
    let mut max: std::collections::HashMap<i32, i64> = Default::default();
    let mut late = 0;
    for r in records {
        let Some(e) = &r.event else { continue };
        let t = e.event_time_ms;
        if let Some(m) = max.get(&r.partition) {
            let wm = m - LATENESS_MS;
            let minute = t.div_euclid(60_000) * 60_000;
            late += u64::from(minute + 60_000 <= wm);
            late += u64::from(minute - 4 * 60_000 + 300_000 <= wm);
            late += u64::from(t < wm);
        }
        let m = max.entry(r.partition).or_insert(t);
        *m = (*m).max(t);
    }
    late
}

#[tokio::test]
async fn kill_9_at_random_moments_neither_loses_nor_double_counts() {
    // Tansu (SQLite) can stall heartbeats for seconds under a full-speed
    // fetch on two cores: give members a longer session than production.
    let env = TestEnv::new(
        "kill9",
        "[kafka.properties]\n\"session.timeout.ms\" = \"30000\"\n\"max.poll.interval.ms\" = \"30000\"\n",
    );
    env.set_checkpoint_namespace("kill9-pipeline");
    env.init();
    // One event per second of event time and 5,000 users: sessions (30 min
    // gap) close within a few thousand offsets, so checkpoints advance and
    // every incarnation resumes mid-stream rather than from the start.
    let config = ClickstreamConfig {
        users: 5_000,
        step_ms: 1_000,
        malformed_fraction: 0.002,
        invalid_fraction: 0.002,
        ..stream(200_000, 13)
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));

    // Deterministic "random" kill moments, 0.3-2.5 s into each run.
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        300 + seed % 2_200
    };
    // Each incarnation joins a fresh consumer group (same checkpoint
    // namespace): recovery rests on the checkpoints, and a broker that is
    // slow to evict a SIGKILLed member cannot stall the test.
    let mut kills = 0;
    for n in 0..6 {
        let mut speed = env.spawn_speed_in_group(n, &format!("kill9-run-{n}"));
        // Kill while it works: after it owns partitions (a restarted member
        // waits for the killed one's session to expire first).
        assert!(
            wait_until(Duration::from_secs(90), || async { env.speed_assigned(n) }).await,
            "run {n} never got partitions:\n{}",
            env.speed_log(n)
        );
        tokio::time::sleep(Duration::from_millis(next())).await;
        speed.kill().unwrap();
        speed.wait().unwrap();
        kills += 1;
    }
    assert_eq!(kills, 6);
    let mut speed = env.spawn_speed_in_group(6, "kill9-run-final");
    finish(&env, &mut speed, &expected, 6).await;
    assert_views_equal(&env.speed_view().await, &expected);
    env.drop_database().await;
}

#[tokio::test]
async fn live_rebalance_between_two_processes_keeps_the_view_exact() {
    // Two `strata speed` processes in one consumer group share the
    // partitions; one leaves (SIGTERM) mid-stream, the other takes its
    // partitions over from their checkpoints.
    let env = TestEnv::new("rebalance", "");
    let config = stream(60_000, 14);
    env.init();
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));
    let mut first = env.spawn_speed(0);
    assert!(
        wait_until(Duration::from_secs(60), || async { env.speed_assigned(0) }).await,
        "the first member never got partitions:\n{}",
        env.speed_log(0)
    );
    // The second member joins: the group rebalances across both.
    let mut second = env.spawn_speed(1);
    assert!(
        wait_until(Duration::from_secs(90), || async { env.speed_assigned(1) }).await,
        "the second member never got partitions:\n{}\n{}",
        env.speed_log(0),
        env.speed_log(1)
    );
    // The first member's revocation is in its own log: it may be written
    // after the second member logged its assignment (a member the
    // coordinator dropped for rejoining late learns of it at its next
    // heartbeat).
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.speed_log(0).contains("partition revoked")
        })
        .await,
        "{}",
        env.speed_log(0)
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The first member leaves cleanly; the second takes everything over.
    assert_eq!(terminate(&mut first), Some(0), "{}", env.speed_log(0));
    finish(&env, &mut second, &expected, 1).await;
    assert_views_equal(&env.speed_view().await, &expected);
    env.drop_database().await;
}
