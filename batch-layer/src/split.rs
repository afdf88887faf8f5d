//! A run split into chunks: planned once, computed independently (threads
//! of one process, or pods of a Kubernetes Indexed Job), published together.
//!
//! 1. **Plan**: one row in `strata_batch_plans` fixes the run id, the range
//!    `[from, to)` of window starts, the archive horizon, the number of
//!    chunks `N`, the published run it builds on and the lease claim that
//!    keeps other runs of the metric out. The chunk bounds follow from
//!    these alone ([`chunk_bounds`]), so every worker computes the same.
//! 2. **Chunks**: chunk `i` recomputes the windows starting in its
//!    sub-range, inserts them under the plan's run id with retraction rows
//!    for the windows of the published run in that sub-range that no
//!    longer exist, then records one row in `strata_batch_chunks`. A chunk
//!    that fails is retried ([`run_chunk`]); a chunk's rows are invisible
//!    until the run publishes, so a retry that rewrites them is harmless.
//! 3. **Publish**: one `published` row in `strata_batch_runs`, written only
//!    when every chunk index has its row, the published run is still the
//!    one the plan builds on and the plan still holds the lease
//!    ([`publish`]). A run with a missing chunk is never published:
//!    readers keep seeing the previous run.
//!
//! Fixed windows: chunk bounds lie on window boundaries, and a chunk reads
//! the events `[chunk_from, events_end(chunk_to))`. Sessions are never cut:
//! a session starts at event `s` iff its key has no event in `(s − gap,
//! s)`, so a chunk reading from `chunk_from − gap` (never before the run's
//! `from`) tells every start at or after `chunk_from` exactly as the whole
//! run would; sessions it sees starting before `chunk_from` belong to the
//! previous chunk and are dropped. It then reads on past `chunk_to` until
//! none of its sessions is still open, or up to the horizon, so its sessions
//! end where the whole run's do; what it reads on keeps only the events of
//! the keys whose sessions are open, so a chunk's memory is its own range's
//! events plus those keys' later ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value as Json;
use strata_schemas::{MetricDef, Value, Window};
use strata_warehouse::rows::BatchRow;
use strata_warehouse::run_log::{ChunkRow, PlanRow};
use strata_warehouse::{self as warehouse, BATCH_CHUNKS_TABLE, BATCH_PLANS_TABLE, View};

use crate::BatchError;
use crate::compute::{EventFrame, FixedRecompute, Recomputed, recompute};
use crate::lake::{DataFile, Lake};
use crate::metrics as m;
use crate::run::{BatchContext, typed_key};

/// Plan kind of a run of `strata batch run`: it advances the watermark.
pub const SCHEDULED: &str = "scheduled";
/// Plan kind of `strata batch backfill`: below the watermark, which stays.
pub const BACKFILL: &str = "backfill";

/// Rows per INSERT into the batch view.
const INSERT_ROWS: usize = 20_000;

/// Chunks of `chunk_ms` over `[from, to)`: at least one.
pub fn chunk_count_for(from: i64, to: i64, chunk_ms: i64) -> u32 {
    let span = i128::from(to.saturating_sub(from).max(0));
    let chunk = i128::from(chunk_ms.max(1));
    u32::try_from((span + chunk - 1) / chunk)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The `[from, to)` of each of `count` chunks of a run's range: even cuts,
/// moved down to a window boundary for fixed windows (so a chunk holds
/// whole windows; a chunk can be empty when the range has fewer windows
/// than chunks). Depends only on its arguments, so every worker of a plan
/// computes the same bounds.
pub fn chunk_bounds(metric: &MetricDef, from: i64, to: i64, count: u32) -> Vec<(i64, i64)> {
    let count = count.max(1);
    let span = i128::from(to.saturating_sub(from).max(0));
    let mut cuts = Vec::with_capacity(count as usize + 1);
    cuts.push(from);
    for k in 1..count {
        let even = from + (span * i128::from(k) / i128::from(count)) as i64;
        let cut = metric.window.align_start(even).clamp(from, to);
        cuts.push(cut.max(*cuts.last().unwrap_or(&from)));
    }
    cuts.push(to.max(from));
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Progress of a split run, for the CLI's per-chunk lines and for callers
/// that act on failures.
#[derive(Debug)]
pub enum ChunkProgress<'a> {
    /// A chunk's rows are all in (or were, by an earlier attempt of the run).
    Done {
        /// The chunk's row.
        chunk: &'a ChunkRow,
        /// Whether an earlier attempt of the run did it.
        resumed: bool,
        /// Chunks done so far in this run.
        done: usize,
        /// Chunks of the run.
        total: usize,
    },
    /// An attempt at a chunk failed.
    Failed {
        /// The chunk.
        index: u32,
        /// Which attempt (from 1).
        attempt: u32,
        /// Why.
        error: &'a BatchError,
        /// Whether another attempt follows.
        retrying: bool,
    },
}

/// Inserts a plan row.
pub async fn insert_plan(ctx: &BatchContext, plan: &PlanRow) -> Result<(), BatchError> {
    warehouse::insert_rows(
        &ctx.client,
        ctx.database(),
        BATCH_PLANS_TABLE,
        &[plan.to_json()],
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// The tables of split runs, created here for databases initialised before
/// they existed (two processes may race: the loser finds them there).
pub async fn ensure_tables(ctx: &BatchContext) -> Result<(), BatchError> {
    for spec in [
        warehouse::batch_plans_table_spec(),
        warehouse::batch_chunks_table_spec(),
    ] {
        if warehouse::run_log::table_exists(&ctx.client, ctx.database(), &spec.name).await? {
            continue;
        }
        // On a cluster: replicated to every node, created ON CLUSTER.
        let cluster = ctx.config.clickhouse.cluster.as_deref();
        for statement in spec.statements(ctx.database(), cluster) {
            let created = warehouse::execute(&ctx.client, &statement.sql).await;
            if let Err(e) = created
                && !warehouse::run_log::table_exists(&ctx.client, ctx.database(), &statement.name)
                    .await?
            {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// What one chunk computed and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChunkOutcome {
    events_read: u64,
    rows_written: u64,
    open_session_ms: Option<i64>,
}

/// Computes chunk `index` of `plan` and inserts its rows (one attempt).
async fn compute_chunk(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    plan: &PlanRow,
    index: u32,
) -> Result<ChunkOutcome, BatchError> {
    if index >= plan.chunk_count.max(1) {
        return Err(BatchError::Usage(format!(
            "run {} of {} has {} chunks; there is no chunk {index}",
            plan.run_id, plan.metric, plan.chunk_count
        )));
    }
    let bounds = chunk_bounds(metric, plan.from_ms, plan.to_ms, plan.chunk_count);
    let (chunk_from, chunk_to) = bounds[index as usize];
    let recomputed = recompute_chunk(
        ctx,
        metric,
        (plan.from_ms, plan.to_ms),
        plan.horizon_ms,
        plan.chunk_count,
        index,
    )
    .await?;
    let scheduled = plan.kind == SCHEDULED;
    // A scheduled run leaves sessions from the first one still open at the
    // horizon to the speed view (the watermark stops there; it never moves
    // back below the published one).
    let keep_below = match recomputed.first_open_session_ms {
        Some(open) if scheduled => open.max(plan.based_on.map_or(i64::MIN, |p| p.1)),
        _ => i64::MAX,
    };
    let windows: Vec<_> = recomputed
        .windows
        .into_iter()
        .filter(|w| w.window.start_ms < keep_below)
        .collect();
    let now = warehouse::now_datetime();
    let mut rows = Vec::with_capacity(windows.len());
    // (window start, typed key) of every window this chunk writes.
    let mut present: HashSet<(i64, Vec<u8>)> = HashSet::with_capacity(windows.len());
    for w in &windows {
        let key: Vec<Json> = w.key.iter().map(Value::to_json).collect();
        present.insert((w.window.start_ms, typed_key(metric, &key)));
        let row = BatchRow {
            window: w.window,
            key,
            state: &w.acc,
            run_id: plan.run_id,
            retracted: false,
        };
        rows.push(row.to_json(metric, &now));
    }
    // Windows of the published run in this chunk's sub-range that no
    // longer exist (sessions merged by late events) are retracted.
    if let Some((published_run, _)) = plan.based_on {
        let empty = metric.plan.new_accumulator();
        let old_rows = warehouse::read_view(
            &ctx.client,
            ctx.database(),
            metric,
            View::Batch {
                run_id: published_run,
            },
            chunk_from,
            chunk_to.min(keep_below),
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
                run_id: plan.run_id,
                retracted: true,
            };
            rows.push(row.to_json(metric, &now));
        }
    }
    let table = warehouse::batch_table(&metric.name);
    for block in rows.chunks(INSERT_ROWS) {
        warehouse::insert_rows(
            &ctx.client,
            ctx.database(),
            &table,
            block,
            Duration::from_secs(120),
        )
        .await?;
    }
    metrics::counter!(m::BATCH_ROWS_READ, "metric" => metric.name.clone())
        .increment(recomputed.events_read);
    metrics::counter!(m::BATCH_ROWS_WRITTEN, "metric" => metric.name.clone())
        .increment(rows.len() as u64);
    Ok(ChunkOutcome {
        events_read: recomputed.events_read,
        rows_written: rows.len() as u64,
        open_session_ms: recomputed.first_open_session_ms,
    })
}

/// Recomputes, without writing anything, chunk `index` of a run of
/// `count` chunks over the window starts `[from, to)`, from the archived
/// events before `horizon`: what one chunk of a plan holds in memory and
/// inserts (the split-run benchmark measures it alone).
pub async fn recompute_chunk(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    (from, to): (i64, i64),
    horizon: i64,
    count: u32,
    index: u32,
) -> Result<Recomputed, BatchError> {
    let bounds = chunk_bounds(metric, from, to, count);
    let Some(&(chunk_from, chunk_to)) = bounds.get(index as usize) else {
        return Err(BatchError::Usage(format!(
            "a run of {count} chunks has no chunk {index}"
        )));
    };
    if chunk_from >= chunk_to {
        return Ok(Recomputed::default());
    }
    Ok(match metric.window.session_gap_ms() {
        None => {
            let events_to = metric.window.events_end(chunk_to, horizon);
            recompute_fixed_by_hour(ctx, metric, (chunk_from, events_to), (chunk_from, chunk_to))
                .await?
        }
        Some(gap) => {
            // The first chunk starts where the whole run starts (which
            // `align_from` put before any session spanning it).
            let events_from = if index == 0 {
                chunk_from
            } else {
                chunk_from.saturating_sub(gap).max(from)
            };
            let mut events_to = chunk_to.saturating_add(gap).min(horizon);
            let mut frames = if events_to > events_from {
                read_frames(ctx, metric, events_from, events_to, None).await?
            } else {
                Vec::new()
            };
            loop {
                let (back, recomputed) = recompute_off_thread(
                    metric,
                    frames,
                    events_from,
                    events_to,
                    chunk_from,
                    chunk_to,
                )
                .await?;
                frames = back;
                // A session of this chunk may still grow: read on (the
                // span doubles each time) until none can, or the horizon,
                // keeping only the events of the keys whose sessions are
                // open: the others' sessions in this chunk are final, and
                // their later events start sessions of later chunks.
                if recomputed.first_open_session_ms.is_some() && events_to < horizon {
                    let next = events_to
                        .saturating_add((events_to - events_from).max(gap))
                        .min(horizon);
                    let open_keys = Arc::new(recomputed.open_keys);
                    frames
                        .extend(read_frames(ctx, metric, events_to, next, Some(open_keys)).await?);
                    tracing::debug!(metric = %metric.name, chunk = index, events_to = next, "sessions still open: reading on");
                    events_to = next;
                    continue;
                }
                break recomputed;
            }
        }
    })
}

/// [`recompute`] on a blocking thread; hands the frames back.
async fn recompute_off_thread(
    metric: &Arc<MetricDef>,
    frames: Vec<EventFrame>,
    events_from: i64,
    events_to: i64,
    windows_from: i64,
    windows_to: i64,
) -> Result<(Vec<EventFrame>, Recomputed), BatchError> {
    let metric = metric.clone();
    tokio::task::spawn_blocking(move || {
        let recomputed = recompute(
            &metric,
            &frames,
            events_from,
            events_to,
            windows_from,
            windows_to,
        );
        (frames, recomputed)
    })
    .await
    .map_err(|e| BatchError::Usage(format!("recompute task failed: {e}")))
}

/// A tumbling or hopping chunk, an hour directory's files at a time: each
/// hour's files are decoded (up to 8 downloaded and decoded at once, the
/// next hour's while this one aggregates), aggregated into the chunk's
/// states ([`FixedRecompute`]) and dropped, so a chunk holds one hour's
/// columns and its states rather than every column of its range. The
/// archive writes each event under its event time's hour, so the hours
/// hold different windows (a hopping window across an hour's end is held
/// twice until the end).
async fn recompute_fixed_by_hour(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    (from_ms, to_ms): (i64, i64),
    (windows_from, windows_to): (i64, i64),
) -> Result<Recomputed, BatchError> {
    let files = committed_files(ctx, metric, from_ms, to_ms).await?;
    let mut decoded = futures::stream::iter(files.into_iter().map(|f| {
        let hour = hour_dir(f.path.as_ref());
        // Spawned, so downloads and decoding go on while an hour
        // aggregates; aborted if the chunk fails first.
        let task = AbortOnDrop(tokio::spawn(read_file(
            ctx.lake.clone(),
            metric.clone(),
            f,
            (from_ms, to_ms),
            None,
        )));
        async move { (hour, task.await) }
    }))
    .buffered(8);
    let mut fixed = FixedRecompute::new(from_ms, to_ms, windows_from, windows_to);
    let mut hour_frames: Vec<EventFrame> = Vec::new();
    let mut current_hour: Option<String> = None;
    while let Some((hour, frame)) = decoded.next().await {
        let frame = frame.map_err(|e| BatchError::Usage(format!("read task failed: {e}")))??;
        if current_hour.as_ref() != Some(&hour) && !hour_frames.is_empty() {
            fixed = add_off_thread(metric, fixed, std::mem::take(&mut hour_frames)).await?;
        }
        current_hour = Some(hour);
        if frame.height() > 0 {
            hour_frames.push(frame);
        }
    }
    if !hour_frames.is_empty() {
        fixed = add_off_thread(metric, fixed, hour_frames).await?;
    }
    tokio::task::spawn_blocking(move || fixed.finish())
        .await
        .map_err(|e| BatchError::Usage(format!("recompute task failed: {e}")))
}

/// A spawned task that is aborted when dropped: a chunk that fails on one
/// file stops the downloads it started for the others, rather than leaving
/// them running beside its retry.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The directory of an archive file: its event hour's (`lake::hour_of`
/// gives the hour of a time).
fn hour_dir(path: &str) -> String {
    path.rsplit_once('/')
        .map_or_else(String::new, |(dir, _)| dir.to_string())
}

/// [`FixedRecompute::add`] on a blocking thread.
async fn add_off_thread(
    metric: &Arc<MetricDef>,
    mut fixed: FixedRecompute,
    frames: Vec<EventFrame>,
) -> Result<FixedRecompute, BatchError> {
    let metric = metric.clone();
    tokio::task::spawn_blocking(move || {
        fixed.add(&metric, &frames);
        fixed
    })
    .await
    .map_err(|e| BatchError::Usage(format!("recompute task failed: {e}")))
}

/// Reads, with Polars, the events of the metric's source with time in
/// `[from_ms, to_ms)`: only the committed files of the hours overlapping
/// the range are downloaded (up to 8 at once), only the metric's columns
/// decoded, and rows outside the range (and, given `keys`, rows of other
/// group keys) dropped as each file is decoded, so what stays in memory is
/// the range's events, never the run's.
async fn read_frames(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    from_ms: i64,
    to_ms: i64,
    keys: Option<Arc<HashSet<Vec<u8>>>>,
) -> Result<Vec<EventFrame>, BatchError> {
    let files = committed_files(ctx, metric, from_ms, to_ms).await?;
    let mut pending = futures::stream::iter(files.into_iter().map(|f| {
        read_file(
            ctx.lake.clone(),
            metric.clone(),
            f,
            (from_ms, to_ms),
            keys.clone(),
        )
    }))
    .buffered(8);
    let mut frames = Vec::new();
    while let Some(frame) = pending.next().await {
        let frame = frame?;
        if frame.height() > 0 {
            frames.push(frame);
        }
    }
    Ok(frames)
}

/// The committed files of the metric's source in the hours overlapping
/// `[from_ms, to_ms)`, in path (so hour) order.
async fn committed_files(
    ctx: &BatchContext,
    metric: &MetricDef,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<DataFile>, BatchError> {
    let source = &metric.source.name;
    let progress = ctx.lake.all_progress(source).await?;
    ctx.lake
        .committed_files(source, from_ms, to_ms, &progress)
        .await
}

/// Downloads one file and decodes the metric's columns of its rows with
/// time in `[from_ms, to_ms)` (and, given `keys`, of those keys only) on a
/// blocking thread.
async fn read_file(
    lake: Lake,
    metric: Arc<MetricDef>,
    file: DataFile,
    (from_ms, to_ms): (i64, i64),
    keys: Option<Arc<HashSet<Vec<u8>>>>,
) -> Result<EventFrame, BatchError> {
    let bytes = lake.get(&file.path).await?;
    tokio::task::spawn_blocking(move || {
        let path: &str = file.path.as_ref();
        let mut frame = EventFrame::read_range(&metric, path, bytes, Some((from_ms, to_ms)))?;
        if let Some(keys) = keys {
            frame
                .retain_keys(&metric, &keys)
                .map_err(|e| BatchError::Read {
                    path: path.to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok::<_, BatchError>(frame)
    })
    .await
    .map_err(|e| BatchError::Usage(format!("read task failed: {e}")))?
}

/// Computes chunk `index` of `plan` with up to `attempts` attempts and
/// records it done. Failures are logged, counted and reported to
/// `on_progress`; the last one is returned.
pub async fn run_chunk(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    plan: &PlanRow,
    index: u32,
    attempts: u32,
    worker: &str,
    on_progress: &(dyn Fn(ChunkProgress<'_>) + Send + Sync),
) -> Result<ChunkRow, BatchError> {
    let bounds = chunk_bounds(metric, plan.from_ms, plan.to_ms, plan.chunk_count);
    let (from_ms, to_ms) = bounds.get(index as usize).copied().unwrap_or((0, 0));
    let attempts = attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        match compute_chunk(ctx, metric, plan, index).await {
            Ok(outcome) => {
                metrics::histogram!(m::BATCH_CHUNK_DURATION, "metric" => metric.name.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::BATCH_CHUNKS_DONE, "metric" => metric.name.clone())
                    .increment(1);
                let row = ChunkRow {
                    run_id: plan.run_id,
                    metric: metric.name.clone(),
                    chunk_index: index,
                    from_ms,
                    to_ms,
                    events_read: outcome.events_read,
                    rows_written: outcome.rows_written,
                    open_session_ms: outcome.open_session_ms.unwrap_or(i64::MAX),
                    attempts: attempt,
                    worker: worker.to_string(),
                };
                warehouse::insert_rows(
                    &ctx.client,
                    ctx.database(),
                    BATCH_CHUNKS_TABLE,
                    &[row.to_json()],
                    Duration::from_secs(30),
                )
                .await?;
                tracing::info!(
                    metric = %metric.name,
                    run_id = plan.run_id,
                    chunk = index,
                    from_ms,
                    to_ms,
                    events_read = row.events_read,
                    rows_written = row.rows_written,
                    attempts = attempt,
                    seconds = started.elapsed().as_secs_f64(),
                    "batch chunk done"
                );
                return Ok(row);
            }
            Err(error) => {
                let retrying = attempt < attempts;
                let outcome = if retrying { "retried" } else { "failed" };
                metrics::counter!(m::BATCH_CHUNK_FAILURES, "metric" => metric.name.clone(), "outcome" => outcome)
                    .increment(1);
                tracing::warn!(
                    metric = %metric.name,
                    run_id = plan.run_id,
                    chunk = index,
                    attempt,
                    attempts,
                    error = %error,
                    retrying,
                    "batch chunk attempt failed"
                );
                on_progress(ChunkProgress::Failed {
                    index,
                    attempt,
                    error: &error,
                    retrying,
                });
                if !retrying {
                    return Err(error);
                }
                // Transient faults (a store or server restarting) get time.
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            }
        }
    }
}

/// Computes every chunk of `plan` not done yet, `parallelism` at once,
/// each on its own blocking thread while it recomputes. Returns the done
/// chunks by index; the first chunk that fails every attempt fails the
/// whole call (the run then stays unpublished).
pub async fn run_chunks_here(
    ctx: &BatchContext,
    metric: &Arc<MetricDef>,
    plan: &PlanRow,
    worker: &str,
    on_progress: &(dyn Fn(ChunkProgress<'_>) + Send + Sync),
) -> Result<Vec<ChunkRow>, BatchError> {
    let total = plan.chunk_count as usize;
    let mut done =
        warehouse::run_log::done_chunks(&ctx.client, ctx.database(), &metric.name, plan.run_id)
            .await?;
    for (i, chunk) in done.iter().enumerate() {
        on_progress(ChunkProgress::Done {
            chunk,
            resumed: true,
            done: i + 1,
            total,
        });
    }
    let have: HashSet<u32> = done.iter().map(|c| c.chunk_index).collect();
    let todo: Vec<u32> = (0..plan.chunk_count)
        .filter(|i| !have.contains(i))
        .collect();
    let attempts = ctx.config.batch.chunk_attempts;
    let parallelism = ctx.config.batch.parallelism.max(1);
    let mut running = futures::stream::iter(
        todo.into_iter()
            .map(|index| run_chunk(ctx, metric, plan, index, attempts, worker, on_progress)),
    )
    .buffer_unordered(parallelism);
    while let Some(chunk) = running.next().await {
        let chunk = chunk?;
        done.push(chunk);
        on_progress(ChunkProgress::Done {
            chunk: done.last().expect("just pushed"),
            resumed: false,
            done: done.len(),
            total,
        });
    }
    done.sort_by_key(|c| c.chunk_index);
    Ok(done)
}

/// What [`publish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publication {
    /// The run is published with this watermark.
    Published {
        /// The published watermark.
        watermark_ms: i64,
        /// End of the window starts the run stands for.
        to_ms: i64,
        /// Events read by its chunks.
        events_read: u64,
        /// Rows its chunks wrote.
        rows_written: u64,
    },
    /// It was published before (a second publisher, or a retried one).
    AlreadyPublished,
    /// These chunk indexes have no done row: not published.
    MissingChunks(Vec<u32>),
    /// Another run published meanwhile, or the plan lost its lease: the
    /// run's rows stay invisible (the reason).
    Superseded(String),
}

/// Publishes `plan` if every chunk is done, the published run is still the
/// one it builds on, and `lease_holder` (the process that computed it, or
/// the plan's own claim for workers elsewhere) still holds the metric.
pub async fn publish(
    ctx: &BatchContext,
    metric: &MetricDef,
    plan: &PlanRow,
    lease_holder: &str,
) -> Result<Publication, BatchError> {
    let db = ctx.database();
    if warehouse::run_log::is_published(&ctx.client, db, &metric.name, plan.run_id).await? {
        return Ok(Publication::AlreadyPublished);
    }
    let chunks =
        warehouse::run_log::done_chunks(&ctx.client, db, &metric.name, plan.run_id).await?;
    let have: HashSet<u32> = chunks.iter().map(|c| c.chunk_index).collect();
    let missing: Vec<u32> = (0..plan.chunk_count)
        .filter(|i| !have.contains(i))
        .collect();
    if !missing.is_empty() {
        return Ok(Publication::MissingChunks(missing));
    }
    // Publish only on top of the run the chunks were computed from, and
    // only while the plan holds the lease: otherwise their retractions are
    // relative to the wrong run and the watermark may be older than the
    // one published.
    let current = warehouse::published_batch(&ctx.client, db, &metric.name).await?;
    if current != plan.based_on {
        metrics::counter!(m::BATCH_RUNS_SUPERSEDED, "metric" => metric.name.clone()).increment(1);
        return Ok(Publication::Superseded(format!(
            "computed on top of run {:?}, but run {:?} is published now",
            plan.based_on.map(|p| p.0),
            current.map(|p| p.0)
        )));
    }
    if !crate::lease::held_by(&ctx.client, db, &metric.name, lease_holder).await? {
        metrics::counter!(m::BATCH_RUNS_SUPERSEDED, "metric" => metric.name.clone()).increment(1);
        return Ok(Publication::Superseded(
            "the plan's lease lapsed or was taken by another run".into(),
        ));
    }
    let based_on_watermark = plan.based_on.map_or(i64::MIN, |p| p.1);
    let (watermark, upper) = if plan.kind == SCHEDULED {
        // Sessions still open at the horizon hold the watermark back (fixed
        // windows report none); it never moves back.
        let open = chunks
            .iter()
            .map(|c| c.open_session_ms)
            .min()
            .unwrap_or(i64::MAX);
        let w = plan.to_ms.min(open).max(based_on_watermark);
        (w, w)
    } else {
        (based_on_watermark, plan.to_ms)
    };
    let events_read = chunks.iter().map(|c| c.events_read).sum();
    let rows_written = chunks.iter().map(|c| c.rows_written).sum();
    crate::run::commit_run(
        ctx,
        metric,
        plan,
        (plan.from_ms, upper),
        watermark,
        events_read,
        rows_written,
    )
    .await?;
    Ok(Publication::Published {
        watermark_ms: watermark,
        to_ms: upper,
        events_read,
        rows_written,
    })
}
