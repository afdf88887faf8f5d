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
//! are read as view rows and merged here ([`merge`]).

mod sql;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::window::boundary_at_or_before;
use strata_schemas::{Accumulator, MetricDef};
use strata_warehouse::merged::reads;
use strata_warehouse::run_log::QueryState;
use strata_warehouse::{self as warehouse, View, ViewRow};

use crate::error::ApiError;
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

async fn timed_view(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    view: View,
    from: i64,
    to: i64,
) -> Result<Vec<ViewRow>, ApiError> {
    let started = Instant::now();
    let rows = warehouse::read_view(client, database, metric, view, from, to).await?;
    metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => Source::of(view).name())
        .record(started.elapsed().as_secs_f64());
    Ok(rows)
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

/// Answers a checked query.
pub async fn answer(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
    last: &LastStates,
) -> Result<Answer, ApiError> {
    if !metric.plan.has_sketches() {
        let (_in_flight, n) = InFlight::enter(&last.in_flight);
        let guess = last.get(&metric.name).filter(|_| n <= SPECULATE_UP_TO);
        let (now, answer) = match guess {
            Some(guess) => {
                let (now, speculative) = tokio::join!(
                    query_state(client, database, metric),
                    sql::answer(client, database, metric, spec, guess)
                );
                let now = now?;
                let answer = if now.batch == guess {
                    speculative?
                } else {
                    tracing::debug!(
                        metric = %metric.name,
                        "batch state changed since the last query; querying again"
                    );
                    sql::answer(client, database, metric, spec, now.batch).await?
                };
                (now, answer)
            }
            None => {
                let now = query_state(client, database, metric).await?;
                let answer = sql::answer(client, database, metric, spec, now.batch).await?;
                (now, answer)
            }
        };
        last.set(&metric.name, now.batch);
        return Ok(Answer {
            speed_watermark: now.speed_watermark,
            ..answer
        });
    }
    let QueryState {
        batch,
        speed_watermark,
    } = query_state(client, database, metric).await?;
    let views = reads(batch, spec.from_ms, spec.to_ms);
    let read = |i: usize| {
        let part = views.get(i).copied();
        async move {
            let Some((view, from, to)) = part else {
                return Ok(Vec::new());
            };
            let rows = timed_view(client, database, metric, view, from, to).await?;
            Ok::<_, ApiError>(
                rows.into_iter()
                    .map(|row| (Source::of(view), row))
                    .collect::<Vec<_>>(),
            )
        }
    };
    // The (at most two) reads are independent: in parallel, the answer
    // waits for the slower one only.
    let (mut parts, second) = tokio::try_join!(read(0), read(1))?;
    parts.extend(second);
    let mut answer = merge(metric, spec, parts);
    answer.batch_watermark = batch.map(|b| b.1);
    answer.speed_watermark = speed_watermark;
    Ok(answer)
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

/// Filters, re-keys, re-aggregates, ranks and limits view rows.
pub fn merge(metric: &MetricDef, spec: &QuerySpec, parts: Vec<(Source, ViewRow)>) -> Answer {
    let mut buckets: BTreeMap<(i64, String), Bucket> = BTreeMap::new();
    'rows: for (source, row) in parts {
        for (index, accepted) in &spec.filters {
            let value = &row.key[*index];
            if !accepted.iter().any(|a| json_eq(value, a)) {
                continue 'rows;
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
        let text = serde_json::to_string(&key).unwrap_or_default();
        match buckets.entry((start, text)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let b = e.get_mut();
                b.acc.merge(&row.acc);
                b.end_ms = b.end_ms.max(end);
                b.is_final &= row.is_final;
                if source == Source::Speed {
                    b.source = Source::Speed;
                }
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Bucket {
                    end_ms: end,
                    key,
                    acc: row.acc,
                    source,
                    is_final: row.is_final,
                });
            }
        }
    }
    let mut rows: Vec<AnswerRow> = buckets
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
    let truncated = rows.len() > spec.limit;
    rows.truncate(spec.limit);
    Answer {
        batch_watermark: None,
        speed_watermark: None,
        rows,
        truncated,
    }
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
