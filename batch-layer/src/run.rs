//! `strata batch run` and `strata batch backfill`: recompute the batch view
//! from the master dataset and publish it.
//!
//! A run of one metric:
//! 1. holds the metric's lease (one run per metric at a time,
//!    [`crate::lease`]), reads the newest *published* run `(P, W_old)` and
//!    the archive horizon `H` (min over the partitions whose progress has
//!    not reached the broker's high-water mark of the newest archived event
//!    − allowed lateness): every event before `H` is in the archive;
//! 2. picks the range: window starts from `W_old − lookback` (the
//!    archive's first hour on the first run) up to, for fixed windows, the
//!    largest window boundary such that every window starting before it
//!    ends by `H`; for sessions up to `H`, the watermark then stopping at
//!    the start of the earliest session that could still grow, so no
//!    session is ever cut; `W` never moves back;
//! 3. plans the run: a new run id `R`, the range cut into `batch.chunk`
//!    chunks ([`crate::split`]), computed `batch.parallelism` at once, each
//!    inserting its windows under `R` with retraction rows for windows of
//!    `P` that no longer exist (merged sessions);
//! 4. publishes, once every chunk is in, if the published run is still `P`
//!    and the lease still held: one row in `strata_batch_runs` with status
//!    `published` and watermark `W`. Readers only see rows of published
//!    runs ([`strata_warehouse::view_sql`]), so a run killed before this
//!    step changes nothing, and a rerun of the same range writes the same
//!    rows under a newer id.
//!
//! The same plan can be computed by other processes: [`plan`],
//! [`run_planned_chunk`] and [`publish_planned`] (`strata batch plan`,
//! `chunk`, `publish`; a Kubernetes Indexed Job).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::{Config, MetricDef, Value};
use strata_warehouse::rows::{BatchRunRow, Layer, WatermarkRow};
use strata_warehouse::run_log::{ChunkRow, PlanRow};
use strata_warehouse::{self as warehouse, BATCH_RUNS_TABLE, WATERMARKS_TABLE};

use crate::BatchError;
use crate::lake::Lake;
use crate::lease::{self, Lease};
use crate::metrics as m;
use crate::split::{self, ChunkProgress, Publication};

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
    /// Chunks of the run.
    pub chunks: u32,
    /// Chunks an earlier attempt of the run had done.
    pub chunks_resumed: u32,
}

impl RunReport {
    /// A report of `metric` before anything was done.
    fn of(metric: &str) -> RunReport {
        RunReport {
            metric: metric.to_string(),
            run_id: 0,
            from_ms: 0,
            to_ms: 0,
            watermark_ms: None,
            events_read: 0,
            rows_written: 0,
            skipped: None,
            chunks: 0,
            chunks_resumed: 0,
        }
    }
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

    pub(crate) fn database(&self) -> &str {
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
            let mut report = RunReport::of(&metric.name);
            report.watermark_ms = published.map(|p| p.1);
            report.skipped = Some(format!(
                "another run of this metric holds its lease ({}, claimed at {} ms)",
                other.holder, other.claimed_ms
            ));
            return Ok(report);
        }
    };
    let result = run_metric_leased(ctx, metric, &lease).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(metric = %metric.name, error = %e, "cannot release the batch lease; it lapses by itself");
    }
    result
}

/// The range a run recomputes: window starts `[from, to)`, the archive
/// horizon, and the published run it builds on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunRange {
    from: i64,
    to: i64,
    horizon: i64,
    published: Option<(u64, i64)>,
}

/// The range a scheduled run of `metric` recomputes now, or why there is
/// none (`Ok(Err(reason))`).
async fn scheduled_range(
    ctx: &BatchContext,
    metric: &MetricDef,
) -> Result<Result<RunRange, String>, BatchError> {
    let published = warehouse::published_batch(&ctx.client, ctx.database(), &metric.name).await?;
    let horizon = match horizon_of(ctx, metric).await? {
        Horizon::At(h) => h,
        Horizon::Empty => {
            return Ok(Err(
                "the archive holds no event of this metric's source yet".into(),
            ));
        }
        Horizon::Blocked(reason) => return Ok(Err(reason)),
    };
    let Some(first_hour) = ctx.lake.first_hour(&metric.source.name).await? else {
        return Ok(Err("the archive holds no data file yet".into()));
    };
    let lookback = ctx.config.batch.lookback.as_i64();
    // Windows that can hold the archive's first events start up to one
    // window extent before its first hour (hopping windows reach back).
    let earliest = first_hour - metric.window.max_extent_ms();
    let from = match published {
        Some((_, w)) => w.saturating_sub(lookback).max(earliest),
        None => earliest,
    };
    // Windows complete at the horizon; for sessions refined when the run
    // publishes, by the sessions still open.
    let to = metric
        .window
        .complete_before(horizon)
        .max(published.map_or(i64::MIN, |p| p.1));
    let from = align_from(ctx, metric, from, published).await?;
    if from >= to {
        return Ok(Err(format!(
            "nothing to recompute: range [{from}, {to}) is empty (archive horizon {horizon})"
        )));
    }
    Ok(Ok(RunRange {
        from,
        to,
        horizon,
        published,
    }))
}

/// The range of a backfill of `[from, to)`: clamped below the published
/// watermark, which a backfill never moves, and aligned so it cuts no
/// window or session. `from >= to` when nothing is left.
async fn backfill_range(
    ctx: &BatchContext,
    metric: &MetricDef,
    from: i64,
    to: i64,
) -> Result<RunRange, BatchError> {
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
    let horizon = match horizon_of(ctx, metric).await? {
        Horizon::At(h) => h,
        Horizon::Empty => return Err(BatchError::Usage("the archive is empty".into())),
        Horizon::Blocked(reason) => {
            return Err(BatchError::Usage(format!(
                "the archive is behind: {reason}; retry once `strata archive` has stored it"
            )));
        }
    };
    let from = align_from(ctx, metric, from, published).await?;
    Ok(RunRange {
        from,
        to,
        horizon,
        published,
    })
}

#[allow(clippy::too_many_arguments)]
fn plan_row(
    run_id: u64,
    metric: &MetricDef,
    kind: &str,
    range: RunRange,
    chunk_count: u32,
    lease_holder: &str,
    lease_ttl: Duration,
    plan_key: &str,
) -> PlanRow {
    PlanRow {
        run_id,
        metric: metric.name.clone(),
        kind: kind.to_string(),
        from_ms: range.from,
        to_ms: range.to,
        horizon_ms: range.horizon,
        chunk_count,
        based_on: range.published,
        lease_holder: lease_holder.to_string(),
        lease_ttl_ms: lease_ttl.as_millis() as i64,
        plan_key: plan_key.to_string(),
        planned_at: warehouse::now_datetime(),
    }
}

async fn run_metric_leased(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    lease: &Lease,
) -> Result<RunReport, BatchError> {
    let mut report = RunReport::of(&metric.name);
    let range = match scheduled_range(ctx, metric).await? {
        Ok(range) => range,
        Err(reason) => {
            report.watermark_ms =
                warehouse::published_batch(&ctx.client, ctx.database(), &metric.name)
                    .await?
                    .map(|p| p.1);
            report.skipped = Some(reason);
            return Ok(report);
        }
    };
    report.watermark_ms = range.published.map(|p| p.1);
    split::ensure_tables(ctx).await?;
    let run_id = next_run_id(ctx, &metric.name).await?;
    let chunk_count = split::chunk_count_for(range.from, range.to, ctx.config.batch.chunk.as_i64());
    let plan = plan_row(
        run_id,
        metric,
        split::SCHEDULED,
        range,
        chunk_count,
        lease.holder(),
        lease::LEASE_TTL,
        "",
    );
    split::insert_plan(ctx, &plan).await?;
    split::run_chunks_here(ctx, metric, &plan, lease.holder(), &|_| {}).await?;
    publish_here(ctx, metric, &plan, lease, &mut report).await?;
    Ok(report)
}

/// Publishes a plan computed in this process, under its lease, into `report`.
async fn publish_here(
    ctx: &BatchContext,
    metric: &MetricDef,
    plan: &PlanRow,
    lease: &Lease,
    report: &mut RunReport,
) -> Result<(), BatchError> {
    report.run_id = plan.run_id;
    report.from_ms = plan.from_ms;
    report.to_ms = plan.to_ms;
    report.chunks = plan.chunk_count;
    match split::publish(ctx, metric, plan, lease.holder()).await? {
        Publication::Published {
            watermark_ms,
            to_ms,
            events_read,
            rows_written,
        } => {
            report.to_ms = to_ms;
            report.watermark_ms = Some(watermark_ms);
            report.events_read = events_read;
            report.rows_written = rows_written;
        }
        Publication::Superseded(reason) => {
            tracing::warn!(metric = %metric.name, run_id = plan.run_id, reason = %reason, "batch run not published; its rows stay invisible");
            report.skipped = Some(format!("not published: {reason}"));
        }
        Publication::MissingChunks(missing) => {
            return Err(BatchError::Usage(format!(
                "run {} of {} is missing chunks {missing:?}; not published",
                plan.run_id, metric.name
            )));
        }
        Publication::AlreadyPublished => {
            report.skipped = Some("already published".into());
        }
    }
    Ok(())
}

/// The commit point of a run: one `published` row in the run log (readers
/// see the run's rows from then on), then the watermarks mirror.
pub(crate) async fn commit_run(
    ctx: &BatchContext,
    metric: &MetricDef,
    plan: &PlanRow,
    (from_ms, to_ms): (i64, i64),
    watermark_ms: i64,
    rows_read: u64,
    rows_written: u64,
) -> Result<(), BatchError> {
    let now = warehouse::now_datetime();
    let run = BatchRunRow {
        run_id: plan.run_id,
        metric: &metric.name,
        status: "published",
        from_ms,
        to_ms,
        watermark_ms,
        rows_read,
        rows_written,
        started_at: &plan.planned_at,
        finished_at: &now,
        message: &plan.kind,
    };
    warehouse::insert_rows(
        &ctx.client,
        ctx.database(),
        BATCH_RUNS_TABLE,
        &[run.to_json()],
        Duration::from_secs(30),
    )
    .await?;
    // Mirror for dashboards; readers use the run log above.
    let mirror = WatermarkRow {
        metric: &metric.name,
        layer: Layer::Batch,
        kafka_partition: -1,
        watermark_ms,
        version: plan.run_id,
        run_id: plan.run_id,
    };
    warehouse::insert_rows(
        &ctx.client,
        ctx.database(),
        WATERMARKS_TABLE,
        &[mirror.to_json(&now)],
        Duration::from_secs(30),
    )
    .await?;
    metrics::gauge!(m::BATCH_WATERMARK, "metric" => metric.name.clone()).set(watermark_ms as f64);
    Ok(())
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

/// A group key as one comparable byte string, typed by the group-by fields
/// ([`strata_schemas::group_key`]): the JSON ClickHouse returns for a stored
/// key is not the JSON the run wrote (a float `3.0` comes back as `3`), and
/// comparing texts would retract a window this run rewrites, under its own
/// run id, so the window could vanish.
pub(crate) fn typed_key(metric: &MetricDef, key: &[Json]) -> Vec<u8> {
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

/// `strata batch backfill`: recompute `[from, to)` (clamped below the
/// published watermark, which a backfill never moves) as one run split in
/// chunks of `chunk_ms` (default `batch.chunk`), computed
/// `batch.parallelism` at once and published together. A backfill that
/// died resumes: the chunks its plan recorded done are not computed again,
/// as long as no other run published meanwhile. A backfill of a range whose
/// run is the newest published one is done already.
pub async fn backfill(
    ctx: &BatchContext,
    metric_name: &str,
    (from, to): (i64, i64),
    chunk_ms: Option<i64>,
    on_progress: &(dyn Fn(ChunkProgress<'_>) + Send + Sync),
) -> Result<RunReport, BatchError> {
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
    let result = backfill_leased(ctx, &metric, (from, to), chunk_ms, on_progress, &lease).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(metric = %metric.name, error = %e, "cannot release the batch lease; it lapses by itself");
    }
    result
}

async fn backfill_leased(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    (from, to): (i64, i64),
    chunk_ms: Option<i64>,
    on_progress: &(dyn Fn(ChunkProgress<'_>) + Send + Sync),
    lease: &Lease,
) -> Result<RunReport, BatchError> {
    let mut report = RunReport::of(&metric.name);
    let range = backfill_range(ctx, metric, from, to).await?;
    report.from_ms = range.from;
    report.to_ms = range.to;
    report.watermark_ms = range.published.map(|p| p.1);
    if range.from >= range.to {
        report.skipped = Some(format!(
            "nothing to recompute: [{}, {}) is empty below the batch watermark",
            range.from, range.to
        ));
        return Ok(report);
    }
    split::ensure_tables(ctx).await?;
    let chunk_ms = chunk_ms.unwrap_or(ctx.config.batch.chunk.as_i64());
    let chunk_count = split::chunk_count_for(range.from, range.to, chunk_ms);
    let db = ctx.database();
    let same = |p: &PlanRow| {
        p.kind == split::BACKFILL
            && (p.from_ms, p.to_ms, p.chunk_count) == (range.from, range.to, chunk_count)
    };
    // Done already: the newest published run is this backfill.
    if let Some((published_run, _)) = range.published
        && let Some(done) =
            warehouse::run_log::plan_of(&ctx.client, db, &metric.name, published_run).await?
        && same(&done)
    {
        let chunks =
            warehouse::run_log::done_chunks(&ctx.client, db, &metric.name, done.run_id).await?;
        for (i, chunk) in chunks.iter().enumerate() {
            on_progress(ChunkProgress::Done {
                chunk,
                resumed: true,
                done: i + 1,
                total: chunks.len(),
            });
        }
        report.run_id = done.run_id;
        report.chunks = done.chunk_count;
        report.chunks_resumed = done.chunk_count;
        report.skipped = Some("already published by an earlier attempt".into());
        return Ok(report);
    }
    // Resume an unpublished plan of the same backfill on top of the same
    // published run (its retractions are relative to that run).
    let resumable = warehouse::run_log::newest_unpublished_plan(&ctx.client, db, &metric.name)
        .await?
        .filter(|p| same(p) && p.based_on == range.published);
    let plan = match resumable {
        Some(plan) => plan,
        None => {
            let run_id = next_run_id(ctx, &metric.name).await?;
            let plan = plan_row(
                run_id,
                metric,
                split::BACKFILL,
                range,
                chunk_count,
                lease.holder(),
                lease::LEASE_TTL,
                "",
            );
            split::insert_plan(ctx, &plan).await?;
            plan
        }
    };
    let chunks = split::run_chunks_here(ctx, metric, &plan, lease.holder(), on_progress).await?;
    report.chunks_resumed = chunks.iter().filter(|c| c.worker != lease.holder()).count() as u32;
    publish_here(ctx, metric, &plan, lease, &mut report).await?;
    if report.skipped.is_some() {
        return Err(BatchError::Usage(format!(
            "backfill run {} of {} was not published: {}; run the backfill again",
            plan.run_id,
            metric.name,
            report.skipped.as_deref().unwrap_or_default()
        )));
    }
    Ok(report)
}

/// What `strata batch plan` plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanRange {
    /// What a scheduled run would recompute now (it advances the watermark).
    Scheduled,
    /// A backfill of window starts `[from_ms, to_ms)`.
    Backfill {
        /// First window start.
        from_ms: i64,
        /// End of the window starts.
        to_ms: i64,
    },
}

/// A plan for workers in other processes (`strata batch plan`).
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// What to recompute.
    pub range: PlanRange,
    /// Chunks: the workers' count (a Job's `completions`).
    pub chunks: u32,
    /// Workers started together find the plan by this (a Job's uid);
    /// every `plan` call with the same key returns the same plan.
    pub plan_key: String,
    /// How long the plan keeps the metric's lease without a worker renewing
    /// it: a plan no worker touched for this long is abandoned.
    pub lease_ttl: Duration,
    /// How long to wait for another run of the metric to end.
    pub wait: Duration,
}

/// `strata batch plan`: writes a planned run (run id, range, chunk count)
/// that `strata batch chunk` workers compute and `strata batch publish`
/// commits, and hands the metric's lease to it. With a `plan_key` it is
/// idempotent: the plan already made under that key is returned, so every
/// pod of a Job may call it (only one plans; the others wait for its row).
pub async fn plan(
    ctx: &BatchContext,
    metric_name: &str,
    request: &PlanRequest,
) -> Result<PlanRow, BatchError> {
    let metric = ctx.metric(metric_name)?;
    if request.chunks == 0 {
        return Err(BatchError::Usage("a plan needs at least one chunk".into()));
    }
    split::ensure_tables(ctx).await?;
    let db = ctx.database();
    let deadline = Instant::now() + request.wait;
    loop {
        if !request.plan_key.is_empty()
            && let Some(plan) =
                warehouse::run_log::plan_by_key(&ctx.client, db, &metric.name, &request.plan_key)
                    .await?
        {
            return Ok(plan);
        }
        match lease::acquire(&ctx.client, db, &metric.name, Duration::ZERO).await? {
            Ok(lease) => {
                let planned = plan_leased(ctx, &metric, request, &lease).await;
                return match planned {
                    Ok(Some(plan)) if plan.lease_holder == lease.holder() => {
                        lease.hand_over(request.lease_ttl).await?;
                        Ok(plan)
                    }
                    other => {
                        if let Err(e) = lease.release().await {
                            tracing::warn!(metric = %metric.name, error = %e, "cannot release the batch lease; it lapses by itself");
                        }
                        other?.ok_or_else(|| {
                            BatchError::Usage(format!(
                                "nothing to plan for {}: the range is empty",
                                metric.name
                            ))
                        })
                    }
                };
            }
            Err(other) => {
                if Instant::now() + Duration::from_secs(2) > deadline {
                    metrics::counter!(m::BATCH_LEASE_BUSY, "metric" => metric.name.clone())
                        .increment(1);
                    return Err(BatchError::Usage(format!(
                        "another run of {} holds its lease ({}, claimed at {} ms); try again when it finished",
                        metric.name, other.holder, other.claimed_ms
                    )));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The plan of `request` under `lease`: the one of its key if another
/// worker made it meanwhile, else a new one (`None`: empty range).
async fn plan_leased(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    request: &PlanRequest,
    lease: &Lease,
) -> Result<Option<PlanRow>, BatchError> {
    let db = ctx.database();
    if !request.plan_key.is_empty()
        && let Some(plan) =
            warehouse::run_log::plan_by_key(&ctx.client, db, &metric.name, &request.plan_key)
                .await?
    {
        return Ok(Some(plan));
    }
    let (kind, range) = match request.range {
        PlanRange::Scheduled => match scheduled_range(ctx, metric).await? {
            Ok(range) => (split::SCHEDULED, range),
            Err(reason) => {
                return Err(BatchError::Usage(format!(
                    "nothing to plan for {}: {reason}",
                    metric.name
                )));
            }
        },
        PlanRange::Backfill { from_ms, to_ms } => (
            split::BACKFILL,
            backfill_range(ctx, metric, from_ms, to_ms).await?,
        ),
    };
    if range.from >= range.to {
        return Ok(None);
    }
    let run_id = next_run_id(ctx, &metric.name).await?;
    let plan = plan_row(
        run_id,
        metric,
        kind,
        range,
        request.chunks,
        lease.holder(),
        request.lease_ttl,
        &request.plan_key,
    );
    split::insert_plan(ctx, &plan).await?;
    Ok(Some(plan))
}

/// The plan a worker or publisher acts on: the one of `plan_key`, else the
/// newest unpublished plan of the metric.
pub async fn find_plan(
    ctx: &BatchContext,
    metric: &str,
    plan_key: Option<&str>,
) -> Result<Option<PlanRow>, BatchError> {
    split::ensure_tables(ctx).await?;
    let db = ctx.database();
    Ok(match plan_key.filter(|k| !k.is_empty()) {
        Some(key) => warehouse::run_log::plan_by_key(&ctx.client, db, metric, key).await?,
        None => warehouse::run_log::newest_unpublished_plan(&ctx.client, db, metric).await?,
    })
}

/// What `strata batch chunk` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkReport {
    /// Computed now.
    Done(ChunkRow),
    /// An earlier worker did it.
    AlreadyDone(ChunkRow),
    /// The run is published already: nothing to do.
    RunPublished(u64),
}

/// `strata batch chunk --index I --of N`: computes chunk `index` of the
/// plan (see [`find_plan`]), which must have `of` chunks and still hold the
/// metric's lease (a worker renews it while it works). Retries a failing
/// attempt up to `batch.chunk_attempts` times.
pub async fn run_planned_chunk(
    ctx: &BatchContext,
    metric_name: &str,
    plan_key: Option<&str>,
    (index, of): (u32, u32),
    on_progress: &(dyn Fn(ChunkProgress<'_>) + Send + Sync),
) -> Result<ChunkReport, BatchError> {
    let metric = ctx.metric(metric_name)?;
    let db = ctx.database();
    let Some(plan) = find_plan(ctx, &metric.name, plan_key).await? else {
        return Err(BatchError::Usage(format!(
            "no planned run of {} to work on; run `strata batch plan` first",
            metric.name
        )));
    };
    if plan.chunk_count != of || index >= of {
        return Err(BatchError::Usage(format!(
            "run {} of {} is planned in {} chunks; this worker was started as chunk {index} of {of}",
            plan.run_id, metric.name, plan.chunk_count
        )));
    }
    if warehouse::run_log::is_published(&ctx.client, db, &metric.name, plan.run_id).await? {
        return Ok(ChunkReport::RunPublished(plan.run_id));
    }
    if let Some(done) = warehouse::run_log::done_chunks(&ctx.client, db, &metric.name, plan.run_id)
        .await?
        .into_iter()
        .find(|c| c.chunk_index == index)
    {
        return Ok(ChunkReport::AlreadyDone(done));
    }
    let ttl = Duration::from_millis(plan.lease_ttl_ms.max(1) as u64);
    let renew = || lease::renew_claim(&ctx.client, db, &metric.name, &plan.lease_holder, ttl);
    if !renew().await? {
        return Err(BatchError::Usage(format!(
            "run {} of {} is abandoned: its lease lapsed or another run took the metric; plan it again",
            plan.run_id, metric.name
        )));
    }
    // Keep the plan's lease alive while this chunk works.
    let renewer = {
        let (client, database, metric, holder) = (
            ctx.client.clone(),
            db.to_string(),
            metric.name.clone(),
            plan.lease_holder.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = lease::renew_claim(&client, &database, &metric, &holder, ttl).await
                {
                    tracing::warn!(metric = %metric, error = %e, "cannot renew the plan's lease");
                }
            }
        })
    };
    let worker =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let result = split::run_chunk(
        ctx,
        &metric,
        &plan,
        index,
        ctx.config.batch.chunk_attempts,
        &worker,
        on_progress,
    )
    .await;
    renewer.abort();
    Ok(ChunkReport::Done(result?))
}

/// `strata batch publish`: publishes the plan (see [`find_plan`]) once every
/// chunk is done, waiting up to `wait` for missing chunks (and, with a
/// key, for the plan to appear). Releases the plan's lease once published.
pub async fn publish_planned(
    ctx: &BatchContext,
    metric_name: &str,
    plan_key: Option<&str>,
    wait: Duration,
) -> Result<(PlanRow, Publication), BatchError> {
    let metric = ctx.metric(metric_name)?;
    let db = ctx.database();
    let deadline = Instant::now() + wait;
    let pause = Duration::from_secs(5);
    loop {
        let Some(plan) = find_plan(ctx, &metric.name, plan_key).await? else {
            if Instant::now() + pause <= deadline {
                tokio::time::sleep(pause).await;
                continue;
            }
            return Err(BatchError::Usage(format!(
                "no planned run of {} to publish",
                metric.name
            )));
        };
        let outcome = split::publish(ctx, &metric, &plan, &plan.lease_holder).await?;
        // Workers still busy: wait for them while the plan is alive.
        if matches!(outcome, Publication::MissingChunks(_))
            && Instant::now() + pause <= deadline
            && lease::held_by(&ctx.client, db, &metric.name, &plan.lease_holder).await?
        {
            tokio::time::sleep(pause).await;
            continue;
        }
        if matches!(outcome, Publication::Published { .. })
            && let Some(claimed_ms) =
                lease::claimed_at(&ctx.client, db, &metric.name, &plan.lease_holder).await?
        {
            lease::release_claim(
                &ctx.client,
                db,
                &metric.name,
                &plan.lease_holder,
                claimed_ms,
            )
            .await?;
        }
        return Ok((plan, outcome));
    }
}
