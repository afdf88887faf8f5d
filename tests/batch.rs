//! The master dataset and the batch layer against real servers:
//! `strata generate` → Tansu → `strata archive` (a separate process) →
//! Parquet files → `strata batch run --once` → ClickHouse, compared with
//! aggregates computed independently from the same seeded events.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use support::archive::{add_file_records, sent_records};
use support::expected::{self, Expected};
use support::{TestEnv, rows_at, run_ok, terminate, wait_until};

const MINUTE: i64 = 60_000;

/// 300 ms apart, from a population of 300 users that changes every 20
/// minutes, so sessions (gap 30 min) close during the stream; a share of
/// events is 3 minutes late.
fn stream(events: u64, seed: u64, late_fraction: f64) -> ClickstreamConfig {
    ClickstreamConfig {
        seed,
        events,
        users: 300,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 300,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        late_fraction,
        late_by_ms: 3 * MINUTE,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        cohort_ms: 20 * MINUTE,
        ..ClickstreamConfig::default()
    }
}

/// The batch view as the test reads it itself: for each (window, key) the
/// row of the newest published run, retractions dropped.
async fn batch_view(env: &TestEnv) -> Expected {
    let db = &env.database;
    let url = &env.clickhouse_url;
    let runs = |metric: &str| {
        format!(
            "run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = '{metric}' AND status = 'published')"
        )
    };
    let mut view = Expected::default();
    for r in rows_at(url, &format!(
        "SELECT window_start_ms, page, country, argMax(agg_events, run_id) AS c, argMax(agg_duration_ms_sum, run_id) AS s, argMax(retracted, run_id) AS r \
         FROM {db}.page_views_per_minute_batch WHERE {} GROUP BY window_start_ms, page, country HAVING r = 0",
        runs("page_views_per_minute")
    ))
    .await
    {
        let c = r["c"].as_u64().unwrap();
        view.counted += c;
        view.per_minute.insert(
            (r["window_start_ms"].as_i64().unwrap(), r["page"].as_str().unwrap().into(), r["country"].as_str().unwrap().into()),
            (c, r["s"].as_f64().unwrap() as i64),
        );
    }
    for r in rows_at(url, &format!(
        "SELECT window_start_ms, country, length(argMax(agg_user_id_distinct_hashes, run_id)) AS u, argMax(retracted, run_id) AS r \
         FROM {db}.active_users_5m_batch WHERE {} GROUP BY window_start_ms, country HAVING r = 0",
        runs("active_users_5m")
    ))
    .await
    {
        view.active_users.insert(
            (r["window_start_ms"].as_i64().unwrap(), r["country"].as_str().unwrap().into()),
            r["u"].as_u64().unwrap(),
        );
    }
    for r in rows_at(url, &format!(
        "SELECT user_id, window_start_ms, argMax(window_end_ms, run_id) AS e, argMax(agg_events, run_id) AS c, argMax(agg_duration_ms_sum, run_id) AS s, argMax(retracted, run_id) AS r \
         FROM {db}.user_sessions_batch WHERE {} GROUP BY user_id, window_start_ms HAVING r = 0",
        runs("user_sessions")
    ))
    .await
    {
        view.sessions.insert(
            (r["user_id"].as_str().unwrap().into(), r["window_start_ms"].as_i64().unwrap(), r["e"].as_i64().unwrap()),
            (r["c"].as_u64().unwrap(), r["s"].as_f64().unwrap() as i64),
        );
    }
    view
}

/// The expected aggregates restricted to what a batch view with these
/// watermarks holds (window start before the metric's watermark).
fn below(expected: &Expected, per_minute_wm: i64, active_wm: i64, sessions_wm: i64) -> Expected {
    let per_minute: expected::PerMinute = expected
        .per_minute
        .iter()
        .filter(|(k, _)| k.0 < per_minute_wm)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Expected {
        counted: per_minute.values().map(|v| v.0).sum(),
        per_minute,
        active_users: expected
            .active_users
            .iter()
            .filter(|(k, _)| k.0 < active_wm)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        sessions: expected
            .sessions
            .iter()
            .filter(|(k, _)| k.1 < sessions_wm)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    }
}

fn assert_same(actual: &Expected, expected: &Expected) {
    assert_eq!(
        actual.per_minute.len(),
        expected.per_minute.len(),
        "page_views_per_minute rows"
    );
    assert_eq!(
        actual.per_minute, expected.per_minute,
        "page_views_per_minute"
    );
    assert_eq!(
        actual.active_users, expected.active_users,
        "active_users_5m"
    );
    assert_eq!(actual.sessions, expected.sessions, "user_sessions");
}

/// Every archived record, read back from the Parquet files: (partition,
/// offset) → event time, with a check that none is stored twice.
fn archived_records(env: &TestEnv) -> BTreeMap<(i32, i64), i64> {
    let mut out = BTreeMap::new();
    let mut files = Vec::new();
    let mut stack = vec![env.lake.join("page_views")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "the archive wrote Parquet files");
    for path in files {
        let rel = path.strip_prefix(&env.lake).unwrap().display().to_string();
        assert!(
            rel.starts_with("page_views/dt=2026-11-22/hour="),
            "hive layout by event hour: {rel}"
        );
        add_file_records(std::fs::File::open(&path).unwrap(), &rel, &mut out);
    }
    out
}

#[tokio::test]
async fn batch_view_equals_independent_aggregates_including_late_events() {
    let env = TestEnv::new("batch_golden", "");
    env.init();
    let config = stream(20_000, 21, 0.02);
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    env.archive_all(support::valid(&records)).await;
    assert_eq!(
        archived_records(&env),
        sent_records(&records),
        "the archive holds every valid event exactly once"
    );

    let out = run_ok(env.strata().args(["batch", "run", "--once"]));
    assert!(out.contains("page_views_per_minute: run "), "{out}");
    let (_, wm_minute) = env.published("page_views_per_minute").await;
    let (_, wm_active) = env.published("active_users_5m").await;
    let (_, wm_sessions) = env.published("user_sessions").await;
    // The newest event is at about start + 100 min; lateness is 30 s.
    let last = records
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(|e| e.event_time_ms)
        .max()
        .unwrap();
    assert_eq!(
        wm_minute,
        (last - 30_000).div_euclid(MINUTE) * MINUTE,
        "tumbling watermark: last full minute"
    );
    assert_eq!(
        wm_active,
        ((last - 30_000) - 5 * MINUTE + MINUTE).div_euclid(MINUTE) * MINUTE,
        "hopping watermark"
    );
    assert!(
        wm_sessions > 1_795_341_600_000 + 30 * MINUTE,
        "sessions published: {wm_sessions}"
    );

    let all = expected::compute(&records, None);
    let speed = expected::compute(&records, Some(30_000));
    assert!(
        all.counted > speed.counted,
        "the stream has late events the speed layer drops"
    );
    let want = below(&all, wm_minute, wm_active, wm_sessions);
    let view = batch_view(&env).await;
    assert_same(&view, &want);
    assert!(!want.sessions.is_empty() && !want.per_minute.is_empty());

    // A rerun of the same range changes no value and keeps the watermark.
    run_ok(env.strata().args(["batch", "run", "--once"]));
    assert_eq!(env.published("page_views_per_minute").await.1, wm_minute);
    assert_same(&batch_view(&env).await, &want);

    // A backfill recomputes below the watermark in published chunks,
    // changes no value, and a second attempt resumes (skips every chunk).
    let backfill = [
        "batch",
        "backfill",
        "--metric",
        "page_views_per_minute",
        "--from",
        "2026-11-22T10:00:00Z",
        "--to",
        "2026-11-22T11:00:00Z",
        "--chunk",
        "30m",
        "--quiet",
    ];
    let out = run_ok(env.strata().args(backfill));
    assert!(
        out.contains("done: 2 chunks (0 already published)"),
        "{out}"
    );
    assert_same(&batch_view(&env).await, &want);
    let out = run_ok(env.strata().args(backfill));
    assert!(
        out.contains("done: 2 chunks (2 already published)"),
        "{out}"
    );
    assert_eq!(
        env.published("page_views_per_minute").await.1,
        wm_minute,
        "a backfill never moves the watermark"
    );

    // A run that dies before publishing (rows inserted, no run-log row)
    // is invisible: write garbage under a newer run id.
    let db = &env.database;
    support::execute_at(&env.clickhouse_url, &format!(
        "INSERT INTO {db}.page_views_per_minute_batch (window_start_ms, window_end_ms, page, country, agg_events, run_id, retracted) \
         SELECT window_start_ms, window_end_ms, page, country, 999999, 99999999999999, 0 FROM {db}.page_views_per_minute_batch"
    ))
    .await;
    assert_same(&batch_view(&env).await, &want);
    env.drop_database().await;
}

#[tokio::test]
async fn reconcile_reports_no_difference_without_late_events() {
    let env = TestEnv::new("reconcile", "");
    env.init();
    let config = ClickstreamConfig {
        malformed_fraction: 0.0,
        invalid_fraction: 0.0,
        ..stream(16_000, 5, 0.0)
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let speed_expected = expected::compute(&records, Some(30_000));
    assert_eq!(
        speed_expected.counted,
        support::valid(&records),
        "no late event"
    );
    let mut speed = env.spawn_speed(0);
    env.archive_all(support::valid(&records)).await;
    let session_events: u64 = speed_expected.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(300), || async {
            env.speed_progress().await == (speed_expected.counted, session_events)
        })
        .await,
        "speed view incomplete: {}",
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed.0), Some(0));
    run_ok(env.strata().args(["batch", "run", "--once"]));
    for metric in ["page_views_per_minute", "active_users_5m", "user_sessions"] {
        let (_, wm) = env.published(metric).await;
        let out = run_ok(env.strata().args([
            "reconcile",
            "--metric",
            metric,
            "--from",
            "2026-11-22T10:00:00Z",
            "--to",
            &wm.to_string(),
            "--fail-on-difference",
        ]));
        assert!(
            out.contains(" windows compared, 0 differ"),
            "{metric}: {out}"
        );
        let compared: u64 = out
            .split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(compared > 10, "{metric}: {out}");
    }
    env.drop_database().await;
}

#[tokio::test]
async fn archive_killed_during_uploads_stores_every_event_once() {
    // Small files and frequent flushes: many uploads to be killed in.
    let env = TestEnv::new("archive_kill", "");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("max_file_rows = 500000", "max_file_rows = 300");
    std::fs::write(&env.config, text).unwrap();
    let config = stream(30_000, 8, 0.02);
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let total = support::valid(&records);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..4 {
        let mut archive = env.spawn(&["archive"], &format!("archive-{round}"));
        let before = env.archived_events();
        // Kill once some progress was made, at a pseudo-random moment.
        wait_until(Duration::from_secs(60), || async {
            env.archived_events() > before
        })
        .await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 900));
        archive.0.kill().unwrap();
        archive.0.wait().unwrap();
    }
    env.archive_all(total).await;
    assert_eq!(archived_records(&env), sent_records(&records));
    let log = env.log("archive-1") + &env.log("archive-2") + &env.log("archive-3");
    assert!(log.contains("archive partition assigned"), "{log}");
}

#[tokio::test]
async fn archive_and_batch_on_s3() {
    let endpoint = support::endpoint("STRATA_S3_ENDPOINT");
    let bucket = support::unique("strata-lake").replace('_', "-");
    // moto accepts an unsigned bucket creation.
    let host = endpoint.trim_start_matches("http://").to_string();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let env = TestEnv::new("batch_s3", "");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("url = \"file://{}\"", env.lake.display()),
        &format!("url = \"s3://{bucket}/lake\""),
    );
    std::fs::write(&env.config, text).unwrap();
    env.init();
    let config = stream(6_000, 3, 0.02);
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let mut archive = env.spawn(&["archive"], "archive");
    // Progress lives in the bucket: follow the archive's own metrics.
    assert!(
        wait_until(Duration::from_secs(120), || async {
            scrape_events(&env) == support::valid(&records)
        })
        .await,
        "archive to S3 stuck; log:\n{}",
        env.log("archive")
    );
    assert_eq!(terminate(&mut archive.0), Some(0), "{}", env.log("archive"));
    run_ok(env.strata().args(["batch", "run", "--once"]));
    let (_, wm_minute) = env.published("page_views_per_minute").await;
    let (_, wm_active) = env.published("active_users_5m").await;
    let (_, wm_sessions) = env.published("user_sessions").await;
    let want = below(
        &expected::compute(&records, None),
        wm_minute,
        wm_active,
        wm_sessions,
    );
    assert!(want.counted > 1_000);
    assert_same(&batch_view(&env).await, &want);
    // The objects really are in the bucket.
    let listing = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        write!(s, "GET /{bucket}?list-type=2&prefix=lake/page_views/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    assert!(
        listing.contains("lake/page_views/dt=2026-11-22/hour=10/"),
        "{listing}"
    );
    env.drop_database().await;
}

/// Events archived so far, from the archive's Prometheus endpoint.
fn scrape_events(env: &TestEnv) -> u64 {
    let port = env.port("archive", "metrics_listen");
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    TestEnv::counter(&out, "strata_archive_events_total") as u64
}
