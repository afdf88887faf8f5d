//! A batch run split into chunks (issue 15, part 2) against real servers:
//! the archive is written straight to Parquet in the lake's layout (one
//! file per hour, a committed progress log), the runs go to ClickHouse.
//!
//! - 30 days split over ~30 chunks equal the unsplit run row for row, for a
//!   fixed-window metric and a session metric whose sessions cross chunk
//!   boundaries (and a session still open at the horizon);
//! - a chunk that fails once is retried and the run publishes exactly;
//! - a chunk that fails every attempt, or a planned run missing a chunk, is
//!   never published: readers keep the previous run.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Map, Value as Json};
use strata_batch::lake::{Lake, Progress, Segment, hour_of};
use strata_batch::parquet_file::{self, ArchivedEvent};
use strata_batch::run::{self, BatchContext, ChunkReport, PlanRange, PlanRequest};
use strata_batch::split::{self, ChunkProgress, Publication};
use strata_schemas::{DurationMs, Event, Value};
use strata_warehouse::{self as warehouse, View};
use support::TestEnv;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2026-10-01T00:00:00Z.
const START: i64 = 1_790_812_800_000;

/// A small deterministic generator (no dependency on the clickstream's
/// shape): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
}

/// `days` of page views of 25 users, in time order: each user is active
/// in bursts of 1–8 hours (a view every 3–12 minutes: one session, so
/// sessions run across any chunk boundary) separated by 35 minutes to 10
/// hours; one more user views a page every 10 minutes through the last 3
/// days, so a session is still open at the archive horizon.
fn page_views(days: i64) -> Vec<(i64, Vec<Value>)> {
    let end = START + days * DAY;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let pages = ["/", "/pricing", "/docs", "/blog", "/signup"];
    let countries = ["DE", "FR", "US", "JP"];
    let mut view = |t: i64, user: String, rng: &mut Rng| {
        let page = pages[rng.below(pages.len() as u64) as usize];
        let country = countries[rng.below(countries.len() as u64) as usize];
        out.push((
            t,
            vec![
                Value::Timestamp(t),
                Value::String(user),
                Value::String(page.into()),
                Value::String(country.into()),
                Value::Int(rng.below(90_000)),
                Value::Null,
            ],
        ));
    };
    for user in 0..25 {
        let mut t = START + user * 37 * MINUTE;
        while t < end {
            let burst_end = t + HOUR + rng.below(7 * HOUR as u64);
            while t < burst_end.min(end) {
                view(t, format!("u{user}"), &mut rng);
                t += 3 * MINUTE + rng.below(9 * MINUTE as u64);
            }
            t += 35 * MINUTE + rng.below(9 * HOUR as u64);
        }
    }
    let mut t = end - 3 * DAY + 7 * MINUTE;
    while t < end {
        view(t, "marathon".into(), &mut rng);
        t += 10 * MINUTE;
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// Writes `events` to the lake as the archive would: partition 0 of the
/// environment's topic, one file per hour, committed by one progress step.
/// Returns the files' paths (relative to the lake) in time order.
async fn write_archive(
    env: &TestEnv,
    ctx: &BatchContext,
    events: &[(i64, Vec<Value>)],
) -> Vec<String> {
    let config = &ctx.config;
    let source = config.sources.get("page_views").expect("page_views source");
    let contract = &source.contract;
    let lake = Lake::open(&config.object_store, &config.base_dir).unwrap();
    let archived: Vec<ArchivedEvent> = events
        .iter()
        .enumerate()
        .map(|(offset, (t, values))| ArchivedEvent {
            event: Event {
                time_ms: *t,
                values: values.clone(),
            },
            offset: offset as i64,
            kafka_timestamp_ms: Some(*t),
        })
        .collect();
    let mut by_hour: BTreeMap<i64, Vec<&ArchivedEvent>> = BTreeMap::new();
    for e in &archived {
        by_hour.entry(hour_of(e.event.time_ms)).or_default().push(e);
    }
    let mut paths = Vec::new();
    for (hour, file) in by_hour {
        let bytes = parquet_file::encode(contract, &env.topic, 0, &file).unwrap();
        let path = lake.data_path(
            "page_views",
            hour,
            &env.topic,
            0,
            file[0].offset,
            file[file.len() - 1].offset,
            1,
        );
        lake.put(&path, bytes).await.unwrap();
        paths.push(path.to_string());
    }
    let n = archived.len() as i64;
    let progress = Progress {
        next_offset: n,
        max_event_ms: events.iter().map(|e| e.0).max().unwrap(),
        events: n as u64,
        pending: Vec::new(),
        last_record_at_ms: 0,
        generation: 1,
        segments: vec![Segment {
            generation: 1,
            first_offset: 0,
            next_offset: n,
        }],
    };
    lake.store_progress("page_views", &env.topic, 0, 1, &progress)
        .await
        .unwrap();
    // An empty topic: the archive is caught up, the horizon is the newest
    // archived event − allowed lateness.
    strata_kafka::ensure_topic(&config.kafka, &env.topic, 1)
        .await
        .unwrap();
    paths
}

/// A context on `database` with chunks of `chunk_ms`, `parallelism` at once.
async fn context(env: &TestEnv, database: &str, chunk_ms: i64, parallelism: usize) -> BatchContext {
    let (db, ch, kafka) = (
        database.to_string(),
        env.clickhouse_url.clone(),
        env.kafka_brokers.clone(),
    );
    let mut config = strata_schemas::config::load_with_env(&env.config, move |name| match name {
        "STRATA_CLICKHOUSE_DATABASE" => Some(db.clone()),
        "STRATA_CLICKHOUSE_URL" => Some(ch.clone()),
        "STRATA_KAFKA_BROKERS" => Some(kafka.clone()),
        _ => None,
    })
    .unwrap();
    config.batch.chunk = DurationMs(chunk_ms as u64);
    config.batch.parallelism = parallelism;
    let ctx = BatchContext::new(Arc::new(config)).unwrap();
    warehouse::init(&ctx.client, &ctx.config).await.unwrap();
    ctx
}

/// Every column of every row of the batch view as of run `run_id` with
/// window start before `to_ms`, as ClickHouse returns it, in order.
async fn view_rows(
    ctx: &BatchContext,
    metric: &str,
    run_id: u64,
    to_ms: i64,
) -> Vec<Map<String, Json>> {
    let def = ctx.config.metric(metric).unwrap();
    let db = &ctx.config.clickhouse.database;
    let sql = format!(
        "{} ORDER BY window_start_ms, {}",
        warehouse::view_sql(db, def, View::Batch { run_id }, i64::MIN, to_ms),
        def.group_by
            .iter()
            .map(|g| format!("`{}`", g.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    warehouse::query_rows(&ctx.client, &sql, &[metric])
        .await
        .unwrap()
}

async fn drop_database(ctx: &BatchContext) {
    warehouse::execute(
        &ctx.client,
        &format!(
            "DROP DATABASE IF EXISTS `{}`",
            ctx.config.clickhouse.database
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn batch_split_runs_equal_the_unsplit_run_row_for_row() {
    let env = TestEnv::new("split", "");
    let whole = context(&env, &format!("{}_whole", env.database), 3650 * DAY, 1).await;
    let split_ctx = context(&env, &format!("{}_split", env.database), DAY, 3).await;
    let events = page_views(30);
    write_archive(&env, &whole, &events).await;
    for metric in ["page_views_per_minute", "user_sessions"] {
        let a = run::run_once(&whole, Some(metric)).await.unwrap().remove(0);
        let b = run::run_once(&split_ctx, Some(metric))
            .await
            .unwrap()
            .remove(0);
        assert_eq!((a.skipped.as_deref(), a.chunks), (None, 1), "{a:?}");
        assert!(b.skipped.is_none() && b.chunks >= 30, "{b:?}");
        assert_eq!(a.watermark_ms, b.watermark_ms, "{metric}: same watermark");
        let watermark = a.watermark_ms.unwrap();
        let rows_a = view_rows(&whole, metric, a.run_id, watermark).await;
        let rows_b = view_rows(&split_ctx, metric, b.run_id, watermark).await;
        assert!(rows_a.len() > 1_000, "{metric}: {} rows", rows_a.len());
        assert_eq!(rows_a.len(), rows_b.len(), "{metric}: rows");
        assert!(
            rows_a == rows_b,
            "{metric}: the split run differs from the unsplit run"
        );
        if metric == "user_sessions" {
            // Sessions run across chunk boundaries, and one was still open
            // at the horizon (it holds the watermark days before the end).
            let def = split_ctx.config.metric(metric).unwrap();
            let plan = warehouse::run_log::plan_of(
                &split_ctx.client,
                &split_ctx.config.clickhouse.database,
                metric,
                b.run_id,
            )
            .await
            .unwrap()
            .unwrap();
            let bounds = split::chunk_bounds(def, plan.from_ms, plan.to_ms, plan.chunk_count);
            let crossing = rows_b
                .iter()
                .filter(|r| {
                    let start = warehouse::json_i64(&r["window_start_ms"]).unwrap();
                    let end = warehouse::json_i64(&r["_v_window_end_ms"]).unwrap();
                    bounds[1..].iter().any(|&(cut, _)| start < cut && cut < end)
                })
                .count();
            assert!(
                crossing >= 20,
                "sessions crossing chunk boundaries: {crossing}"
            );
            assert!(
                watermark < START + 28 * DAY,
                "an open session holds the watermark: {watermark}"
            );
        }
        // A 30-day backfill split in daily chunks changes no row.
        let progress = AtomicU32::new(0);
        let backfill = run::backfill(
            &split_ctx,
            metric,
            (START, START + 30 * DAY),
            Some(DAY),
            &|p| {
                if let ChunkProgress::Done { resumed: false, .. } = p {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            },
        )
        .await
        .unwrap();
        assert!(
            backfill.skipped.is_none() && backfill.chunks >= 27,
            "{backfill:?}"
        );
        assert_eq!(
            progress.load(Ordering::Relaxed),
            backfill.chunks,
            "a progress report per chunk"
        );
        assert_eq!(
            backfill.watermark_ms,
            Some(watermark),
            "a backfill keeps the watermark"
        );
        let rows_c = view_rows(&split_ctx, metric, backfill.run_id, watermark).await;
        assert!(
            rows_a == rows_c,
            "{metric}: the split backfill changed the view"
        );
    }
    drop_database(&whole).await;
    drop_database(&split_ctx).await;
}

#[tokio::test]
async fn batch_split_chunk_failures_are_retried_and_a_run_missing_a_chunk_is_never_published() {
    let env = TestEnv::new("split_faults", "");
    let ctx = context(&env, &env.database, DAY, 2).await;
    let metric = "page_views_per_minute";
    let files = write_archive(&env, &ctx, &page_views(3)).await;
    let first = run::run_once(&ctx, Some(metric)).await.unwrap().remove(0);
    assert!(first.skipped.is_none(), "{first:?}");
    let watermark = first.watermark_ms.unwrap();
    let want = view_rows(&ctx, metric, first.run_id, watermark).await;
    let published = || async {
        warehouse::published_batch(&ctx.client, &ctx.config.clickhouse.database, metric)
            .await
            .unwrap()
            .unwrap()
            .0
    };

    // A damaged file of the second day: its chunk fails once, the file is
    // mended before the retry, and the run publishes exactly.
    let damaged = env.lake.join(&files[30]);
    let original = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, b"not a parquet file").unwrap();
    let failures = AtomicU32::new(0);
    let report = run::backfill(&ctx, metric, (START, START + 3 * DAY), Some(DAY), &|p| {
        if let ChunkProgress::Failed { retrying, .. } = p {
            assert!(retrying, "the first failure is retried");
            failures.fetch_add(1, Ordering::Relaxed);
            std::fs::write(&damaged, &original).unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 1);
    assert_eq!(
        (report.chunks, report.skipped.as_deref()),
        (3, None),
        "{report:?}"
    );
    assert_eq!(published().await, report.run_id);
    assert!(view_rows(&ctx, metric, report.run_id, watermark).await == want);
    let chunks = warehouse::run_log::done_chunks(
        &ctx.client,
        &ctx.config.clickhouse.database,
        metric,
        report.run_id,
    )
    .await
    .unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.attempts).collect::<Vec<_>>(),
        vec![1, 2, 1],
        "the second chunk took two attempts"
    );

    // A chunk that fails every attempt: the run is not published.
    let before = published().await;
    std::fs::write(&damaged, b"not a parquet file").unwrap();
    let failed = run::backfill(&ctx, metric, (START, START + 2 * DAY), Some(DAY), &|_| {}).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(published().await, before, "readers keep the previous run");
    std::fs::write(&damaged, &original).unwrap();

    // Workers of other processes: chunks 0 and 2 of 3 are in, 1 is not.
    let request = PlanRequest {
        range: PlanRange::Backfill {
            from_ms: START,
            to_ms: START + 3 * DAY,
        },
        chunks: 3,
        plan_key: "split-faults".into(),
        lease_ttl: std::time::Duration::from_secs(120),
        wait: std::time::Duration::from_secs(10),
    };
    let plan = run::plan(&ctx, metric, &request).await.unwrap();
    // Planning again with the key returns the same plan.
    assert_eq!(run::plan(&ctx, metric, &request).await.unwrap(), plan);
    for index in [0, 2] {
        let done = run::run_planned_chunk(&ctx, metric, Some("split-faults"), (index, 3), &|_| {})
            .await
            .unwrap();
        assert!(matches!(done, ChunkReport::Done(_)), "{done:?}");
    }
    let (_, outcome) = run::publish_planned(
        &ctx,
        metric,
        Some("split-faults"),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(outcome, Publication::MissingChunks(vec![1]));
    assert_eq!(
        published().await,
        before,
        "a run missing a chunk is never published"
    );
    assert!(view_rows(&ctx, metric, published().await, watermark).await == want);
    // A worker started with another chunk count refuses the plan.
    assert!(
        run::run_planned_chunk(&ctx, metric, Some("split-faults"), (1, 4), &|_| {})
            .await
            .is_err()
    );
    // The last chunk comes in: the run publishes, every row as before.
    run::run_planned_chunk(&ctx, metric, Some("split-faults"), (1, 3), &|_| {})
        .await
        .unwrap();
    let (_, outcome) = run::publish_planned(
        &ctx,
        metric,
        Some("split-faults"),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, Publication::Published { .. }),
        "{outcome:?}"
    );
    assert_eq!(published().await, plan.run_id);
    assert!(view_rows(&ctx, metric, plan.run_id, watermark).await == want);
    // Publishing released the plan's lease: a scheduled run goes ahead.
    let next = run::run_once(&ctx, Some(metric)).await.unwrap().remove(0);
    assert!(next.skipped.is_none(), "{next:?}");
    drop_database(&ctx).await;
}

/// The commands a Kubernetes Indexed Job runs, end to end through the CLI:
/// plan, publish refused while chunks are missing, one `chunk` per index
/// (in any order), publish.
#[tokio::test]
async fn batch_split_cli_plans_computes_and_publishes_one_run_across_processes() {
    let env = TestEnv::new("split_cli", "");
    let ctx = context(&env, &env.database, DAY, 2).await;
    write_archive(&env, &ctx, &page_views(2)).await;
    let metric = "page_views_per_minute";
    support::run_ok(
        env.strata()
            .args(["batch", "run", "--once", "--metric", metric]),
    );
    let (first_run, watermark) = env.published(metric).await;
    let want = view_rows(&ctx, metric, first_run, watermark).await;
    let key = ["--key", "cli-backfill"];
    let out = support::run_ok(
        env.strata()
            .args([
                "batch",
                "plan",
                "--metric",
                metric,
                "--from",
                "2026-10-01T00:00:00Z",
                "--to",
                "2026-10-03T00:00:00Z",
                "--chunks",
                "3",
            ])
            .args(key),
    );
    assert!(out.contains("in 3 chunks"), "{out}");
    let refused = env
        .strata()
        .args(["batch", "publish", "--metric", metric])
        .args(key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("missing chunks [0, 1, 2] of 3"), "{stderr}");
    assert_eq!(env.published(metric).await.0, first_run);
    for index in ["2", "0", "1"] {
        let out = support::run_ok(
            env.strata()
                .args([
                    "batch", "chunk", "--metric", metric, "--index", index, "--of", "3",
                ])
                .args(key),
        );
        assert!(out.contains(&format!("chunk {index} of 3 of run")), "{out}");
    }
    let out = support::run_ok(
        env.strata()
            .args(["batch", "publish", "--metric", metric])
            .args(key),
    );
    assert!(out.contains("published"), "{out}");
    let (run_id, after) = env.published(metric).await;
    assert!(run_id > first_run);
    assert_eq!(after, watermark, "a backfill keeps the watermark");
    assert!(view_rows(&ctx, metric, run_id, watermark).await == want);
    drop_database(&ctx).await;
}
