//! `strata batch run` and `strata batch backfill`: recompute the batch view
//! from the master dataset and publish it.
//!
//! A run of one metric:
//! 1. holds the metric's lease (one run per metric at a time,
//!    [`crate::lease`]), reads the newest *published* run `(P, W_old)` and
//!    the archive horizon `H` (min over the partitions whose progress has
//!    not reached the broker's high-water mark of the newest archived event
//!    − allowed lateness): every event before `H` is in the archive;
//! 2. picks the new watermark `W`: for fixed windows the largest window
//!    boundary such that every window starting before it ends by `H`; for
//!    sessions the start of the earliest session that could still grow (or
//!    `H`), so no session is ever cut; `W` never moves back;
//! 3. recomputes every window starting in `[W_old − lookback, W)` (from
//!    the archive's first hour on the first run) and inserts it under a new
//!    run id `R`, with retraction rows for windows of earlier runs that no
//!    longer exist (merged sessions);
//! 4. publishes, if the published run is still `P` and the lease still
//!    held: one row in `strata_batch_runs` with status `published` and
//!    watermark `W`. Readers only see rows of published runs
//!    ([`strata_warehouse::view_sql`]), so a run killed before this
//!    step changes nothing, and a rerun of the same range writes the same
//!    rows under a newer id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::{Config, MetricDef, Value, Window};
use strata_warehouse::rows::{BatchRow, BatchRunRow, Layer, WatermarkRow};
use strata_warehouse::{self as warehouse, BATCH_RUNS_TABLE, View, WATERMARKS_TABLE};

use crate::BatchError;
use crate::compute::{EventFrame, Recomputed, recompute};
use crate::lake::Lake;
use crate::lease::{self, Lease};
use crate::metrics as m;

/// Rows per INSERT into the batch view.
const INSERT_CHUNK: usize = 20_000;

/// What one metric's run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// Metric.
    pub metric: String,
    /// Run id (0 when nothing was run).
    pub run_id: u64,
    /// Windows recomputed, `[from_ms, to_ms)` by start.
    pub from_ms: i64,
    /// End of the recomputed range.
    pub to_ms: i64,
    /// Batch watermark after the run.
    pub watermark_ms: Option<i64>,
    /// Events read.
    pub events_read: u64,
    /// Rows written (including retractions).
    pub rows_written: u64,
    /// Why nothing was done, if so.
    pub skipped: Option<String>,
}

/// The handles a run needs.
#[derive(Clone)]
pub struct BatchContext {
    /// Configuration.
    pub config: Arc<Config>,
    /// Master dataset.
    pub lake: Lake,
    /// ClickHouse.
    pub client: Client,
}

impl BatchContext {
    /// Opens the lake and the ClickHouse client of `config`.
    pub fn new(config: Arc<Config>) -> Result<BatchContext, BatchError> {
        let lake = Lake::open(&config.object_store, &config.base_dir)?;
        let client = warehouse::client(&config.clickhouse);
        Ok(BatchContext {
            config,
            lake,
            client,
        })
    }

    fn database(&self) -> &str {
        &self.config.clickhouse.database
    }

    pub(crate) fn metric(&self, name: &str) -> Result<Arc<MetricDef>, BatchError> {
        self.config.metric(name).cloned().ok_or_else(|| {
            BatchError::Usage(format!(
                "unknown metric {name:?}; the metrics of {} are: {}",
                self.config.file,
                self.config.metric_names()
            ))
        })
    }
}

/// One scheduled run over every metric (or only `only`).
pub async fn run_once(
    ctx: &BatchContext,
    only: Option<&str>,
) -> Result<Vec<RunReport>, BatchError> {
    let metrics: Vec<Arc<MetricDef>> = match only {
        Some(name) => vec![ctx.metric(name)?],
        None => ctx.config.metrics.clone(),
    };
    // Metrics are independent: recompute them concurrently (each on its
    // own blocking thread), then report in config order.
    let results = futures::future::join_all(metrics.iter().map(|metric| async move {
        let started = Instant::now();
        (run_metric(ctx, metric).await, started)
    }))
    .await;
    let mut reports = Vec::new();
    for (metric, (result, started)) in metrics.iter().zip(results) {
        metrics::histogram!(m::BATCH_RUN_DURATION, "metric" => metric.name.clone())
            .record(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::BATCH_RUNS, "metric" => metric.name.clone(), "outcome" => outcome)
            .increment(1);
        let report = result?;
        match &report.skipped {
            Some(reason) => {
                tracing::info!(metric = %metric.name, reason = %reason, "batch run skipped");
            }
            None => tracing::info!(
                metric = %metric.name,
                run_id = report.run_id,
                from_ms = report.from_ms,
                to_ms = report.to_ms,
                watermark_ms = report.watermark_ms,
                events_read = report.events_read,
                rows_written = report.rows_written,
                seconds = started.elapsed().as_secs_f64(),
                "batch run published"
            ),
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The archive horizon of a metric's source: every event before it is in
/// the archive. `None` when nothing was archived yet, or while a partition
/// holding records has no archived event (see [`horizon_of`]).
pub async fn archive_horizon(
    ctx: &BatchContext,
    metric: &MetricDef,
) -> Result<Option<i64>, BatchError> {
    Ok(match horizon_of(ctx, metric).await? {
        Horizon::At(h) => Some(h),
        Horizon::Empty | Horizon::Blocked(_) => None,
    })
}

/// Where the archive of a metric's source stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Horizon {
    /// Nothing archived yet.
    Empty,
    /// A partition has records in Kafka but no archived event: nothing can
    /// be said about its event times (the reason, for the run report).
    Blocked(String),
    /// Every event before this time is archived (late events aside).
    At(i64),
}

/// The horizon: min over the partitions the archive has not caught up with
/// of (newest archived event − allowed lateness). A partition is caught up,
/// and does not hold the horizon back, only when its progress reached the
/// broker's high-water mark: wall-clock idleness cannot tell a quiet
/// partition from an archiver that is behind or has not flushed yet. The
/// broker is asked after the progress is read, so a record that arrives in
/// between makes the partition count as behind, never the reverse.
pub async fn horizon_of(ctx: &BatchContext, metric: &MetricDef) -> Result<Horizon, BatchError> {
    let source = &metric.source;
    let progress = ctx.lake.all_progress(&source.name).await?;
    let ends = strata_kafka::partition_watermarks(&ctx.config.kafka, &source.topic).await?;
    let lateness = source.allowed_lateness.as_i64();
    let mut horizon: Option<i64> = None;
    let mut newest: Option<i64> = None;
    for (&partition, &(low, high)) in &ends {
        let p = progress.get(&(source.topic.clone(), partition));
        if let Some(p) = p.filter(|p| p.max_event_ms > i64::MIN) {
            newest = Some(newest.map_or(p.max_event_ms, |n| n.max(p.max_event_ms)));
        }
        // A progress beyond the high watermark is of a log that no longer
        // exists (the topic was recreated): behind, unless the new log is
        // empty.
        let caught_up = high <= low || p.is_some_and(|p| p.next_offset == high);
        if caught_up {
            continue;
        }
        match p {
            Some(p) if p.max_event_ms > i64::MIN => {
                let h = p.max_event_ms - lateness;
                horizon = Some(horizon.map_or(h, |x| x.min(h)));
            }
            _ => {
                return Ok(Horizon::Blocked(format!(
                    "partition {partition} of {} holds records (up to offset {high}) of which the archive has stored no event yet",
                    source.topic
                )));
            }
        }
    }
    // Every partition caught up: the newest event bounds what is complete.
    Ok(match horizon.or(newest.map(|n| n - lateness)) {
        Some(h) => Horizon::At(h),
        None => Horizon::Empty,
    })
}

async fn run_metric(ctx: &BatchContext, metric: &Arc<MetricDef>) -> Result<RunReport, BatchError> {
    // One run per metric at a time (crate::lease): a scheduled run or
    // `--once` that finds another run holding the metric skips this round.
    let lease = match lease::acquire(&ctx.client, ctx.database(), &metric.name, Duration::ZERO)
        .await?
    {
        Ok(lease) => lease,
        Err(other) => {
            metrics::counter!(m::BATCH_LEASE_BUSY, "metric" => metric.name.clone()).increment(1);
            let published =
                warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
            return Ok(RunReport {
                metric: metric.name.clone(),
                run_id: 0,
                from_ms: 0,
                to_ms: 0,
                watermark_ms: published.map(|p| p.1),
                events_read: 0,
                rows_written: 0,
                skipped: Some(format!(
                    "another run of this metric holds its lease ({}, claimed at {} ms)",
                    other.holder, other.claimed_ms
                )),
            });
        }
    };
    let result = run_metric_leased(ctx, metric, &lease).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(metric = %metric.name, error = %e, "cannot release the batch lease; it lapses by itself");
    }
    result
}

async fn run_metric_leased(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    lease: &Lease,
) -> Result<RunReport, BatchError> {
    let mut report = RunReport {
        metric: metric.name.clone(),
        run_id: 0,
        from_ms: 0,
        to_ms: 0,
        watermark_ms: None,
        events_read: 0,
        rows_written: 0,
        skipped: None,
    };
    let published = warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
    report.watermark_ms = published.map(|p| p.1);
    let horizon = match horizon_of(ctx, metric).await? {
        Horizon::At(h) => h,
        Horizon::Empty => {
            report.skipped = Some("the archive holds no event of this metric's source yet".into());
            return Ok(report);
        }
        Horizon::Blocked(reason) => {
            report.skipped = Some(reason);
            return Ok(report);
        }
    };
    let Some(first_hour) = ctx.lake.first_hour(&metric.source.name).await? else {
        report.skipped = Some("the archive holds no data file yet".into());
        return Ok(report);
    };
    let lookback = ctx.config.batch.lookback.as_i64();
    // Windows that can hold the archive's first events start up to one
    // window extent before its first hour (hopping windows reach back).
    let earliest = first_hour - metric.window.max_extent_ms();
    let from = match published {
        Some((_, w)) => w.saturating_sub(lookback).max(earliest),
        None => earliest,
    };
    // Windows complete at the horizon; for sessions refined after the
    // recompute, by the sessions still open.
    let to = metric
        .window
        .complete_before(horizon)
        .max(published.map_or(i64::MIN, |p| p.1));
    recompute_and_publish(
        ctx,
        metric,
        (from, to),
        horizon,
        published,
        true,
        lease,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Aligns a range start down so it never cuts a window or a session.
async fn align_from(
    ctx: &BatchContext,
    metric: &MetricDef,
    from: i64,
    published: Option<(u64, i64)>,
) -> Result<i64, BatchError> {
    let aligned = metric.window.align_start(from);
    if metric.window.is_fixed() {
        return Ok(aligned);
    }
    // Session bounds depend on the events: start at the earliest published
    // session that spans `from`, so a session is recomputed whole or not at
    // all.
    let Some((run_id, _)) = published else {
        return Ok(aligned);
    };
    let spanning =
        warehouse::batch_window_spanning(&ctx.client, ctx.database(), metric, run_id, aligned)
            .await?;
    Ok(spanning.map_or(aligned, |s| s.min(aligned)))
}

#[allow(clippy::too_many_arguments)]
async fn recompute_and_publish(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    (from, to): (i64, i64),
    horizon: i64,
    published: Option<(u64, i64)>,
    advance_watermark: bool,
    lease: &Lease,
    report: &mut RunReport,
) -> Result<(), BatchError> {
    let from = align_from(ctx, metric, from, published).await?;
    report.from_ms = from;
    report.to_ms = to;
    if from >= to {
        report.skipped = Some(format!(
            "nothing to recompute: range [{from}, {to}) is empty (archive horizon {horizon})"
        ));
        return Ok(());
    }
    // Events that can fall in a window starting in [from, to).
    let events_to = metric.window.events_end(to, horizon);
    let frames = read_frames(ctx, metric, from, events_to).await?;
    let started = Instant::now();
    let metric_for_task = metric.clone();
    let recomputed: Recomputed = tokio::task::spawn_blocking(move || {
        recompute(&metric_for_task, &frames, from, events_to, from, to)
    })
    .await
    .map_err(|e| BatchError::Usage(format!("recompute task failed: {e}")))?;
    tracing::debug!(metric = %metric.name, events = recomputed.events_read, windows = recomputed.windows.len(), seconds = started.elapsed().as_secs_f64(), "recomputed");
    metrics::counter!(m::BATCH_ROWS_READ, "metric" => metric.name.clone())
        .increment(recomputed.events_read);
    report.events_read = recomputed.events_read;
    // Sessions still open at the horizon hold the watermark back (fixed
    // windows report none); it never moves back.
    let watermark = recomputed
        .first_open_session_ms
        .map_or(to, |open| to.min(open))
        .max(published.map_or(i64::MIN, |p| p.1));
    // Sessions starting at or after the watermark belong to the speed view.
    let windows: Vec<_> = recomputed
        .windows
        .into_iter()
        .filter(|w| w.window.start_ms < watermark || !advance_watermark)
        .collect();
    let run_id = next_run_id(ctx, &metric.name).await?;
    report.run_id = run_id;
    let now = warehouse::now_datetime();
    let mut rows = Vec::with_capacity(windows.len());
    // (window start, typed key) of every window this run writes.
    let mut present: HashSet<(i64, Vec<u8>)> = HashSet::with_capacity(windows.len());
    for w in &windows {
        let key: Vec<Json> = w.key.iter().map(Value::to_json).collect();
        present.insert((w.window.start_ms, typed_key(metric, &key)));
        let row = BatchRow {
            window: w.window,
            key,
            state: &w.acc,
            run_id,
            retracted: false,
        };
        rows.push(row.to_json(metric, &now));
    }
    // Windows of earlier runs in the range that no longer exist (sessions
    // merged by late events) are retracted by this run.
    let upper = if advance_watermark { watermark } else { to };
    if let Some((published_run, _)) = published {
        let empty = metric.plan.new_accumulator();
        let old_rows = warehouse::read_view(
            &ctx.client,
            ctx.database(),
            metric,
            View::Batch {
                run_id: published_run,
            },
            from,
            upper,
        )
        .await?;
        for old in old_rows {
            if present.contains(&(old.start_ms, typed_key(metric, &old.key))) {
                continue;
            }
            let row = BatchRow {
                window: Window {
                    start_ms: old.start_ms,
                    end_ms: old.end_ms,
                },
                key: old.key,
                state: &empty,
                run_id,
                retracted: true,
            };
            rows.push(row.to_json(metric, &now));
        }
    }
    let table = warehouse::batch_table(&metric.name);
    let started_at = warehouse::now_datetime();
    for chunk in rows.chunks(INSERT_CHUNK) {
        warehouse::insert_rows(
            &ctx.client,
            ctx.database(),
            &table,
            chunk,
            Duration::from_secs(120),
        )
        .await?;
    }
    report.rows_written = rows.len() as u64;
    metrics::counter!(m::BATCH_ROWS_WRITTEN, "metric" => metric.name.clone())
        .increment(report.rows_written);
    // Publish only on top of the run this one was computed from, and only
    // while holding the lease: otherwise its retractions are relative to the
    // wrong run and its watermark may be older than the one published.
    let current = warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
    if current != published || !lease.still_held().await? {
        metrics::counter!(m::BATCH_RUNS_SUPERSEDED, "metric" => metric.name.clone()).increment(1);
        tracing::warn!(
            metric = %metric.name,
            run_id,
            based_on = ?published,
            now_published = ?current,
            "batch run not published: another run published or took the lease meanwhile; its rows stay invisible"
        );
        report.skipped = Some(format!(
            "not published: computed on top of run {:?}, but {:?} is published now or the lease was lost",
            published.map(|p| p.0),
            current.map(|p| p.0)
        ));
        return Ok(());
    }
    // The commit point: one row, atomically visible.
    let published_watermark = if advance_watermark {
        watermark
    } else {
        published.map_or(i64::MIN, |p| p.1)
    };
    let run = BatchRunRow {
        run_id,
        metric: &metric.name,
        status: "published",
        from_ms: from,
        to_ms: upper,
        watermark_ms: published_watermark,
        rows_read: report.events_read,
        rows_written: report.rows_written,
        started_at: &started_at,
        finished_at: &warehouse::now_datetime(),
        message: if advance_watermark {
            "scheduled"
        } else {
            "backfill"
        },
    };
    warehouse::insert_rows(
        &ctx.client,
        ctx.database(),
        BATCH_RUNS_TABLE,
        &[run.to_json()],
        Duration::from_secs(30),
    )
    .await?;
    report.watermark_ms = Some(published_watermark);
    // Mirror for dashboards; readers use the run log above.
    let mirror = WatermarkRow {
        metric: &metric.name,
        layer: Layer::Batch,
        kafka_partition: -1,
        watermark_ms: published_watermark,
        version: run_id,
        run_id,
    };
    warehouse::insert_rows(
        &ctx.client,
        ctx.database(),
        WATERMARKS_TABLE,
        &[mirror.to_json(&now)],
        Duration::from_secs(30),
    )
    .await?;
    metrics::gauge!(m::BATCH_WATERMARK, "metric" => metric.name.clone())
        .set(published_watermark as f64);
    Ok(())
}

/// A group key as one comparable byte string, typed by the group-by fields
/// ([`strata_schemas::group_key`]): the JSON ClickHouse returns for a stored
/// key is not the JSON the run wrote (a float `3.0` comes back as `3`), and
/// comparing texts would retract a window this run rewrites, under its own
/// run id, so the window could vanish.
fn typed_key(metric: &MetricDef, key: &[Json]) -> Vec<u8> {
    use strata_schemas::aggregate::FieldRef;
    use strata_schemas::value::FieldType;
    let typed = |field: &FieldRef, v: &Json| -> Value {
        let int = || v.as_i64().or_else(|| v.as_str()?.parse().ok());
        let float = || v.as_f64().or_else(|| v.as_str()?.parse().ok());
        let typed = match field.ty {
            _ if v.is_null() => Some(Value::Null),
            FieldType::String => v.as_str().map(|s| Value::String(s.to_string())),
            FieldType::Int => int().map(Value::Int),
            FieldType::Timestamp => int().map(Value::Timestamp),
            // -0.0 and 0.0 are one key to ClickHouse.
            FieldType::Float => float().map(|f| Value::Float(if f == 0.0 { 0.0 } else { f })),
            FieldType::Bool => v
                .as_bool()
                .or_else(|| v.as_u64().map(|b| b != 0))
                .map(Value::Bool),
        };
        // A value of an unexpected shape still compares by its text.
        typed.unwrap_or_else(|| Value::String(v.to_string()))
    };
    let mut bytes = Vec::new();
    for (field, v) in metric.group_by.iter().zip(key) {
        strata_schemas::group_key::encode_value(&mut bytes, &typed(field, v));
    }
    bytes
}

/// Run ids grow and are never shared: wall-clock milliseconds × 1000 plus
/// 0–999 at random, or one more than the last id. Two runs that started in
/// the same millisecond (the lease makes that an anomaly) thus almost never
/// write under one id, and ids stay above the millisecond ids of earlier
/// releases.
async fn next_run_id(ctx: &BatchContext, metric: &str) -> Result<u64, BatchError> {
    use std::hash::{BuildHasher, Hasher};
    let last = warehouse::run_log::last_run_id(&ctx.client, ctx.database(), metric).await?;
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now);
    let jitter = h.finish() % 1000;
    Ok((now * 1000 + jitter).max(last + 1))
}

/// Reads, with Polars, the archive files of the metric's source that can
/// hold events in `[from_ms, to_ms)`.
async fn read_frames(
    ctx: &BatchContext,
    metric: &MetricDef,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<EventFrame>, BatchError> {
    let source = &metric.source.name;
    let progress = ctx.lake.all_progress(source).await?;
    let files = ctx
        .lake
        .committed_files(source, from_ms, to_ms, &progress)
        .await?;
    let mut frames = Vec::with_capacity(files.len());
    // Downloads overlap with decoding: up to 8 in flight.
    let mut pending = futures::stream::iter(files.into_iter().map(|f| {
        let lake = ctx.lake.clone();
        async move {
            let bytes = lake.get(&f.path).await?;
            Ok::<_, BatchError>((f, bytes))
        }
    }))
    .buffered(8);
    use futures::StreamExt;
    let mut decode_tasks = Vec::new();
    while let Some(item) = pending.next().await {
        let (file, bytes) = item?;
        let metric = Arc::new(metric.clone());
        decode_tasks.push(tokio::task::spawn_blocking(move || {
            EventFrame::read(&metric, file.path.as_ref(), bytes)
        }));
    }
    for task in decode_tasks {
        frames.push(
            task.await
                .map_err(|e| BatchError::Usage(format!("read task failed: {e}")))??,
        );
    }
    Ok(frames)
}

/// `strata batch backfill`: recompute `[from, to)` (clamped below the
/// published watermark, which a backfill never moves) in chunks of
/// `chunk_ms`, each published as its own run. A chunk already published by
/// an earlier attempt of the same backfill (same range in the run log) is
/// skipped, so a crashed backfill resumes where it stopped.
pub async fn backfill(
    ctx: &BatchContext,
    metric_name: &str,
    from: i64,
    to: i64,
    chunk_ms: i64,
    on_chunk: impl FnMut(usize, usize, &RunReport),
) -> Result<Vec<RunReport>, BatchError> {
    let metric = ctx.metric(metric_name)?;
    // A backfill waits for a scheduled run of the metric to finish.
    let lease = match lease::acquire(&ctx.client, ctx.database(), &metric.name, lease::LEASE_TTL)
        .await?
    {
        Ok(lease) => lease,
        Err(other) => {
            metrics::counter!(m::BATCH_LEASE_BUSY, "metric" => metric.name.clone()).increment(1);
            return Err(BatchError::Usage(format!(
                "another run of {} holds its lease ({}, claimed at {} ms); try again when it finished",
                metric.name, other.holder, other.claimed_ms
            )));
        }
    };
    let result = backfill_leased(ctx, &metric, (from, to), chunk_ms, on_chunk, &lease).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(metric = %metric.name, error = %e, "cannot release the batch lease; it lapses by itself");
    }
    result
}

async fn backfill_leased(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    (from, to): (i64, i64),
    chunk_ms: i64,
    mut on_chunk: impl FnMut(usize, usize, &RunReport),
    lease: &Lease,
) -> Result<Vec<RunReport>, BatchError> {
    let metric = metric.clone();
    if from >= to {
        return Err(BatchError::Usage(format!(
            "--from ({from}) must be before --to ({to})"
        )));
    }
    let published = warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
    let Some((_, watermark)) = published else {
        return Err(BatchError::Usage(format!(
            "metric {} has no published batch run yet; run `strata batch run --once` first (a backfill only recomputes windows below the batch watermark)",
            metric.name
        )));
    };
    let to = to.min(watermark);
    let horizon = match horizon_of(ctx, &metric).await? {
        Horizon::At(h) => h,
        Horizon::Empty => return Err(BatchError::Usage("the archive is empty".into())),
        Horizon::Blocked(reason) => {
            return Err(BatchError::Usage(format!(
                "the archive is behind: {reason}; retry once `strata archive` has stored it"
            )));
        }
    };
    let done =
        warehouse::run_log::published_backfills(&ctx.client, ctx.database(), &metric.name).await?;
    let chunk_ms = chunk_ms.max(1);
    let mut chunks = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + chunk_ms).min(to);
        chunks.push((start, end));
        start = end;
    }
    let total = chunks.len();
    let mut reports = Vec::new();
    for (i, (start, end)) in chunks.into_iter().enumerate() {
        let mut report = RunReport {
            metric: metric.name.clone(),
            run_id: 0,
            from_ms: start,
            to_ms: end,
            watermark_ms: Some(watermark),
            events_read: 0,
            rows_written: 0,
            skipped: None,
        };
        let aligned = align_from(ctx, &metric, start, published).await?;
        if let Some(run_id) = done.get(&(aligned, end)) {
            report.run_id = *run_id;
            report.skipped = Some("already published by an earlier attempt".into());
        } else {
            let current =
                warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
            recompute_and_publish(
                ctx,
                &metric,
                (start, end),
                horizon,
                current,
                false,
                lease,
                &mut report,
            )
            .await?;
            if report.skipped.is_some() && report.run_id != 0 {
                return Err(BatchError::Usage(format!(
                    "backfill chunk [{start}, {end}) of {} was not published: another run published meanwhile; run the backfill again (it resumes)",
                    metric.name
                )));
            }
        }
        on_chunk(i + 1, total, &report);
        reports.push(report);
    }
    Ok(reports)
}
