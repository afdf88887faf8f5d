//! Reading the views: the current rows of the batch view (as of a
//! published run) and of the speed view, and their partitions merged in
//! Rust ([`read_view`]), for readers that need whole partial states.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Write as _;

use clickhouse::Client;
use serde_json::{Map, Value as Json};
use strata_schemas::config::MetricDef;

use crate::{
    BATCH_RUNS_TABLE, WarehouseError, batch_table, json_i64, json_u64, qualified, query_rows,
    speed_table, state,
};

/// Which rows of a view a reader wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The batch view as of a published run: for every (window, key) the row
    /// of the newest *published* run up to `run_id` (rows of a run that
    /// never finished are invisible).
    Batch {
        /// Newest run to see.
        run_id: u64,
    },
    /// The speed view: for every (window, key, Kafka partition) the row with
    /// the highest version.
    Speed,
}

/// SQL reading the current rows of a metric's view with window start in
/// `[from_ms, to_ms)`, retracted rows left out (see [`CurrentRows`]). One `?`
/// placeholder (the metric name, for the batch view) must be bound.
/// Identifiers come only from the metric definition; the two bounds are
/// integers. Columns: the view's key (with `kafka_partition` for the speed
/// view), then `_v_<column>` for the window end, every state column and,
/// for the speed view, `is_final`.
pub fn view_sql(
    database: &str,
    metric: &MetricDef,
    view: View,
    from_ms: i64,
    to_ms: i64,
) -> String {
    let mut rows = CurrentRows::of(database, metric, view);
    rows.restrict(window_range(from_ms, to_ms));
    let mut values = vec!["window_end_ms".to_string()];
    values.extend(state::columns(&metric.plan).into_iter().map(|c| c.name));
    if view == View::Speed {
        values.push("is_final".into());
    }
    let mut select = rows.key().to_vec();
    for v in &values {
        select.push(format!("{} AS `_v_{v}`", rows.latest(v)));
    }
    rows.select(&select, "`_retracted`")
}

/// `window_start_ms >= from_ms AND window_start_ms < to_ms`.
pub(crate) fn window_range(from_ms: i64, to_ms: i64) -> String {
    format!("window_start_ms >= {from_ms} AND window_start_ms < {to_ms}")
}

/// Which published batch runs a reader sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runs {
    /// Published runs up to this one; the metric name is a bound parameter.
    UpTo(u64),
    /// Every published run, the metric name written into the SQL: a
    /// ClickHouse view takes no parameters (and metric names are
    /// identifiers).
    AllPublished,
}

/// The metric name as an SQL string literal, for SQL that cannot take
/// parameters (a view). Names are identifiers; quotes are dropped anyway.
pub(crate) fn name_literal(metric: &MetricDef) -> String {
    format!("'{}'", metric.name.replace('\'', ""))
}

/// The current rows of one view, the rule every reader follows: for every
/// (window, key) of the batch view the row of the newest published run it
/// sees (rows of a run that never finished are invisible), for every
/// (window, key, Kafka partition) of the speed view the highest version;
/// then retracted rows left out. Deduplicates with `argMax` instead of
/// `FINAL` so it reads a consistent snapshot on every ClickHouse version.
/// The caller chooses the columns ([`CurrentRows::latest`]) and may add
/// conditions on stored key columns.
#[derive(Clone, Debug)]
pub(crate) struct CurrentRows {
    table: String,
    /// The column whose highest value wins.
    version: &'static str,
    /// One row per value of these columns.
    key: Vec<String>,
    conditions: Vec<String>,
    /// Values of the `?` placeholders, in the order of the SQL text.
    binds: Vec<String>,
}

impl CurrentRows {
    /// The rows a [`View`] reader sees.
    pub(crate) fn of(database: &str, metric: &MetricDef, view: View) -> Self {
        match view {
            View::Batch { run_id } => Self::batch(database, metric, Runs::UpTo(run_id)),
            View::Speed => Self::speed(database, metric),
        }
    }

    /// The batch view as of `runs`.
    pub(crate) fn batch(database: &str, metric: &MetricDef, runs: Runs) -> Self {
        let (name, binds, up_to) = match runs {
            Runs::UpTo(run_id) => (
                "?".to_string(),
                vec![metric.name.clone()],
                format!(" AND run_id <= {run_id}"),
            ),
            Runs::AllPublished => (name_literal(metric), Vec::new(), String::new()),
        };
        CurrentRows {
            table: qualified(database, &batch_table(&metric.name)),
            version: "run_id",
            key: window_and_groups(metric),
            // GLOBAL: on a cluster the run log is evaluated once, on the
            // node the client talks to (which has its own writes), and the
            // set is shipped to the shards; a plain IN would read each
            // shard's replica of the run log, which may lag. On one server
            // GLOBAL IN is IN.
            conditions: vec![format!(
                "run_id GLOBAL IN (SELECT run_id FROM {} WHERE metric = {name} AND status = 'published'{up_to})",
                qualified(database, BATCH_RUNS_TABLE)
            )],
            binds,
        }
    }

    /// The speed view.
    pub(crate) fn speed(database: &str, metric: &MetricDef) -> Self {
        let mut key = window_and_groups(metric);
        key.push("kafka_partition".into());
        CurrentRows {
            table: qualified(database, &speed_table(&metric.name)),
            version: "version",
            key,
            conditions: Vec::new(),
            binds: Vec::new(),
        }
    }

    /// Keeps only stored rows meeting `condition` (on key columns: applied
    /// before deduplication), whose `?` placeholders `binds` fill.
    pub(crate) fn restrict_with(&mut self, condition: String, binds: &[String]) {
        self.conditions.push(condition);
        self.binds.extend_from_slice(binds);
    }

    /// [`CurrentRows::restrict_with`] a condition without placeholders.
    pub(crate) fn restrict(&mut self, condition: String) {
        self.restrict_with(condition, &[]);
    }

    /// The columns that identify a row.
    pub(crate) fn key(&self) -> &[String] {
        &self.key
    }

    /// The current value of a stored column.
    pub(crate) fn latest(&self, column: &str) -> String {
        format!("argMax(`{column}`, {})", self.version)
    }

    /// Values of the `?` placeholders of [`CurrentRows::select`].
    pub(crate) fn binds(&self) -> &[String] {
        &self.binds
    }

    /// `SELECT columns` of the current rows, plus the retraction flag
    /// under `retracted` (last; always 0).
    pub(crate) fn select(&self, columns: &[String], retracted: &str) -> String {
        let mut sql = format!(
            "SELECT {}, argMax(retracted, {}) AS {retracted} FROM {}",
            columns.join(", "),
            self.version,
            self.table
        );
        if !self.conditions.is_empty() {
            let _ = write!(sql, " WHERE {}", self.conditions.join(" AND "));
        }
        let _ = write!(
            sql,
            " GROUP BY {} HAVING {retracted} = 0",
            self.key.join(", ")
        );
        sql
    }
}

/// `window_start_ms` and the group-by columns, quoted.
pub(crate) fn window_and_groups(metric: &MetricDef) -> Vec<String> {
    let mut columns = vec!["window_start_ms".to_string()];
    columns.extend(metric.group_by.iter().map(|g| format!("`{}`", g.name)));
    columns
}

/// Renames the `_v_<column>` fields of a [`view_sql`] row back to `<column>`.
fn unprefix_view_row(row: Map<String, Json>) -> Map<String, Json> {
    row.into_iter()
        .filter(|(k, _)| k != "_retracted")
        .map(|(k, v)| match k.strip_prefix("_v_") {
            Some(name) => (name.to_string(), v),
            None => (k, v),
        })
        .collect()
}

/// One (window, group key) of a view, its Kafka partitions merged.
#[derive(Clone, Debug)]
pub struct ViewRow {
    /// Window start, epoch ms.
    pub start_ms: i64,
    /// Window end, epoch ms (the largest over partitions, for sessions).
    pub end_ms: i64,
    /// Group-by values as stored, in config order.
    pub key: Vec<Json>,
    /// The merged partial state.
    pub acc: strata_schemas::aggregate::Accumulator,
    /// Whether the window can no longer change (always true for batch rows).
    pub is_final: bool,
}

/// One row of a [`view_sql`] read (for the speed view, one Kafka partition
/// of a window and key) as a [`ViewRow`].
pub fn view_row(
    metric: &MetricDef,
    view: View,
    row: Map<String, Json>,
) -> Result<ViewRow, WarehouseError> {
    let row = unprefix_view_row(row);
    let decode = |message: String| WarehouseError::Decode {
        operation: format!("read {} view of {}", view_name(view), metric.name),
        message,
    };
    let bound = |name: &str| {
        row.get(name)
            .and_then(json_i64)
            .ok_or_else(|| decode(format!("no {name}")))
    };
    Ok(ViewRow {
        start_ms: bound("window_start_ms")?,
        end_ms: bound("window_end_ms")?,
        key: metric
            .group_by
            .iter()
            .map(|g| row.get(&g.name).cloned().unwrap_or(Json::Null))
            .collect(),
        acc: state::read_json(&metric.plan, &row).map_err(|e| decode(e.to_string()))?,
        is_final: match view {
            View::Batch { .. } => true,
            View::Speed => row.get("is_final").and_then(json_u64) == Some(1),
        },
    })
}

/// Reads a view with window start in `[from_ms, to_ms)` and merges the
/// partials of each (window, group key) with [`Accumulator::merge`] (so
/// distinct and quantile sketches merge, never add). Ordered by start, then key.
///
/// [`Accumulator::merge`]: strata_schemas::aggregate::Accumulator::merge
pub async fn read_view(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    view: View,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<ViewRow>, WarehouseError> {
    let sql = view_sql(database, metric, view, from_ms, to_ms);
    let binds: &[&str] = match view {
        View::Batch { .. } => &[&metric.name],
        View::Speed => &[],
    };
    let rows = query_rows(client, &sql, binds).await?;
    let mut merged: BTreeMap<(i64, String), ViewRow> = BTreeMap::new();
    for row in rows {
        let ViewRow {
            start_ms: start,
            end_ms: end,
            key,
            acc,
            is_final,
        } = view_row(metric, view, row)?;
        let text = serde_json::to_string(&key).unwrap_or_default();
        match merged.entry((start, text)) {
            Entry::Occupied(mut e) => {
                let v = e.get_mut();
                v.acc.merge(&acc);
                v.end_ms = v.end_ms.max(end);
                v.is_final &= is_final;
            }
            Entry::Vacant(e) => {
                e.insert(ViewRow {
                    start_ms: start,
                    end_ms: end,
                    key,
                    acc,
                    is_final,
                });
            }
        }
    }
    Ok(merged.into_values().collect())
}

fn view_name(view: View) -> &'static str {
    match view {
        View::Batch { .. } => "batch",
        View::Speed => "speed",
    }
}

/// The newest published batch run of a metric: `(run_id, watermark_ms)`.
pub async fn published_batch(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<Option<(u64, i64)>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT run_id, watermark_ms FROM {} WHERE metric = ? AND status = 'published' ORDER BY run_id DESC LIMIT 1",
            qualified(database, BATCH_RUNS_TABLE)
        ),
        &[metric],
    )
    .await?;
    Ok(rows.first().and_then(|r| {
        Some((
            json_u64(r.get("run_id")?)?,
            json_i64(r.get("watermark_ms")?)?,
        ))
    }))
}

/// The start of the newest window in a metric's speed table, if it holds
/// any row.
pub async fn newest_speed_window(
    client: &Client,
    database: &str,
    metric: &MetricDef,
) -> Result<Option<i64>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT max(window_start_ms) AS s, count() AS n FROM {}",
            qualified(database, &crate::speed_table(&metric.name))
        ),
        &[],
    )
    .await?;
    Ok(rows
        .first()
        .filter(|r| r.get("n").and_then(json_u64).unwrap_or(0) > 0)
        .and_then(|r| r.get("s").and_then(json_i64)))
}

/// The earliest start of a window of batch run `run_id` that starts before
/// `before` and ends after it: the start of a published session spanning
/// `before`, if any.
pub async fn batch_window_spanning(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    run_id: u64,
    before: i64,
) -> Result<Option<i64>, WarehouseError> {
    let sql = format!(
        "SELECT min(window_start_ms) AS s, count() AS n FROM ({}) WHERE `_v_window_end_ms` > {before}",
        view_sql(database, metric, View::Batch { run_id }, i64::MIN, before)
    );
    let rows = query_rows(client, &sql, &[&metric.name]).await?;
    Ok(rows
        .first()
        .filter(|r| r.get("n").and_then(json_u64).unwrap_or(0) > 0)
        .and_then(|r| r.get("s").and_then(json_i64)))
}
