//! The merged answer: batch view before the batch watermark, speed view
//! from it on, re-keyed and re-aggregated with the shared merge code.
//!
//! The watermark `W` and the run id `P` of the newest published batch run
//! are read once per query. Windows starting before `W` come from run `P`
//! of the batch view, windows starting at or after `W` from the speed view:
//! every window exactly once, whatever the batch layer publishes meanwhile
//! (a newer run only becomes visible to the next query).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::{Accumulator, FieldType, MetricDef, WindowKind};
use strata_warehouse::{self as warehouse, View, ViewRow};

use crate::error::ApiError;
use crate::metrics as m;
use crate::query::QuerySpec;

/// Which view a row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The batch view (always final).
    Batch,
    /// The speed view.
    Speed,
}

impl Source {
    /// `batch` / `speed`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Batch => "batch",
            Source::Speed => "speed",
        }
    }
}

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

/// The batch watermark and run of a metric, read once per query.
pub async fn batch_state(
    client: &Client,
    database: &str,
    metric: &MetricDef,
) -> Result<Option<(u64, i64)>, ApiError> {
    Ok(warehouse::published_batch(client, database, &metric.name).await?)
}

/// The speed layer's watermark for a metric: min over its partitions.
pub async fn speed_watermark(
    client: &Client,
    database: &str,
    metric: &MetricDef,
) -> Result<Option<i64>, ApiError> {
    let rows = warehouse::query_rows(
        client,
        &format!(
            "SELECT kafka_partition, argMax(watermark_ms, version) AS w FROM {} WHERE metric = ? AND layer = 'speed' GROUP BY kafka_partition",
            warehouse::qualified(database, warehouse::WATERMARKS_TABLE)
        ),
        &[&metric.name],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get("w").and_then(warehouse::json_i64))
        .filter(|w| *w > i64::MIN)
        .min())
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
    let label = match view {
        View::Batch { .. } => "batch",
        View::Speed => "speed",
    };
    metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => label)
        .record(started.elapsed().as_secs_f64());
    Ok(rows)
}

/// What a query reads before the views: the newest published batch run
/// `(run_id, watermark_ms)` and the speed watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryState {
    /// The newest published batch run and its watermark, if any.
    pub batch: Option<(u64, i64)>,
    /// Min over the speed layer's partitions, if it reported any.
    pub speed_watermark: Option<i64>,
}

/// [`batch_state`] and [`speed_watermark`] in one round trip. The run id
/// and the watermark come from one aggregation over one read of the run
/// log, so they always belong to the same run.
///
/// They are not folded into the data query as scalar subqueries: ClickHouse
/// 18.16 evaluates every occurrence of a scalar subquery separately (checked
/// with `(SELECT rand())` twice), so the batch half and the speed half could
/// see different watermarks if a run were published in between, and a
/// window would be read twice or not at all.
pub async fn query_state(
    client: &Client,
    database: &str,
    metric: &MetricDef,
) -> Result<QueryState, ApiError> {
    // Both halves cast every column to the same type, so UNION ALL needs
    // no type unification on any server version.
    let sql = format!(
        "SELECT toUInt8(0) AS part, toUInt64(count()) AS n, toUInt64(max(run_id)) AS run, toInt64(argMax(watermark_ms, run_id)) AS w \
         FROM {} WHERE metric = ? AND status = 'published' \
         UNION ALL SELECT toUInt8(1) AS part, toUInt64(1) AS n, toUInt64(0) AS run, toInt64(argMax(watermark_ms, version)) AS w \
         FROM {} WHERE metric = ? AND layer = 'speed' GROUP BY kafka_partition",
        warehouse::qualified(database, warehouse::BATCH_RUNS_TABLE),
        warehouse::qualified(database, warehouse::WATERMARKS_TABLE),
    );
    let rows = warehouse::query_rows(client, &sql, &[&metric.name, &metric.name]).await?;
    let mut state = QueryState {
        batch: None,
        speed_watermark: None,
    };
    for row in &rows {
        let field = |name: &str| row.get(name).and_then(warehouse::json_i64);
        match (field("part"), field("n"), field("w")) {
            (Some(0), Some(n), Some(w)) if n > 0 => {
                let run = row.get("run").and_then(warehouse::json_u64);
                state.batch = run.map(|run| (run, w));
            }
            // As `speed_watermark`: partitions without a watermark yet
            // (i64::MIN) do not hold the minimum down.
            (Some(1), _, Some(w)) if w > i64::MIN => {
                state.speed_watermark = Some(state.speed_watermark.map_or(w, |s| s.min(w)));
            }
            _ => {}
        }
    }
    Ok(state)
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
                    answer_in_sql(client, database, metric, spec, guess)
                );
                let now = now?;
                let answer = if now.batch == guess {
                    speculative?
                } else {
                    tracing::debug!(
                        metric = %metric.name,
                        "batch state changed since the last query; querying again"
                    );
                    answer_in_sql(client, database, metric, spec, now.batch).await?
                };
                (now, answer)
            }
            None => {
                let now = query_state(client, database, metric).await?;
                let answer = answer_in_sql(client, database, metric, spec, now.batch).await?;
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
    let boundary = batch.map_or(i64::MIN, |b| b.1);
    let batch_part = async {
        match batch {
            Some((run_id, w)) if spec.from_ms < w => {
                let view = View::Batch { run_id };
                timed_view(
                    client,
                    database,
                    metric,
                    view,
                    spec.from_ms,
                    spec.to_ms.min(w),
                )
                .await
            }
            _ => Ok(Vec::new()),
        }
    };
    let speed_from = spec.from_ms.max(boundary);
    let speed_part = async {
        if speed_from < spec.to_ms {
            timed_view(
                client,
                database,
                metric,
                View::Speed,
                speed_from,
                spec.to_ms,
            )
            .await
        } else {
            Ok(Vec::new())
        }
    };
    // The two halves are independent reads: in parallel, the answer waits
    // for the slower one only.
    let (batch_rows, speed_rows) = tokio::try_join!(batch_part, speed_part)?;
    let parts: Vec<(Source, ViewRow)> = batch_rows
        .into_iter()
        .map(|row| (Source::Batch, row))
        .chain(speed_rows.into_iter().map(|row| (Source::Speed, row)))
        .collect();
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
                let s = row.start_ms - row.start_ms.rem_euclid(g);
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

/// The ClickHouse type of a group-by column in the SQL path's `RowBinary`
/// answer: the stored column's own type. (Computed columns are cast
/// explicitly in the SQL, so the byte layout never depends on a server
/// version's type inference.)
#[derive(Clone, Copy, Debug)]
enum Wire {
    Int64,
    Float64,
    UInt8,
    String,
}

impl Wire {
    /// How a stored group-by column travels (its own type: no cast needed).
    fn of(ty: FieldType) -> Wire {
        match ty {
            FieldType::String => Wire::String,
            FieldType::Int | FieldType::Timestamp => Wire::Int64,
            FieldType::Float => Wire::Float64,
            FieldType::Bool => Wire::UInt8,
        }
    }
}

/// A reader over `RowBinary` bytes: little-endian fixed-width numbers,
/// strings as a LEB128 length and the bytes.
struct RowBinary<'a> {
    data: &'a [u8],
}

impl<'a> RowBinary<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.data.split_first_chunk::<N>() else {
            return Err(format!(
                "the answer ends inside a {N}-byte value ({} bytes left)",
                self.data.len()
            ));
        };
        self.data = rest;
        Ok(*head)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.take().map(i64::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, String> {
        self.take().map(f64::from_le_bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        self.take::<1>().map(|[b]| b)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let mut len: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= self.data.len())
            .ok_or_else(|| format!("a string of {len} bytes is longer than the answer"))?;
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(head)
    }

    /// Skips a value of type `wire`.
    fn skip(&mut self, wire: Wire) -> Result<(), String> {
        match wire {
            Wire::String => self.bytes().map(drop),
            Wire::Int64 | Wire::Float64 => self.take::<8>().map(drop),
            Wire::UInt8 => self.take::<1>().map(drop),
        }
    }

    /// A group-by value as the JSON the API answers with.
    fn json(&mut self, wire: Wire) -> Result<Json, String> {
        Ok(match wire {
            Wire::String => Json::String(String::from_utf8_lossy(self.bytes()?).into_owned()),
            Wire::Int64 => Json::from(self.i64()?),
            Wire::UInt8 => Json::from(self.u8()?),
            Wire::Float64 => float_key(self.f64()?),
        })
    }
}

/// A `Float64` group-by value as JSON. ClickHouse's text formats print
/// integral floats without a fraction, so answers always carried them as
/// JSON integers; kept so that switching the wire format changed no answer.
fn float_key(v: f64) -> Json {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Json::from(v as i64)
    } else {
        Json::from(v)
    }
}

/// The same answer as [`merge`], computed by ClickHouse, for metrics whose
/// states merge by arithmetic (count, sum, avg, min, max): only the final
/// rows travel. Partial states are merged in SQL exactly as
/// [`Accumulator::merge`] does (counts and sums add, min/max over partials
/// holding values) and finalized here with the shared `AggPlan::finalize`.
/// Filter values are bound parameters (strings) or re-printed parsed numbers.
///
/// The rows travel as `RowBinary` with every column cast to a fixed type:
/// for a day of minutes that is 40% of the bytes of `JSONEachRow`, and
/// decoding it builds no per-row maps (parsing JSON objects into maps
/// dominated the API's CPU time).
async fn answer_in_sql(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
    batch: Option<(u64, i64)>,
) -> Result<Answer, ApiError> {
    use strata_schemas::AggFunction;
    let boundary = batch.map_or(i64::MIN, |b| b.1);
    let groups: Vec<String> = metric
        .group_by
        .iter()
        .map(|g| format!("`{}`", g.name))
        .collect();
    let fields: Vec<String> = metric
        .plan
        .numeric_fields()
        .iter()
        .map(|f| f.name.clone())
        .collect();
    // Only the states the aggregations read travel through the query.
    let uses =
        |function: AggFunction, field: &str| {
            metric.plan.aggregations().iter().any(|a| {
                a.function == function && a.field.as_ref().is_some_and(|f| f.name == field)
            })
        };
    let needs_min: Vec<bool> = fields.iter().map(|f| uses(AggFunction::Min, f)).collect();
    let needs_max: Vec<bool> = fields.iter().map(|f| uses(AggFunction::Max, f)).collect();
    // Every answer bucket is one window of one full group key when no
    // group-by field is dropped and buckets are windows (no granularity, or
    // one window's length): then a batch row is already final, and only the
    // speed view's partitions need adding. Batch windows lie before the
    // watermark and speed windows from it on, so no bucket has both.
    let one_window_per_bucket = spec.group_by.len() == metric.group_by.len()
        && match (spec.granularity_ms, metric.window) {
            (None, _) => true,
            (Some(g), WindowKind::Tumbling { size }) => g == size.as_i64(),
            _ => false,
        };
    // With a granularity the bucket end is computed, so the stored window
    // ends are not read at all.
    let needs_end = spec.granularity_ms.is_none();
    let states = |version: &str| -> String {
        let mut cols = Vec::new();
        if needs_end {
            cols.push(format!("argMax(window_end_ms, {version}) AS __we"));
        }
        cols.push(format!("argMax(agg_events, {version}) AS __ev"));
        for (i, f) in fields.iter().enumerate() {
            for (part, name) in [
                ("count", "__c"),
                ("sum", "__s"),
                ("min", "__mn"),
                ("max", "__mx"),
            ] {
                if (part == "min" && !needs_min[i]) || (part == "max" && !needs_max[i]) {
                    continue;
                }
                cols.push(format!("argMax(`agg_{f}_{part}`, {version}) AS {name}{i}"));
            }
        }
        cols.join(", ")
    };
    // The answer's state columns, in decoding order.
    let mut columns = vec![(Total::Events, 0)];
    for i in 0..fields.len() {
        columns.push((Total::Count, i));
        columns.push((Total::Sum, i));
        if needs_min[i] {
            columns.push((Total::Min, i));
        }
        if needs_max[i] {
            columns.push((Total::Max, i));
        }
    }
    // Those columns cast to the decoded types, from one expression each.
    let totals = |expr: &dyn Fn(Total, usize) -> String| -> Vec<String> {
        columns
            .iter()
            .map(|(t, i)| format!("{}({}) AS {}", t.cast(), expr(*t, *i), t.name(*i)))
            .collect()
    };
    // Partial states of one bucket merge as `Accumulator::merge` does.
    let merged = |t: Total, i: usize| match t {
        Total::Events => "sum(__ev)".to_string(),
        Total::Count => format!("sum(__c{i})"),
        Total::Sum => format!("sum(__s{i})"),
        Total::Min => format!("minIf(__mn{i}, __c{i} > 0)"),
        Total::Max => format!("maxIf(__mx{i}, __c{i} > 0)"),
    };
    let (bucket, end) = match spec.granularity_ms {
        Some(g) => (
            format!("intDiv(window_start_ms, {g}) * {g}"),
            format!("__b + {g}"),
        ),
        None => ("window_start_ms".to_string(), "max(__we)".to_string()),
    };
    let kept: Vec<String> = spec.group_by.iter().map(|i| groups[*i].clone()).collect();
    let mut key = vec!["window_start_ms".to_string()];
    key.extend(groups.iter().cloned());
    let key = key.join(", ");
    let mut bucket_key = vec!["__b".to_string()];
    bucket_key.extend(kept.iter().cloned());
    let bucket_key = bucket_key.join(", ");
    // Filters restrict group-by columns, so they apply to the stored rows
    // before deduplication (which groups by the full key) and let
    // ClickHouse skip rows early. Values are bound or re-printed numbers.
    let mut filters = Vec::new();
    let mut filter_binds: Vec<String> = Vec::new();
    for (index, accepted) in &spec.filters {
        let mut values = Vec::new();
        for v in accepted {
            match v {
                Json::String(text) => {
                    values.push("?".to_string());
                    filter_binds.push(text.clone());
                }
                Json::Number(n) => values.push(n.to_string()),
                other => {
                    return Err(ApiError::Internal(format!(
                        "unexpected filter value {other}"
                    )));
                }
            }
        }
        filters.push(format!(
            " AND {} IN ({})",
            groups[*index],
            values.join(", ")
        ));
    }
    let filters = filters.concat();
    // Placeholders are positional: binds follow the SQL text.
    let mut parts = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some((run_id, w)) = batch
        && spec.from_ms < w
    {
        let source = format!(
            "FROM {} WHERE window_start_ms >= {} AND window_start_ms < {} \
             AND run_id IN (SELECT run_id FROM {} WHERE metric = ? AND status = 'published' AND run_id <= {run_id}){filters} \
             GROUP BY {key} HAVING __r = 0",
            warehouse::qualified(database, &warehouse::batch_table(&metric.name)),
            spec.from_ms,
            spec.to_ms.min(w),
            warehouse::qualified(database, warehouse::BATCH_RUNS_TABLE),
        );
        parts.push(if one_window_per_bucket {
            let stored = |t: Total, i: usize| {
                let column = match t {
                    Total::Events => "agg_events".to_string(),
                    Total::Count => format!("`agg_{}_count`", fields[i]),
                    Total::Sum => format!("`agg_{}_sum`", fields[i]),
                    Total::Min => format!("`agg_{}_min`", fields[i]),
                    Total::Max => format!("`agg_{}_max`", fields[i]),
                };
                format!("argMax({column}, run_id)")
            };
            let end = match spec.granularity_ms {
                Some(g) => format!("__b + {g}"),
                None => "argMax(window_end_ms, run_id)".to_string(),
            };
            format!(
                "SELECT toInt64({bucket}) AS __b, toInt64({end}) AS __e, {}, {}, argMax(retracted, run_id) AS __r, \
                 toUInt8(1) AS __final, toUInt8(0) AS __source {source}",
                kept.join(", "),
                totals(&stored).join(", "),
            )
        } else {
            format!(
                "SELECT {key}, {}, argMax(retracted, run_id) AS __r, toUInt8(1) AS __fin, toUInt8(0) AS __src {source}",
                states("run_id"),
            )
        });
        binds.push(metric.name.clone());
        binds.extend(filter_binds.iter().cloned());
    }
    let speed_from = spec.from_ms.max(boundary);
    if speed_from < spec.to_ms {
        let deduplicated = format!(
            "SELECT {key}, {}, argMax(retracted, version) AS __r, argMax(is_final, version) AS __fin, toUInt8(1) AS __src FROM {} \
             WHERE window_start_ms >= {speed_from} AND window_start_ms < {}{filters} GROUP BY {key}, kafka_partition HAVING __r = 0",
            states("version"),
            warehouse::qualified(database, &warehouse::speed_table(&metric.name)),
            spec.to_ms,
        );
        parts.push(if one_window_per_bucket {
            // Same columns as the batch half (`r` included: UNION ALL
            // matches by position).
            format!(
                "SELECT toInt64({bucket}) AS __b, toInt64({end}) AS __e, {}, {}, toUInt8(0) AS __r, \
                 toUInt8(min(__fin)) AS __final, toUInt8(1) AS __source FROM ({deduplicated}) GROUP BY {key}",
                kept.join(", "),
                totals(&merged).join(", "),
            )
        } else {
            deduplicated
        });
        binds.extend(filter_binds.iter().cloned());
    }
    let batch_watermark = batch.map(|b| b.1);
    if parts.is_empty() {
        return Ok(Answer {
            batch_watermark,
            speed_watermark: None,
            rows: Vec::new(),
            truncated: false,
        });
    }
    let union = parts.join(" UNION ALL ");
    // Column order here is the decoding order below.
    let (select, from) = if one_window_per_bucket {
        // The halves already hold final rows: only order and limit.
        let mut select = vec!["__b".to_string(), "__e".to_string()];
        select.extend(kept.iter().cloned());
        select.extend(columns.iter().map(|(t, i)| t.name(*i)));
        select.push("__final".into());
        select.push("__source".into());
        (select, format!("FROM ({union})"))
    } else {
        let mut select = vec![
            format!("toInt64({bucket}) AS __b"),
            format!("toInt64({end}) AS __e"),
        ];
        select.extend(kept.iter().cloned());
        select.extend(totals(&merged));
        select.push("toUInt8(min(__fin)) AS __final".into());
        select.push("toUInt8(max(__src)) AS __source".into());
        (select, format!("FROM ({union}) GROUP BY {bucket_key}"))
    };
    let mut order = vec!["__b".to_string()];
    let mut limit_by = String::new();
    if let (Some(top), Some(o)) = (spec.top, spec.order_by) {
        let column = &metric.plan.output_columns()[o];
        let a = &metric.plan.aggregations()[column.aggregation];
        let slot = a
            .field
            .as_ref()
            .and_then(|f| fields.iter().position(|n| n == &f.name));
        // Nulls last, ties in key order: as the Rust path ranks. Counts and
        // sums are never null, so they sort without the isNull key.
        let (rank, nullable) = match (a.function, slot) {
            (AggFunction::Sum, Some(i)) => (format!("__t_s{i}"), false),
            (AggFunction::Avg, Some(i)) => {
                (format!("if(__t_c{i} > 0, __t_s{i} / __t_c{i}, NULL)"), true)
            }
            (AggFunction::Min, Some(i)) => (format!("if(__t_c{i} > 0, __t_mn{i}, NULL)"), true),
            (AggFunction::Max, Some(i)) => (format!("if(__t_c{i} > 0, __t_mx{i}, NULL)"), true),
            _ => ("__t_events".to_string(), false),
        };
        if nullable {
            order.push(format!("isNull({rank})"));
        }
        order.push(format!("{rank} DESC"));
        limit_by = format!(" LIMIT {top} BY __b");
    }
    order.extend(kept.iter().cloned());
    let sql = format!(
        "SELECT {} {from} ORDER BY {}{limit_by} LIMIT {}",
        select.join(", "),
        order.join(", "),
        spec.limit + 1
    );
    let started = Instant::now();
    let bind_refs: Vec<&str> = binds.iter().map(String::as_str).collect();
    let bytes = warehouse::query_bytes(client, &sql, &bind_refs, "RowBinary").await?;
    metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => "merged")
        .record(started.elapsed().as_secs_f64());
    let layout = Layout {
        keys: spec
            .group_by
            .iter()
            .map(|i| Wire::of(metric.group_by[*i].ty))
            .collect(),
        needs_min,
        needs_max,
        lowest: spec
            .granularity_ms
            .map_or(spec.from_ms, |g| spec.from_ms - spec.from_ms.rem_euclid(g)),
        to_ms: spec.to_ms,
    };
    let mut reader = RowBinary { data: &bytes };
    let mut out = Vec::with_capacity((bytes.len() / layout.min_row_bytes()).min(spec.limit));
    let mut acc = metric.plan.new_accumulator();
    let mut keys = HashMap::new();
    let mut truncated = false;
    while !reader.data.is_empty() {
        if out.len() == spec.limit {
            // The query asks for one row more than the limit to tell.
            truncated = true;
            break;
        }
        let row = layout
            .read(&mut reader, metric, &mut acc, &mut keys)
            .map_err(|message| {
                ApiError::Warehouse(warehouse::WarehouseError::Decode {
                    operation: format!("merged query of {}", metric.name),
                    message,
                })
            })?;
        out.push(row);
    }
    Ok(Answer {
        batch_watermark,
        speed_watermark: None,
        rows: out,
        truncated,
    })
}

/// One state column of [`answer_in_sql`]'s answer.
#[derive(Clone, Copy)]
enum Total {
    Events,
    Count,
    Sum,
    Min,
    Max,
}

impl Total {
    /// Its column name; `i` is the numeric field's slot.
    fn name(self, i: usize) -> String {
        match self {
            Total::Events => "__t_events".to_string(),
            Total::Count => format!("__t_c{i}"),
            Total::Sum => format!("__t_s{i}"),
            Total::Min => format!("__t_mn{i}"),
            Total::Max => format!("__t_mx{i}"),
        }
    }

    /// The cast fixing its wire type.
    fn cast(self) -> &'static str {
        match self {
            Total::Events | Total::Count => "toUInt64",
            Total::Sum | Total::Min | Total::Max => "toFloat64",
        }
    }
}

/// The columns of one row of [`answer_in_sql`]'s answer, in SELECT order.
struct Layout {
    keys: Vec<Wire>,
    needs_min: Vec<bool>,
    needs_max: Vec<bool>,
    /// Lowest bucket start the query can return.
    lowest: i64,
    to_ms: i64,
}

impl Layout {
    /// The fewest bytes a row can take (empty strings), to size the rows
    /// vector without reallocating or grossly over-allocating.
    fn min_row_bytes(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|w| match w {
                Wire::String | Wire::UInt8 => 1,
                Wire::Int64 | Wire::Float64 => 8,
            })
            .sum();
        let states: usize = self
            .needs_min
            .iter()
            .zip(&self.needs_max)
            .map(|(mn, mx)| 16 + 8 * usize::from(*mn) + 8 * usize::from(*mx))
            .sum();
        // Bucket bounds, events, final and source flags.
        16 + keys + 8 + states + 2
    }

    /// Reads one row; `acc` is scratch space, overwritten (a row's
    /// states are only needed until finalized).
    ///
    /// A group's key is decoded once per answer: `keys` maps its bytes to
    /// the shared values, which saves most of the allocations of a row.
    fn read<'a>(
        &self,
        reader: &mut RowBinary<'a>,
        metric: &MetricDef,
        acc: &mut Accumulator,
        keys: &mut HashMap<&'a [u8], Arc<[Json]>>,
    ) -> Result<AnswerRow, String> {
        let start_ms = reader.i64()?;
        let end_ms = reader.i64()?;
        // A bucket outside the asked range means the bytes are not the rows
        // this query selects (say, a server error text mid-answer).
        if start_ms < self.lowest || start_ms >= self.to_ms {
            return Err(format!(
                "bucket start {start_ms} is outside the queried range"
            ));
        }
        let before = reader.data;
        for wire in &self.keys {
            reader.skip(*wire)?;
        }
        let raw = &before[..before.len() - reader.data.len()];
        let key = match keys.get(raw) {
            Some(key) => key.clone(),
            None => {
                let mut values = RowBinary { data: raw };
                let key = self
                    .keys
                    .iter()
                    .map(|wire| values.json(*wire))
                    .collect::<Result<Arc<[Json]>, String>>()?;
                keys.insert(raw, key.clone());
                key
            }
        };
        acc.events = reader.u64()?;
        for (i, state) in acc.numeric.iter_mut().enumerate() {
            state.count = reader.u64()?;
            state.sum = reader.f64()?;
            // States the aggregations do not read stay zero, as before.
            state.min = if self.needs_min[i] {
                reader.f64()?
            } else {
                0.0
            };
            state.max = if self.needs_max[i] {
                reader.f64()?
            } else {
                0.0
            };
        }
        let is_final = reader.u8()? == 1;
        let source = if reader.u8()? == 1 {
            Source::Speed
        } else {
            Source::Batch
        };
        Ok(AnswerRow {
            start_ms,
            end_ms,
            key,
            values: metric.plan.finalize(acc),
            source,
            is_final,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_binary_reads_numbers_and_long_strings() {
        let text = "x".repeat(300);
        let mut data = Vec::new();
        data.extend_from_slice(&(-5i64).to_le_bytes());
        data.extend_from_slice(&7u64.to_le_bytes());
        data.extend_from_slice(&2.5f64.to_le_bytes());
        data.push(1);
        // 300 = 0b1_0010_1100: LEB128 0xac 0x02.
        data.extend_from_slice(&[0xac, 0x02]);
        data.extend_from_slice(text.as_bytes());
        data.extend_from_slice(&3.0f64.to_le_bytes());
        let mut r = RowBinary { data: &data };
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.u64(), Ok(7));
        assert_eq!(r.f64(), Ok(2.5));
        assert_eq!(r.json(Wire::UInt8), Ok(Json::from(1)));
        assert_eq!(r.json(Wire::String), Ok(Json::from(text)));
        // Integral floats read back as JSONEachRow printed them.
        assert_eq!(r.json(Wire::Float64).map(|v| v.to_string()), Ok("3".into()));
        assert!(r.data.is_empty());
        assert!(r.u8().is_err(), "reading past the end fails");
        let short = [0x05, b'a'];
        assert!(RowBinary { data: &short }.bytes().is_err());
    }
}
