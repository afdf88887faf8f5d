//! The merged answer: batch view before the batch watermark, speed view
//! from it on, re-keyed and re-aggregated with the shared merge code.
//!
//! The watermark `W` and the run id `P` of the newest published batch run
//! are read once per query. Windows starting before `W` come from run `P`
//! of the batch view, windows starting at or after `W` from the speed view:
//! every window exactly once, whatever the batch layer publishes meanwhile
//! (a newer run only becomes visible to the next query). The split and the
//! deduplication are `strata_warehouse::merged`'s, for both paths: metrics
//! whose states add are merged and ranked by ClickHouse ([`sql`]); sketches
//! are streamed as view rows and merged here, holding only the answer's
//! buckets.

mod sql;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::config::ServingSettings;
use strata_schemas::window::boundary_at_or_before;
use strata_schemas::{Accumulator, MetricDef};
use strata_warehouse::merged::reads;
use strata_warehouse::run_log::QueryState;
use strata_warehouse::{self as warehouse, View, ViewRow, WarehouseError};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::limits::Queries;
use crate::metrics as m;
use crate::query::QuerySpec;

pub use strata_warehouse::merged::Source;

/// One row of an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerRow {
    /// Window (or granularity bucket) start, epoch ms.
    pub start_ms: i64,
    /// Its end.
    pub end_ms: i64,
    /// Values of the kept group-by fields, in config order. Shared: the
    /// rows of one group in different windows hold the same values.
    pub key: Arc<[Json]>,
    /// One value per output column of the metric.
    pub values: Vec<Json>,
    /// Where it comes from (`speed` if any part of a bucket does).
    pub source: Source,
    /// Whether it can no longer change.
    pub is_final: bool,
}

/// A whole answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Batch watermark used (`None`: no batch run published yet).
    pub batch_watermark: Option<i64>,
    /// Speed watermark (min over partitions), if the speed layer reported one.
    pub speed_watermark: Option<i64>,
    /// Rows ordered by start, then key.
    pub rows: Vec<AnswerRow>,
    /// Whether `limit` cut rows off.
    pub truncated: bool,
}

/// The newest published batch run and the speed watermark, read once per
/// query (see [`warehouse::run_log::query_state`]).
pub async fn query_state(
    client: &Client,
    database: &str,
    metric: &MetricDef,
) -> Result<QueryState, ApiError> {
    Ok(warehouse::run_log::query_state(client, database, &metric.name).await?)
}

/// A query speculates (see [`LastStates`]) only while at most this many
/// SQL-path queries are in flight, itself included. A speculating query
/// holds two ClickHouse query slots at once: under load that pushes the
/// server into its `max_concurrent_queries` queue (seen at 64 clients),
/// while the state round trip is a negligible part of a loaded query's
/// latency anyway.
const SPECULATE_UP_TO: usize = 4;

/// The batch state the previous query of each metric read. While the API is
/// not loaded, the next query starts its data query with it *while* reading
/// the current state, and uses that answer only if the state read is the
/// same; otherwise (a run was published in between, which is rare) it
/// queries again with the state read. Every answer is computed with the
/// state read for it, but the state round trip leaves the critical path.
#[derive(Debug, Default)]
pub struct LastStates {
    states: Mutex<HashMap<String, Option<(u64, i64)>>>,
    in_flight: AtomicUsize,
}

impl LastStates {
    fn get(&self, metric: &str) -> Option<Option<(u64, i64)>> {
        let guard = self.states.lock().unwrap_or_else(|p| p.into_inner());
        guard.get(metric).copied()
    }

    fn set(&self, metric: &str, batch: Option<(u64, i64)>) {
        let mut guard = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get(metric) != Some(&batch) {
            guard.insert(metric.to_string(), batch);
        }
    }
}

/// Counts a query in flight until dropped (also when the request times out).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Enters; returns the guard and how many were in flight with this one.
    fn enter(counter: &'a AtomicUsize) -> (InFlight<'a>, usize) {
        let n = counter.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        (InFlight(counter), n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

/// The 4xx of an answer larger than `serving.max_rows` when the client did
/// not ask for a `limit`.
pub fn too_many_rows(max_rows: usize) -> ApiError {
    ApiError::bad(format!(
        "the answer has more than serving.max_rows ({max_rows}) rows; narrow the range (from, to), \
         use a coarser granularity, filter or group by fewer fields, or pass limit=<n> for the first n rows"
    ))
}

/// Answers a checked query. Every ClickHouse query runs under an id of
/// `queries` (killed if the request ends early); an answer of more than
/// `serving.max_rows` rows is refused unless the client asked for a
/// `limit`, one whose sketch states need more than
/// `serving.query_max_merge_bytes` is refused.
pub async fn answer(
    queries: &Queries,
    database: &str,
    metric: &Arc<MetricDef>,
    spec: &QuerySpec,
    last: &LastStates,
    settings: &ServingSettings,
) -> Result<Answer, ApiError> {
    let max_rows = settings.max_rows;
    let answer = if metric.plan.has_sketches() {
        let budget = usize::try_from(settings.query_max_merge_bytes).unwrap_or(usize::MAX);
        sketch_answer(queries, database, metric, spec, max_rows, budget).await?
    } else {
        sql_answer(queries, database, metric, spec, last).await?
    };
    if answer.truncated && spec.refuse_over_limit {
        return Err(too_many_rows(max_rows));
    }
    Ok(answer)
}

async fn sql_answer(
    queries: &Queries,
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
    last: &LastStates,
) -> Result<Answer, ApiError> {
    let (_in_flight, n) = InFlight::enter(&last.in_flight);
    let guess = last.get(&metric.name).filter(|_| n <= SPECULATE_UP_TO);
    let (now, answer) = match guess {
        Some(guess) => {
            let (state_client, data_client) = (queries.client("state"), queries.client("data"));
            let (now, speculative) = tokio::join!(
                query_state(&state_client, database, metric),
                sql::answer(&data_client, database, metric, spec, guess)
            );
            let now = now?;
            let answer = if now.batch == guess {
                speculative?
            } else {
                tracing::debug!(
                    metric = %metric.name,
                    "batch state changed since the last query; querying again"
                );
                sql::answer(
                    &queries.client("data-again"),
                    database,
                    metric,
                    spec,
                    now.batch,
                )
                .await?
            };
            (now, answer)
        }
        None => {
            let now = query_state(&queries.client("state"), database, metric).await?;
            let answer =
                sql::answer(&queries.client("data"), database, metric, spec, now.batch).await?;
            (now, answer)
        }
    };
    last.set(&metric.name, now.batch);
    Ok(Answer {
        speed_watermark: now.speed_watermark,
        ..answer
    })
}

/// Chunks of view rows in flight between the readers and the merge: with
/// the client's chunks (a few KB to a few hundred KB) this bounds what a
/// query holds besides its buckets, however many rows it reads.
const STREAM_CHUNKS: usize = 8;

/// What the readers of a sketch answer hand the merge.
enum Piece {
    /// Bytes of `JSONEachRow` of read `i` (lines may span chunks).
    Chunk(usize, Bytes),
    /// Read `i` is complete.
    End(usize),
}

/// Sketch metrics: both views are streamed from ClickHouse and merged into
/// the answer's buckets on a blocking thread as they arrive. Nothing holds
/// the whole read: memory is the answer's buckets (at most `limit + 1`, or
/// `serving.max_rows` before ranking with `top`) plus a few chunks, and the
/// async workers only move bytes, so `serving.query_timeout` can always
/// answer (dropping the readers ends the merge at its next chunk).
async fn sketch_answer(
    queries: &Queries,
    database: &str,
    metric: &Arc<MetricDef>,
    spec: &QuerySpec,
    max_rows: usize,
    budget: usize,
) -> Result<Answer, ApiError> {
    let QueryState {
        batch,
        speed_watermark,
    } = query_state(&queries.client("state"), database, metric).await?;
    let views = reads(batch, spec.from_ms, spec.to_ms);
    let parts: Vec<View> = views.iter().map(|(v, _, _)| *v).collect();
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let merge = tokio::task::spawn_blocking({
        let metric = metric.clone();
        let spec = spec.clone();
        move || merge_stream(&metric, &spec, (max_rows, budget), rx, &parts)
    });
    let read = |i: usize| {
        let part = views.get(i).copied();
        let tx = tx.clone();
        async move {
            let Some((view, from, to)) = part else {
                return Ok(());
            };
            let started = Instant::now();
            let client = queries.client(Source::of(view).name());
            stream_view(&client, database, metric, view, from, to, i, &tx).await?;
            metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => Source::of(view).name())
                .record(started.elapsed().as_secs_f64());
            Ok::<_, ApiError>(())
        }
    };
    // The (at most two) reads are independent: in parallel, the answer
    // waits for the slower one only.
    let reading = tokio::try_join!(read(0), read(1));
    drop(tx);
    let merged = merge
        .await
        .map_err(|e| ApiError::Internal(format!("merging the answer: {e}")))?;
    // A refusal of the merge (too many rows) explains a read cut short.
    let mut answer = match (merged, reading) {
        (Err(MergeError::Refused(e)), _) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(MergeError::Stopped), Ok(_)) => {
            return Err(ApiError::Internal(
                "the merge stopped before the reads ended".into(),
            ));
        }
        (Ok(answer), Ok(_)) => answer,
    };
    answer.batch_watermark = batch.map(|b| b.1);
    answer.speed_watermark = speed_watermark;
    Ok(answer)
}

/// Streams the current rows of `view` to the merge as read `part`. Stops
/// quietly when the merge has stopped (it says why).
#[allow(clippy::too_many_arguments)]
async fn stream_view(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    view: View,
    from: i64,
    to: i64,
    part: usize,
    tx: &mpsc::Sender<Piece>,
) -> Result<(), ApiError> {
    let sql = warehouse::view_sql(database, metric, view, from, to);
    let mut query = client
        .query(&sql)
        .with_setting("output_format_json_quote_64bit_integers", "0");
    if let View::Batch { .. } = view {
        query = query.bind(metric.name.as_str());
    }
    let operation = format!("read {} view of {}", Source::of(view).name(), metric.name);
    let failed = |source| WarehouseError::ClickHouse {
        operation: operation.clone(),
        source,
    };
    let mut cursor = query.fetch_bytes("JSONEachRow").map_err(failed)?;
    while let Some(chunk) = cursor.next().await.map_err(failed)? {
        if tx.send(Piece::Chunk(part, chunk)).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Piece::End(part)).await;
    Ok(())
}

/// Why a streamed merge ended without an answer.
enum MergeError {
    /// The answer is refused (the client's error).
    Refused(ApiError),
    /// The readers went away first (an error or the request was dropped).
    Stopped,
}

/// Merges the rows of the reads of `views` (one per part) as they come.
fn merge_stream(
    metric: &MetricDef,
    spec: &QuerySpec,
    (max_rows, budget): (usize, usize),
    mut rx: mpsc::Receiver<Piece>,
    views: &[View],
) -> Result<Answer, MergeError> {
    let mut buckets = Buckets::new(metric, spec, Some(max_rows));
    buckets.budget = Some(budget);
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); views.len()];
    let mut ended = 0;
    let refused = MergeError::Refused;
    while let Some(piece) = rx.blocking_recv() {
        let (i, last) = match piece {
            Piece::Chunk(i, bytes) => {
                pending[i].extend_from_slice(&bytes);
                (i, false)
            }
            Piece::End(i) => {
                ended += 1;
                (i, true)
            }
        };
        let buffer = &mut pending[i];
        // Whole lines only, unless the read is complete.
        let complete = if last {
            buffer.len()
        } else {
            buffer
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1)
        };
        for line in buffer[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let row = view_row(metric, views[i], line).map_err(|e| refused(e.into()))?;
            buckets.add(Source::of(views[i]), row).map_err(refused)?;
        }
        buffer.drain(..complete);
    }
    if ended < views.len() {
        return Err(MergeError::Stopped);
    }
    Ok(buckets.finish())
}

/// One `JSONEachRow` line of a `view_sql` read as a [`ViewRow`].
fn view_row(metric: &MetricDef, view: View, line: &[u8]) -> Result<ViewRow, WarehouseError> {
    match serde_json::from_slice(line) {
        Ok(Json::Object(row)) => warehouse::view_row(metric, view, row),
        Ok(other) => Err(WarehouseError::Decode {
            operation: format!("read {} view of {}", Source::of(view).name(), metric.name),
            message: format!("expected a JSON object per row, got {other}"),
        }),
        // A line that is not JSON is ClickHouse's error text after the
        // rows it had sent (say, max_execution_time reached).
        Err(e) => Err(WarehouseError::Decode {
            operation: format!("read {} view of {}", Source::of(view).name(), metric.name),
            message: format!("{e}: {}", String::from_utf8_lossy(line)),
        }),
    }
}

fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::String(x), Json::Number(_)) => x.parse::<f64>().ok() == b.as_f64(),
        _ => a == b,
    }
}

struct Bucket {
    end_ms: i64,
    key: Vec<Json>,
    acc: Accumulator,
    source: Source,
    is_final: bool,
}

/// The buckets of an answer, filled row by row: filters, re-keying and
/// re-aggregation. Without `top` only the `limit + 1` first buckets (in
/// answer order) are kept, which is all the answer needs: the bucket pushed
/// out is the last one, behind `limit + 1` that stay, so it can never be
/// among the first again, and every bucket kept holds all of its rows (the
/// cutoff it sets only spares re-creating it). With `top`, every bucket of a
/// window is needed to rank it: at most `max_groups` are kept, more is
/// refused.
struct Buckets<'a> {
    metric: &'a MetricDef,
    spec: &'a QuerySpec,
    map: BTreeMap<(i64, String), Bucket>,
    cutoff: Option<(i64, String)>,
    max_groups: Option<usize>,
    /// Approximate bytes the buckets hold, and the most they may.
    bytes: usize,
    budget: Option<usize>,
}

/// What a bucket costs besides its states and key text: the map entry, the
/// bucket, the key values.
const BUCKET_OVERHEAD_BYTES: usize = 160;

fn bucket_bytes(key_text: &str, acc: &Accumulator) -> usize {
    BUCKET_OVERHEAD_BYTES + 2 * key_text.len() + acc.mem_bytes()
}

impl<'a> Buckets<'a> {
    fn new(metric: &'a MetricDef, spec: &'a QuerySpec, max_groups: Option<usize>) -> Self {
        Buckets {
            metric,
            spec,
            map: BTreeMap::new(),
            cutoff: None,
            max_groups,
            bytes: 0,
            budget: None,
        }
    }

    fn add(&mut self, source: Source, row: ViewRow) -> Result<(), ApiError> {
        let spec = self.spec;
        for (index, accepted) in &spec.filters {
            let value = &row.key[*index];
            if !accepted.iter().any(|a| json_eq(value, a)) {
                return Ok(());
            }
        }
        let (start, end) = match spec.granularity_ms {
            Some(g) => {
                let s = boundary_at_or_before(row.start_ms, g);
                (s, s + g)
            }
            None => (row.start_ms, row.end_ms),
        };
        let key: Vec<Json> = spec.group_by.iter().map(|i| row.key[*i].clone()).collect();
        let id = (start, serde_json::to_string(&key).unwrap_or_default());
        if self.cutoff.as_ref().is_some_and(|c| id >= *c) {
            return Ok(());
        }
        match self.map.entry(id) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let b = e.get_mut();
                let before = b.acc.mem_bytes();
                b.acc.merge(&row.acc);
                self.bytes = (self.bytes + b.acc.mem_bytes()).saturating_sub(before);
                b.end_ms = b.end_ms.max(end);
                b.is_final &= row.is_final;
                if source == Source::Speed {
                    b.source = Source::Speed;
                }
                return self.check_budget();
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                self.bytes += bucket_bytes(&e.key().1, &row.acc);
                e.insert(Bucket {
                    end_ms: end,
                    key,
                    acc: row.acc,
                    source,
                    is_final: row.is_final,
                });
            }
        }
        if spec.top.is_none() {
            if spec.refuse_over_limit && self.map.len() > spec.limit {
                // Refused anyway: no need to read on.
                return Err(too_many_rows(spec.limit));
            }
            if self.map.len() > spec.limit + 1
                && let Some((id, bucket)) = self.map.pop_last()
            {
                self.bytes = self.bytes.saturating_sub(bucket_bytes(&id.1, &bucket.acc));
                self.cutoff = Some(id);
            }
        } else if let Some(max) = self.max_groups
            && self.map.len() > max
        {
            return Err(ApiError::bad(format!(
                "ranking needs every group of each window, and this query has more than \
                 serving.max_rows ({max}) of them; narrow the range (from, to), use a coarser \
                 granularity or filter the groups"
            )));
        }
        self.check_budget()
    }

    fn check_budget(&self) -> Result<(), ApiError> {
        match self.budget {
            Some(budget) if self.bytes > budget => Err(ApiError::bad(format!(
                "the answer's sketch states need more than serving.query_max_merge_bytes ({budget} bytes); \
                 narrow the range (from, to), filter or group by fewer fields, or pass a smaller limit"
            ))),
            _ => Ok(()),
        }
    }

    /// Finalizes, ranks and limits.
    fn finish(self) -> Answer {
        let (metric, spec) = (self.metric, self.spec);
        let cut = self.cutoff.is_some();
        let mut rows: Vec<AnswerRow> = self
            .map
            .into_iter()
            .map(|((start, _), b)| AnswerRow {
                start_ms: start,
                end_ms: b.end_ms,
                values: metric.plan.finalize(&b.acc),
                key: b.key.into(),
                source: b.source,
                is_final: b.is_final,
            })
            .collect();
        if let (Some(top), Some(order)) = (spec.top, spec.order_by) {
            let mut ranked: Vec<AnswerRow> = Vec::with_capacity(rows.len());
            let mut i = 0;
            while i < rows.len() {
                let start = rows[i].start_ms;
                let mut j = i;
                while j < rows.len() && rows[j].start_ms == start {
                    j += 1;
                }
                // Rows of a window come in key order (the buckets are ordered by
                // key text), so a stable sort by value breaks ties by key.
                let mut window: Vec<AnswerRow> = rows[i..j].to_vec();
                window.sort_by(|a, b| compare_desc(&a.values[order], &b.values[order]));
                window.truncate(top);
                ranked.extend(window);
                i = j;
            }
            rows = ranked;
        }
        let truncated = cut || rows.len() > spec.limit;
        rows.truncate(spec.limit);
        Answer {
            batch_watermark: None,
            speed_watermark: None,
            rows,
            truncated,
        }
    }
}

/// Filters, re-keys, re-aggregates, ranks and limits view rows held in
/// memory: the reference the streamed merge is tested against.
#[cfg(test)]
fn merge(metric: &MetricDef, spec: &QuerySpec, parts: Vec<(Source, ViewRow)>) -> Answer {
    let mut spec = spec.clone();
    // The caller holds every row already: nothing to refuse early.
    spec.refuse_over_limit = false;
    let mut buckets = Buckets::new(metric, &spec, None);
    for (source, row) in parts {
        // Only refusals fail, and none is asked for.
        let _ = buckets.add(source, row);
    }
    buckets.finish()
}

/// Descending by number, nulls last.
fn compare_desc(a: &Json, b: &Json) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Format;
    use strata_schemas::sketch::DistinctSketch;

    /// `active_users_5m` of the reference config.
    fn metric() -> Arc<MetricDef> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
        let config = strata_schemas::config::load_with_env(&path, |_| None).unwrap();
        let metric = config
            .metrics
            .iter()
            .find(|m| m.name == "active_users_5m")
            .unwrap();
        metric.clone()
    }

    fn spec(group_by: Vec<usize>, limit: usize, refuse: bool) -> QuerySpec {
        QuerySpec {
            from_ms: 0,
            to_ms: i64::MAX,
            group_by,
            filters: Vec::new(),
            granularity_ms: None,
            top: None,
            order_by: None,
            limit,
            refuse_over_limit: refuse,
            format: Format::Json,
        }
    }

    /// 600 partial rows over 20 windows, 3 countries, 2 sources and
    /// partitions, in a scrambled order (the order ClickHouse's GROUP BY
    /// hands them over is arbitrary).
    fn rows(metric: &MetricDef) -> Vec<(Source, ViewRow)> {
        let mut out = Vec::new();
        for i in 0..600u64 {
            // A permutation of 0..600 (7 is prime to 600).
            let n = (i * 7 + 13) % 600;
            let window = (n % 20) as i64;
            let country = ["DE", "FR", "JP"][(n / 20 % 3) as usize];
            let mut acc = metric.plan.new_accumulator();
            acc.events = n;
            acc.distinct[0] =
                DistinctSketch::from_columns(vec![n % 37, 1000 + n % 5], Vec::new()).unwrap();
            let source = if n % 2 == 0 {
                Source::Batch
            } else {
                Source::Speed
            };
            out.push((
                source,
                ViewRow {
                    start_ms: window * 60_000,
                    end_ms: window * 60_000 + 300_000,
                    key: vec![Json::from(country)],
                    acc,
                    is_final: n % 3 != 0,
                },
            ));
        }
        out
    }

    /// Keeping only the first `limit + 1` buckets as rows arrive gives
    /// exactly the first `limit` rows of the whole answer, whatever the
    /// order of the rows.
    #[test]
    fn a_bounded_merge_keeps_exactly_the_first_rows() {
        let metric = metric();
        for group_by in [vec![0], vec![]] {
            let all = merge(
                &metric,
                &spec(group_by.clone(), usize::MAX - 1, false),
                rows(&metric),
            );
            assert!(!all.truncated);
            for limit in [1, 7, 20, 59, 60, 61, 100] {
                let spec = spec(group_by.clone(), limit, false);
                let mut buckets = Buckets::new(&metric, &spec, None);
                let mut held = 0;
                for (source, row) in rows(&metric) {
                    buckets.add(source, row).unwrap();
                    held = held.max(buckets.map.len());
                }
                assert!(held <= limit + 1, "{held} buckets held for limit {limit}");
                let bounded = buckets.finish();
                let want: Vec<AnswerRow> = all.rows.iter().take(limit).cloned().collect();
                assert_eq!(bounded.rows, want, "limit {limit}, group_by {group_by:?}");
                assert_eq!(bounded.truncated, all.rows.len() > limit, "limit {limit}");
            }
        }
    }

    /// The sketch states a query merges are bounded in bytes, whatever
    /// its row limit.
    #[test]
    fn sketch_states_over_the_budget_are_refused() {
        let metric = metric();
        let spec = spec(vec![0], 1000, false);
        let mut buckets = Buckets::new(&metric, &spec, Some(1000));
        buckets.budget = Some(8 * 1024);
        let mut result = Ok(());
        let mut added = 0;
        for (source, row) in rows(&metric) {
            result = buckets.add(source, row);
            if result.is_err() {
                break;
            }
            added += 1;
        }
        let message = result
            .expect_err("60 buckets of sketches exceed 8 KiB")
            .to_string();
        assert!(added > 0 && added < 60, "{added}");
        assert!(buckets.bytes > 8 * 1024);
        assert!(
            message.starts_with(
                "the answer's sketch states need more than serving.query_max_merge_bytes (8192 bytes)"
            ),
            "{message}"
        );
    }

    /// Without an explicit limit, the merge stops at the first bucket past
    /// serving.max_rows and says so, naming the setting.
    #[test]
    fn an_answer_over_max_rows_is_refused_while_reading() {
        let metric = metric();
        let spec = spec(vec![0], 59, true);
        let mut buckets = Buckets::new(&metric, &spec, Some(59));
        let mut refused = None;
        for (i, (source, row)) in rows(&metric).into_iter().enumerate() {
            if let Err(e) = buckets.add(source, row) {
                refused = Some((i, e.to_string()));
                break;
            }
        }
        let (at, message) = refused.expect("60 buckets are more than 59");
        assert!(at < 600, "{at}");
        assert_eq!(buckets.map.len(), 60);
        assert!(
            message.starts_with("the answer has more than serving.max_rows (59) rows"),
            "{message}"
        );
    }
}
