//! Concurrent batch runs of one metric (issue 18, item 8): the scheduler,
//! `strata batch run --once` and a backfill may start together. One run
//! per metric holds the lease and publishes; the others report that they
//! skipped (or a backfill waits). The published view is exact, every run id
//! is distinct and the watermark never moves back.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use strata_batch::run::{BatchContext, RunReport, run_once};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use support::expected;
use support::{TestEnv, rows_at};

const MINUTE: i64 = 60_000;

fn stream() -> ClickstreamConfig {
    ClickstreamConfig {
        seed: 41,
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
    }
}

fn context(env: &TestEnv) -> BatchContext {
    let (db, ch, kafka) = (
        env.database.clone(),
        env.clickhouse_url.clone(),
        env.kafka_brokers.clone(),
    );
    let config = strata_schemas::config::load_with_env(&env.config, move |name| match name {
        "STRATA_CLICKHOUSE_DATABASE" => Some(db.clone()),
        "STRATA_CLICKHOUSE_URL" => Some(ch.clone()),
        "STRATA_KAFKA_BROKERS" => Some(kafka.clone()),
        _ => None,
    })
    .unwrap();
    BatchContext::new(Arc::new(config)).unwrap()
}

/// The published user_sessions view: (user, start, end) → (views, duration).
async fn sessions_view(env: &TestEnv) -> expected::Sessions {
    let db = &env.database;
    rows_at(&env.clickhouse_url, &format!(
        "SELECT user_id, window_start_ms, argMax(window_end_ms, run_id) AS e, argMax(agg_events, run_id) AS c, argMax(agg_duration_ms_sum, run_id) AS s, argMax(retracted, run_id) AS r \
         FROM {db}.user_sessions_batch WHERE run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = 'user_sessions' AND status = 'published') \
         GROUP BY user_id, window_start_ms HAVING r = 0"
    ))
    .await
    .into_iter()
    .map(|r| {
        (
            (
                r["user_id"].as_str().unwrap().to_string(),
                r["window_start_ms"].as_i64().unwrap(),
                r["e"].as_i64().unwrap(),
            ),
            (r["c"].as_u64().unwrap(), r["s"].as_f64().unwrap() as i64),
        )
    })
    .collect()
}

/// Published runs of a metric: (run id, watermark), in run id order.
async fn published_runs(env: &TestEnv, metric: &str) -> Vec<(u64, i64)> {
    rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT run_id, watermark_ms FROM {}.strata_batch_runs WHERE metric = '{metric}' AND status = 'published' ORDER BY run_id",
            env.database
        ),
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r["run_id"].as_u64().unwrap(),
            r["watermark_ms"].as_i64().unwrap(),
        )
    })
    .collect()
}

/// Three runs of `metric` at once: exactly one publishes.
async fn three_at_once(ctx: &BatchContext, metric: &str) -> Vec<RunReport> {
    let (a, b, c) = tokio::join!(
        run_once(ctx, Some(metric)),
        run_once(ctx, Some(metric)),
        run_once(ctx, Some(metric)),
    );
    let reports: Vec<RunReport> = [a, b, c].into_iter().flat_map(|r| r.unwrap()).collect();
    let published: Vec<_> = reports.iter().filter(|r| r.skipped.is_none()).collect();
    assert_eq!(published.len(), 1, "one run publishes: {reports:#?}");
    for r in reports.iter().filter(|r| r.skipped.is_some()) {
        assert!(
            r.skipped
                .as_deref()
                .unwrap()
                .contains("another run of this metric holds its lease"),
            "{r:?}"
        );
    }
    reports
}

#[tokio::test]
async fn concurrent_runs_of_one_metric_publish_once_and_exactly() {
    let env = TestEnv::new("batch_concurrent", "");
    env.init();
    let config = stream();
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    env.archive_all(support::valid(&records)).await;
    let ctx = context(&env);
    let all = expected::compute(&records, None);

    three_at_once(&ctx, "user_sessions").await;
    let runs = published_runs(&env, "user_sessions").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let watermark = runs[0].1;
    let want: expected::Sessions = all
        .sessions
        .iter()
        .filter(|(k, _)| k.1 < watermark)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(sessions_view(&env).await, want, "sessions after round 1");

    // A second round over the same data, every metric at once, twice.
    let (x, y) = tokio::join!(run_once(&ctx, None), run_once(&ctx, None));
    let reports: Vec<RunReport> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    for metric in ["page_views_per_minute", "active_users_5m", "user_sessions"] {
        let ran = reports
            .iter()
            .filter(|r| r.metric == metric && r.skipped.is_none())
            .count();
        assert_eq!(ran, 1, "{metric}: {reports:#?}");
    }
    let runs = published_runs(&env, "user_sessions").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let ids: BTreeSet<u64> = runs.iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), runs.len(), "run ids are distinct: {runs:?}");
    assert!(
        runs.windows(2).all(|w| w[1].1 >= w[0].1),
        "the watermark never moves back: {runs:?}"
    );
    assert_eq!(runs[1].1, watermark, "same data, same watermark");
    assert_eq!(sessions_view(&env).await, want, "sessions after round 2");
    // The lease is free again: a single run publishes.
    let single = run_once(&ctx, Some("user_sessions")).await.unwrap();
    assert!(single[0].skipped.is_none(), "{single:?}");

    // A backfill while a run holds the lease waits for it; both publish,
    // the watermark stays and every view value is exact.
    let metric = "page_views_per_minute";
    let before = published_runs(&env, metric).await;
    let start = 1_795_341_600_000;
    // The run claims first; the backfill, a moment later, must wait.
    let (run, backfill) = tokio::join!(run_once(&ctx, Some(metric)), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        strata_batch::run::backfill(
            &ctx,
            metric,
            (start, start + 60 * MINUTE),
            Some(30 * MINUTE),
            &|_| {},
        )
        .await
    });
    let run = run.unwrap();
    let backfill = backfill.unwrap();
    assert!(run[0].skipped.is_none(), "{run:?}");
    assert_eq!(
        (backfill.chunks, backfill.chunks_resumed, &backfill.skipped),
        (2, 0, &None),
        "{backfill:#?}"
    );
    let after = published_runs(&env, metric).await;
    assert!(
        after.windows(2).all(|w| w[1].1 >= w[0].1),
        "the watermark never moves back: {after:?}"
    );
    assert_eq!(after.last().unwrap().1, before.last().unwrap().1);
    let db = &env.database;
    let counted = rows_at(&env.clickhouse_url, &format!(
        "SELECT toUInt64(sum(c)) AS c FROM (SELECT argMax(agg_events, run_id) AS c, argMax(retracted, run_id) AS r \
         FROM {db}.page_views_per_minute_batch WHERE run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = '{metric}' AND status = 'published') \
         GROUP BY window_start_ms, page, country HAVING r = 0)"
    ))
    .await[0]["c"]
        .as_u64()
        .unwrap();
    let watermark = after.last().unwrap().1;
    let want: u64 = all
        .per_minute
        .iter()
        .filter(|(k, _)| k.0 < watermark)
        .map(|(_, v)| v.0)
        .sum();
    assert_eq!(counted, want, "page views in the published view");
    env.drop_database().await;
}
