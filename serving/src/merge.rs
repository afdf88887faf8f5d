//! The merged answer: batch view before the batch watermark, speed view
//! from it on, re-keyed and re-aggregated with the shared merge code.
//!
//! The watermark `W` and the run id `P` of the newest published batch run
//! are read once per query. Windows starting before `W` come from run `P`
//! of the batch view, windows starting at or after `W` from the speed view:
//! every window exactly once, whatever the batch layer publishes meanwhile
//! (a newer run only becomes visible to the next query).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Instant;

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::warehouse::{self, View, ViewRow};
use strata_schemas::{Accumulator, MetricDef};

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
    /// Values of the kept group-by fields, in config order.
    pub key: Vec<Json>,
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

/// Answers a checked query.
pub async fn answer(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
) -> Result<Answer, ApiError> {
    let batch = batch_state(client, database, metric).await?;
    let speed_watermark = speed_watermark(client, database, metric).await?;
    if !metric.plan.has_sketches() {
        let mut answer = answer_in_sql(client, database, metric, spec, batch).await?;
        answer.speed_watermark = speed_watermark;
        return Ok(answer);
    }
    let boundary = batch.map_or(i64::MIN, |b| b.1);
    let mut parts: Vec<(Source, ViewRow)> = Vec::new();
    if let Some((run_id, w)) = batch
        && spec.from_ms < w
    {
        for row in timed_view(
            client,
            database,
            metric,
            View::Batch { run_id },
            spec.from_ms,
            spec.to_ms.min(w),
        )
        .await?
        {
            parts.push((Source::Batch, row));
        }
    }
    let speed_from = spec.from_ms.max(boundary);
    if speed_from < spec.to_ms {
        for row in timed_view(
            client,
            database,
            metric,
            View::Speed,
            speed_from,
            spec.to_ms,
        )
        .await?
        {
            parts.push((Source::Speed, row));
        }
    }
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
            key: b.key,
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

/// The same answer as [`merge`], computed by ClickHouse, for metrics whose
/// states merge by arithmetic (count, sum, avg, min, max): only the final
/// rows travel. Partial states are merged in SQL exactly as
/// [`Accumulator::merge`] does (counts and sums add, min/max over partials
/// holding values) and finalized here with the shared `AggPlan::finalize`.
/// Filter values are bound parameters (strings) or re-printed parsed numbers.
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
    let states = |version: &str| -> String {
        let mut cols = vec![
            format!("argMax(window_end_ms, {version}) AS we"),
            format!("argMax(agg_events, {version}) AS ev"),
        ];
        for (i, f) in fields.iter().enumerate() {
            for (part, name) in [("count", "c"), ("sum", "s"), ("min", "mn"), ("max", "mx")] {
                if (part == "min" && !needs_min[i]) || (part == "max" && !needs_max[i]) {
                    continue;
                }
                cols.push(format!("argMax(`agg_{f}_{part}`, {version}) AS {name}{i}"));
            }
        }
        cols.join(", ")
    };
    let mut key = vec!["window_start_ms".to_string()];
    key.extend(groups.iter().cloned());
    let key = key.join(", ");
    let mut parts = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some((run_id, w)) = batch
        && spec.from_ms < w
    {
        parts.push(format!(
            "SELECT {key}, {}, argMax(retracted, run_id) AS r, toUInt8(1) AS fin, toUInt8(0) AS src FROM {} \
             WHERE window_start_ms >= {} AND window_start_ms < {} AND run_id IN (SELECT run_id FROM {} WHERE metric = ? AND status = 'published' AND run_id <= {run_id}) \
             GROUP BY {key} HAVING r = 0",
            states("run_id"),
            warehouse::qualified(database, &warehouse::batch_table(&metric.name)),
            spec.from_ms,
            spec.to_ms.min(w),
            warehouse::qualified(database, warehouse::BATCH_RUNS_TABLE),
        ));
        binds.push(metric.name.clone());
    }
    let speed_from = spec.from_ms.max(boundary);
    if speed_from < spec.to_ms {
        parts.push(format!(
            "SELECT {key}, {}, argMax(retracted, version) AS r, argMax(is_final, version) AS fin, toUInt8(1) AS src FROM {} \
             WHERE window_start_ms >= {speed_from} AND window_start_ms < {} GROUP BY {key}, kafka_partition HAVING r = 0",
            states("version"),
            warehouse::qualified(database, &warehouse::speed_table(&metric.name)),
            spec.to_ms,
        ));
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
    let mut filters = Vec::new();
    for (index, accepted) in &spec.filters {
        let mut values = Vec::new();
        for v in accepted {
            match v {
                Json::String(text) => {
                    values.push("?".to_string());
                    binds.push(text.clone());
                }
                Json::Number(n) => values.push(n.to_string()),
                other => {
                    return Err(ApiError::Internal(format!(
                        "unexpected filter value {other}"
                    )));
                }
            }
        }
        filters.push(format!("{} IN ({})", groups[*index], values.join(", ")));
    }
    let (bucket, end) = match spec.granularity_ms {
        Some(g) => (
            format!("intDiv(window_start_ms, {g}) * {g}"),
            format!("b + {g}"),
        ),
        None => ("window_start_ms".to_string(), "max(we)".to_string()),
    };
    let kept: Vec<String> = spec.group_by.iter().map(|i| groups[*i].clone()).collect();
    let mut select = vec![format!("{bucket} AS b"), format!("{end} AS e")];
    select.extend(kept.iter().cloned());
    select.push("sum(ev) AS t_events".into());
    for i in 0..fields.len() {
        select.push(format!("sum(c{i}) AS t_c{i}"));
        select.push(format!("sum(s{i}) AS t_s{i}"));
        if needs_min[i] {
            select.push(format!("minIf(mn{i}, c{i} > 0) AS t_mn{i}"));
        }
        if needs_max[i] {
            select.push(format!("maxIf(mx{i}, c{i} > 0) AS t_mx{i}"));
        }
    }
    select.push("min(fin) AS t_final".into());
    select.push("max(src) AS t_source".into());
    let mut group_key = vec!["b".to_string()];
    group_key.extend(kept.iter().cloned());
    let mut order = vec!["b".to_string()];
    let mut limit_by = String::new();
    if let (Some(top), Some(o)) = (spec.top, spec.order_by) {
        let column = &metric.plan.output_columns()[o];
        let a = &metric.plan.aggregations()[column.aggregation];
        let slot = a
            .field
            .as_ref()
            .and_then(|f| fields.iter().position(|n| n == &f.name));
        let rank = match (a.function, slot) {
            (AggFunction::Sum, Some(i)) => format!("t_s{i}"),
            (AggFunction::Avg, Some(i)) => format!("if(t_c{i} > 0, t_s{i} / t_c{i}, NULL)"),
            (AggFunction::Min, Some(i)) => format!("if(t_c{i} > 0, t_mn{i}, NULL)"),
            (AggFunction::Max, Some(i)) => format!("if(t_c{i} > 0, t_mx{i}, NULL)"),
            _ => "t_events".to_string(),
        };
        // Nulls last, ties in key order: as the Rust path ranks.
        order.push(format!("isNull({rank})"));
        order.push(format!("{rank} DESC"));
        limit_by = format!(" LIMIT {top} BY b");
    }
    order.extend(kept.iter().cloned());
    let sql = format!(
        "SELECT {} FROM ({}){} GROUP BY {} ORDER BY {}{limit_by} LIMIT {}",
        select.join(", "),
        parts.join(" UNION ALL "),
        if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filters.join(" AND "))
        },
        group_key.join(", "),
        order.join(", "),
        spec.limit + 1
    );
    let started = Instant::now();
    let bind_refs: Vec<&str> = binds.iter().map(String::as_str).collect();
    let rows = warehouse::query_rows(client, &sql, &bind_refs).await?;
    metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => "merged")
        .record(started.elapsed().as_secs_f64());
    let truncated = rows.len() > spec.limit;
    let mut out = Vec::with_capacity(rows.len().min(spec.limit));
    for row in rows.into_iter().take(spec.limit) {
        let number = |name: &str| row.get(name).and_then(Json::as_f64).unwrap_or(0.0);
        let mut acc = metric.plan.new_accumulator();
        acc.events = row
            .get("t_events")
            .and_then(warehouse::json_u64)
            .unwrap_or(0);
        for (i, state) in acc.numeric.iter_mut().enumerate() {
            state.count = row
                .get(&format!("t_c{i}"))
                .and_then(warehouse::json_u64)
                .unwrap_or(0);
            state.sum = number(&format!("t_s{i}"));
            state.min = number(&format!("t_mn{i}"));
            state.max = number(&format!("t_mx{i}"));
        }
        out.push(AnswerRow {
            start_ms: row.get("b").and_then(warehouse::json_i64).unwrap_or(0),
            end_ms: row.get("e").and_then(warehouse::json_i64).unwrap_or(0),
            key: spec
                .group_by
                .iter()
                .map(|i| {
                    row.get(&metric.group_by[*i].name)
                        .cloned()
                        .unwrap_or(Json::Null)
                })
                .collect(),
            values: metric.plan.finalize(&acc),
            source: if row.get("t_source").and_then(warehouse::json_u64) == Some(1) {
                Source::Speed
            } else {
                Source::Batch
            },
            is_final: row.get("t_final").and_then(warehouse::json_u64) == Some(1),
        });
    }
    Ok(Answer {
        batch_watermark,
        speed_watermark: None,
        rows: out,
        truncated,
    })
}
