//! The tables Strata manages: their names and layouts, and `strata init`,
//! which creates what is missing and reports drift.
//!
//! The SQL sticks to what ClickHouse 18.16 (Debian's package) and current
//! releases both accept: `ReplacingMergeTree(version)` with `PARTITION BY` /
//! `ORDER BY`, `ALIAS` columns, no `LowCardinality`, no `DateTime64`, no
//! Nullable sorting keys.
//!
//! In cluster mode (`clickhouse.cluster`), every table is created `ON
//! CLUSTER`: the window tables as `<table>_local`
//! (`Replicated*MergeTree`, one ZooKeeper path per shard) behind a
//! `Distributed` table under the usual name, sharded so that every version
//! of a row lands on one shard (per-shard `FINAL` and `argMax` stay right);
//! the small metadata tables as one `Replicated*MergeTree` per node, all
//! replicas of one ZooKeeper path, so each node answers them locally.

use std::fmt::Write as _;

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::config::{Config, MetricDef};

use crate::merged::{merged_view, merged_view_columns, merged_view_sql};
use crate::{WarehouseError, execute, qualified, query_rows, state};

/// Watermarks of both layers, one row per (metric, layer, partition).
pub const WATERMARKS_TABLE: &str = "strata_watermarks";
/// One row per batch run and metric.
pub const BATCH_RUNS_TABLE: &str = "strata_batch_runs";
/// Batch-run leases: who may run a metric's batch run now.
pub const BATCH_LEASES_TABLE: &str = "strata_batch_leases";
/// Planned batch runs: run id, range and chunks, before they publish.
pub const BATCH_PLANS_TABLE: &str = "strata_batch_plans";
/// One row per chunk of a planned run whose rows are all in.
pub const BATCH_CHUNKS_TABLE: &str = "strata_batch_chunks";
/// Speed-layer restart points, one row per (consumer group, topic, partition).
pub const SPEED_CHECKPOINTS_TABLE: &str = "strata_speed_checkpoints";

/// Name of a metric's speed view table.
pub fn speed_table(metric: &str) -> String {
    format!("{metric}_speed")
}

/// Name of a metric's batch view table.
pub fn batch_table(metric: &str) -> String {
    format!("{metric}_batch")
}

/// Where a table's rows live on a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Small metadata: a full replica on every node of the cluster, read
    /// and written locally (no `Distributed` table).
    EveryNode,
    /// Window rows: `<table>_local` on each shard behind a `Distributed`
    /// table, spread over the shards by this expression.
    Sharded {
        /// The `Distributed` sharding key.
        key: String,
    },
}

/// A table Strata manages: its name, columns and engine.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    /// Table name (without database).
    pub name: String,
    /// (name, type, extra) — `extra` is e.g. `DEFAULT now()` or `ALIAS ...`.
    pub columns: Vec<(String, String, String)>,
    /// The MergeTree family member on one server: `ReplacingMergeTree` or
    /// `MergeTree` (on a cluster, its `Replicated` twin).
    pub engine: &'static str,
    /// The engine's version column (`ReplacingMergeTree(version)`), if any.
    pub version: Option<&'static str>,
    /// `PARTITION BY` / `ORDER BY` clauses.
    pub layout: String,
    /// Where its rows live in cluster mode.
    pub placement: Placement,
}

/// One table `strata init` creates: its name, the engine `system.tables`
/// reports for it, and the statement that creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableStatement {
    /// Table name (without database).
    pub name: String,
    /// `system.tables.engine` of the created table.
    pub engine: String,
    /// `CREATE TABLE IF NOT EXISTS ...`.
    pub sql: String,
}

/// ` ON CLUSTER <name>` in cluster mode, else nothing.
pub fn on_cluster(cluster: Option<&str>) -> String {
    cluster
        .map(|c| format!(" ON CLUSTER `{c}`"))
        .unwrap_or_default()
}

/// The name of a sharded table's local (per-shard) table in cluster mode.
pub fn local_table(table: &str) -> String {
    format!("{table}_local")
}

impl TableSpec {
    /// `CREATE TABLE IF NOT EXISTS ...` on one server.
    pub fn create_sql(&self, database: &str) -> String {
        self.create_with(database, &self.name, "", &self.engine_clause(None))
    }

    /// The tables this spec is made of: on one server the table itself;
    /// on `cluster`, created `ON CLUSTER`, the replicated table of every
    /// node ([`Placement::EveryNode`]) or the local table of every shard
    /// and the `Distributed` table over them ([`Placement::Sharded`]).
    pub fn statements(&self, database: &str, cluster: Option<&str>) -> Vec<TableStatement> {
        let Some(cluster) = cluster else {
            return vec![TableStatement {
                name: self.name.clone(),
                engine: self.engine.to_string(),
                sql: self.create_sql(database),
            }];
        };
        let on = on_cluster(Some(cluster));
        let replicated = format!("Replicated{}", self.engine);
        match &self.placement {
            Placement::EveryNode => {
                // No {shard} in the path: every node of the cluster is a
                // replica of the same table ({replica} is unique per node).
                let path = format!("/clickhouse/tables/all/{database}/{}", self.name);
                vec![TableStatement {
                    name: self.name.clone(),
                    engine: replicated,
                    sql: self.create_with(
                        database,
                        &self.name,
                        &on,
                        &self.engine_clause(Some(&path)),
                    ),
                }]
            }
            Placement::Sharded { key } => {
                let local = local_table(&self.name);
                let path = format!("/clickhouse/tables/{{shard}}/{database}/{}", self.name);
                vec![
                    TableStatement {
                        name: local.clone(),
                        engine: replicated,
                        sql: self.create_with(
                            database,
                            &local,
                            &on,
                            &self.engine_clause(Some(&path)),
                        ),
                    },
                    TableStatement {
                        name: self.name.clone(),
                        engine: "Distributed".into(),
                        sql: self.create_with(
                            database,
                            &self.name,
                            &on,
                            &format!(
                                "ENGINE = Distributed(`{cluster}`, `{database}`, `{local}`, {key})"
                            ),
                        ),
                    },
                ]
            }
        }
    }

    /// `ENGINE = ...` with the layout clauses; `replication` is the
    /// ZooKeeper path of a `Replicated` engine.
    fn engine_clause(&self, replication: Option<&str>) -> String {
        let mut args = Vec::new();
        let engine = match replication {
            Some(path) => {
                args.push(format!("'{path}'"));
                args.push("'{replica}'".to_string());
                format!("Replicated{}", self.engine)
            }
            None => self.engine.to_string(),
        };
        args.extend(self.version.map(str::to_string));
        if args.is_empty() {
            format!("ENGINE = {engine} {}", self.layout)
        } else {
            format!("ENGINE = {engine}({}) {}", args.join(", "), self.layout)
        }
    }

    fn create_with(&self, database: &str, table: &str, on_cluster: &str, engine: &str) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {}{on_cluster} (\n",
            qualified(database, table)
        );
        for (i, (name, ty, extra)) in self.columns.iter().enumerate() {
            let sep = if i + 1 == self.columns.len() { "" } else { "," };
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" {extra}")
            };
            let _ = writeln!(sql, "    `{name}` {ty}{extra}{sep}");
        }
        let _ = write!(sql, ") {engine}");
        sql
    }
}

fn col(name: &str, ty: &str) -> (String, String, String) {
    (name.to_string(), ty.to_string(), String::new())
}

/// Window tables are partitioned by the month of the window start, in the
/// server's time zone.
const MONTH_PARTITION: &str = "toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))";

/// Months of window starts one insert may touch. ClickHouse refuses an
/// INSERT block whose rows fall in more than `max_partitions_per_insert_block`
/// partitions (100 by default; code 252, which retrying cannot fix). The
/// partition is a month in the *server's* time zone, and a UTC month overlaps
/// at most two of those, so 50 UTC months stay within the limit anywhere.
pub const MONTHS_PER_INSERT: i64 = 50;

/// The UTC month of `window_start_ms`, counted from year 0 (`year * 12 +
/// month - 1`): rows of one such month share at most two partitions.
pub fn utc_month(window_start_ms: i64) -> i64 {
    use chrono::Datelike;
    let time = chrono::DateTime::from_timestamp_millis(window_start_ms).unwrap_or_default();
    i64::from(time.year()) * 12 + i64::from(time.month0())
}

/// Splits rows, given by their window starts in row order, into insert
/// blocks of at most [`MONTHS_PER_INSERT`] UTC months each: `None` when one
/// block holds them all (the usual case: checked from the first and last
/// month alone), else the row indexes of each block.
pub fn insert_blocks(window_starts: &[i64]) -> Option<Vec<Vec<usize>>> {
    let (min, max) = window_starts
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    if window_starts.is_empty() || utc_month(max) - utc_month(min) < MONTHS_PER_INSERT {
        return None;
    }
    let mut by_month: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (row, &start) in window_starts.iter().enumerate() {
        by_month.entry(utc_month(start)).or_default().push(row);
    }
    let months: Vec<Vec<usize>> = by_month.into_values().collect();
    Some(
        months
            .chunks(MONTHS_PER_INSERT as usize)
            .map(|chunk| chunk.concat())
            .collect(),
    )
}

fn window_columns(metric: &MetricDef) -> Vec<(String, String, String)> {
    let mut cols = vec![
        col("window_start_ms", "Int64"),
        col("window_end_ms", "Int64"),
    ];
    for g in &metric.group_by {
        cols.push(col(&g.name, g.ty.clickhouse_type()));
    }
    cols
}

fn alias_columns() -> Vec<(String, String, String)> {
    vec![
        (
            "window_start".into(),
            "DateTime".into(),
            "ALIAS toDateTime(intDiv(window_start_ms, 1000))".into(),
        ),
        (
            "window_end".into(),
            "DateTime".into(),
            "ALIAS toDateTime(intDiv(window_end_ms, 1000))".into(),
        ),
    ]
}

fn sorting_key(metric: &MetricDef, extra: &[&str]) -> String {
    let mut key = vec!["window_start_ms".to_string()];
    key.extend(metric.group_by.iter().map(|g| format!("`{}`", g.name)));
    key.extend(extra.iter().map(|s| s.to_string()));
    key.join(", ")
}

/// The speed view: one row per (window, group key, Kafka partition), an
/// idempotent upsert whose `version` only grows (see docs/ARCHITECTURE.md).
/// Session rows whose session merged into another carry `retracted = 1`.
pub fn speed_table_spec(metric: &MetricDef) -> TableSpec {
    let mut columns = window_columns(metric);
    columns.push(col("kafka_partition", "Int32"));
    for c in state::columns(&metric.plan) {
        columns.push(col(&c.name, c.clickhouse_type));
    }
    columns.extend([
        col("first_offset", "Int64"),
        col("last_offset", "Int64"),
        col("version", "UInt64"),
        col("retracted", "UInt8"),
        col("is_final", "UInt8"),
        (
            "updated_at".into(),
            "DateTime".into(),
            "DEFAULT now()".into(),
        ),
    ]);
    columns.extend(alias_columns());
    TableSpec {
        name: speed_table(&metric.name),
        columns,
        engine: "ReplacingMergeTree",
        version: Some("version"),
        layout: format!(
            "PARTITION BY {MONTH_PARTITION} ORDER BY ({})",
            sorting_key(metric, &["kafka_partition"])
        ),
        // Every version of a (window, key, partition) row on one shard: the
        // shard's FINAL / argMax sees them all.
        placement: Placement::Sharded {
            key: format!("cityHash64({})", sorting_key(metric, &["kafka_partition"])),
        },
    }
}

/// The columns a speed row carries, (name, ClickHouse type) in the order the
/// speed layer writes them: every column of [`speed_table_spec`] but its
/// aliases. A `RowBinary` insert names exactly these.
pub fn speed_row_columns(metric: &MetricDef) -> Vec<(String, String)> {
    speed_table_spec(metric)
        .columns
        .into_iter()
        .filter(|(_, _, extra)| !extra.starts_with("ALIAS"))
        .map(|(name, ty, _)| (name, ty))
        .collect()
}

/// The batch view: one complete row per (window, group key) per batch run;
/// readers take the newest *published* run's row.
///
/// `run_id` is in the sorting key: the engine then folds only copies of one
/// run's row (a chunk two workers wrote). Ordered by (window, key) alone, a
/// background merge kept the highest `run_id` of a (window, key), so a run
/// killed or superseded before publishing replaced the published run's row
/// with one no reader may see, and the window left the batch view.
pub fn batch_table_spec(metric: &MetricDef) -> TableSpec {
    let mut columns = window_columns(metric);
    for c in state::columns(&metric.plan) {
        columns.push(col(&c.name, c.clickhouse_type));
    }
    columns.extend([
        col("run_id", "UInt64"),
        col("retracted", "UInt8"),
        (
            "updated_at".into(),
            "DateTime".into(),
            "DEFAULT now()".into(),
        ),
    ]);
    columns.extend(alias_columns());
    TableSpec {
        name: batch_table(&metric.name),
        columns,
        engine: "ReplacingMergeTree",
        version: Some("run_id"),
        layout: format!(
            "PARTITION BY {MONTH_PARTITION} ORDER BY ({})",
            sorting_key(metric, &["run_id"])
        ),
        // Every run's row of a (window, key) on one shard.
        placement: Placement::Sharded {
            key: format!("cityHash64({})", sorting_key(metric, &[])),
        },
    }
}

/// Watermarks: `layer` is `batch` (partition -1) or `speed` (per partition).
pub fn watermarks_table_spec() -> TableSpec {
    TableSpec {
        name: WATERMARKS_TABLE.into(),
        columns: vec![
            col("metric", "String"),
            col("layer", "String"),
            col("kafka_partition", "Int32"),
            col("watermark_ms", "Int64"),
            col("version", "UInt64"),
            col("run_id", "UInt64"),
            (
                "updated_at".into(),
                "DateTime".into(),
                "DEFAULT now()".into(),
            ),
        ],
        engine: "ReplacingMergeTree",
        version: Some("version"),
        layout: "ORDER BY (metric, layer, kafka_partition)".into(),
        placement: Placement::EveryNode,
    }
}

/// The batch run log.
pub fn batch_runs_table_spec() -> TableSpec {
    TableSpec {
        name: BATCH_RUNS_TABLE.into(),
        columns: vec![
            col("run_id", "UInt64"),
            col("metric", "String"),
            col("status", "String"),
            col("from_ms", "Int64"),
            col("to_ms", "Int64"),
            col("watermark_ms", "Int64"),
            col("rows_read", "UInt64"),
            col("rows_written", "UInt64"),
            col("started_at", "DateTime"),
            col("finished_at", "DateTime"),
            col("message", "String"),
        ],
        engine: "MergeTree",
        version: None,
        layout: "ORDER BY (metric, run_id)".into(),
        placement: Placement::EveryNode,
    }
}

/// Speed-layer checkpoints: where a partition's consumption restarts
/// (`next_offset`), the partition's max event time before that offset (so
/// the replay sees the same watermarks as the first pass), and the
/// watermark up to which every window is final and already written. The
/// newest checkpoint (highest `next_offset`) wins; every checkpoint ever
/// written is a valid restart point (docs/ARCHITECTURE.md).
pub fn speed_checkpoints_table_spec() -> TableSpec {
    TableSpec {
        name: SPEED_CHECKPOINTS_TABLE.into(),
        columns: vec![
            col("group_id", "String"),
            col("topic", "String"),
            col("kafka_partition", "Int32"),
            col("next_offset", "Int64"),
            col("replay_max_event_ms", "Int64"),
            col("final_watermark_ms", "Int64"),
            col("version", "UInt64"),
            (
                "updated_at".into(),
                "DateTime".into(),
                "DEFAULT now()".into(),
            ),
        ],
        engine: "ReplacingMergeTree",
        version: Some("version"),
        layout: "ORDER BY (group_id, topic, kafka_partition)".into(),
        placement: Placement::EveryNode,
    }
}

/// Batch-run leases: one claim per (metric, holder), its newest row (highest
/// `version`) wins. ClickHouse has no compare-and-set, so a run claims by
/// inserting and then reads every live claim; every reader picks the same
/// winner (the oldest claim), see `strata_batch::lease`.
pub fn batch_leases_table_spec() -> TableSpec {
    TableSpec {
        name: BATCH_LEASES_TABLE.into(),
        columns: vec![
            col("metric", "String"),
            col("holder", "String"),
            col("claimed_ms", "Int64"),
            col("expires_ms", "Int64"),
            col("released", "UInt8"),
            col("version", "UInt64"),
            (
                "updated_at".into(),
                "DateTime".into(),
                "DEFAULT now()".into(),
            ),
        ],
        engine: "ReplacingMergeTree",
        version: Some("version"),
        layout: "ORDER BY (metric, holder)".into(),
        placement: Placement::EveryNode,
    }
}

/// Planned batch runs: what every worker of a split run agrees on. The
/// chunks of a plan follow from its range, `chunk_count` and the metric's
/// window (`strata_batch::split`), so only those are stored. `plan_key`
/// names the plan for workers started together (a Kubernetes Job's uid),
/// so a retried worker finds its plan again. `based_on_run` (0: none) is the
/// published run the plan recomputes on top of, with its watermark; the
/// plan's lease claim (`lease_holder`, renewed by its workers to
/// `lease_ttl_ms` ahead) keeps other runs of the metric out until it
/// publishes or is abandoned.
pub fn batch_plans_table_spec() -> TableSpec {
    TableSpec {
        name: BATCH_PLANS_TABLE.into(),
        columns: vec![
            col("run_id", "UInt64"),
            col("metric", "String"),
            col("kind", "String"),
            col("from_ms", "Int64"),
            col("to_ms", "Int64"),
            col("horizon_ms", "Int64"),
            col("chunk_count", "UInt32"),
            col("based_on_run", "UInt64"),
            col("based_on_watermark_ms", "Int64"),
            col("lease_holder", "String"),
            col("lease_ttl_ms", "Int64"),
            col("plan_key", "String"),
            (
                "planned_at".into(),
                "DateTime".into(),
                "DEFAULT now()".into(),
            ),
        ],
        engine: "MergeTree",
        version: None,
        layout: "ORDER BY (metric, run_id)".into(),
        placement: Placement::EveryNode,
    }
}

/// Chunks of planned runs whose rows are all inserted: a run publishes
/// only when every chunk index of its plan has a row here. A chunk two
/// workers raced on has two rows; either counts.
/// `open_session_ms` is the earliest start of a session of the chunk still
/// open at the plan's horizon (`i64::MAX`: none), which bounds the
/// watermark of a scheduled session run.
pub fn batch_chunks_table_spec() -> TableSpec {
    TableSpec {
        name: BATCH_CHUNKS_TABLE.into(),
        columns: vec![
            col("run_id", "UInt64"),
            col("metric", "String"),
            col("chunk_index", "UInt32"),
            col("from_ms", "Int64"),
            col("to_ms", "Int64"),
            col("events_read", "UInt64"),
            col("rows_written", "UInt64"),
            col("open_session_ms", "Int64"),
            col("attempts", "UInt32"),
            col("worker", "String"),
            (
                "finished_at".into(),
                "DateTime".into(),
                "DEFAULT now()".into(),
            ),
        ],
        engine: "MergeTree",
        version: None,
        layout: "ORDER BY (metric, run_id, chunk_index)".into(),
        placement: Placement::EveryNode,
    }
}

/// Every table `strata init` manages for a configuration, in creation order.
pub fn all_table_specs(config: &Config) -> Vec<TableSpec> {
    let mut specs = vec![
        watermarks_table_spec(),
        batch_runs_table_spec(),
        batch_leases_table_spec(),
        batch_plans_table_spec(),
        batch_chunks_table_spec(),
        speed_checkpoints_table_spec(),
    ];
    for m in &config.metrics {
        specs.push(speed_table_spec(m));
        specs.push(batch_table_spec(m));
    }
    specs
}

/// What `strata init` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Whether the database was created.
    pub created_database: bool,
    /// Tables created.
    pub created: Vec<String>,
    /// Tables that already existed with the expected layout.
    pub unchanged: Vec<String>,
}

impl InitReport {
    /// Whether the run changed nothing.
    pub fn is_noop(&self) -> bool {
        !self.created_database && self.created.is_empty()
    }
}

/// Creates the database and every missing table; checks existing tables
/// against the expected layout (engine and columns). Idempotent: a second
/// run changes nothing. In cluster mode (`clickhouse.cluster`) what is
/// missing on the node the client talks to is created `ON CLUSTER` (`IF NOT
/// EXISTS`, so nodes that have it keep it), and drift is checked on that
/// node.
pub async fn init(client: &Client, config: &Config) -> Result<InitReport, WarehouseError> {
    let database = &config.clickhouse.database;
    let cluster = config.clickhouse.cluster.as_deref();
    let mut report = InitReport::default();
    let exists = query_rows(
        client,
        "SELECT name FROM system.databases WHERE name = ?",
        &[database],
    )
    .await?;
    if exists.is_empty() {
        execute(
            client,
            &format!(
                "CREATE DATABASE IF NOT EXISTS `{database}`{}",
                on_cluster(cluster)
            ),
        )
        .await?;
        report.created_database = true;
    }
    for spec in all_table_specs(config) {
        for table in spec.statements(database, cluster) {
            if check_table(client, database, &spec, &table).await? {
                report.unchanged.push(table.name);
            } else {
                execute(client, &table.sql).await?;
                tracing::info!(database = %database, table = %table.name, engine = %table.engine, "created table");
                report.created.push(table.name);
            }
        }
    }
    for metric in &config.metrics {
        let name = merged_view(&metric.name);
        let existing = query_rows(
            client,
            "SELECT name FROM system.columns WHERE database = ? AND table = ?",
            &[database, &name],
        )
        .await?;
        let actual: Vec<&str> = existing
            .iter()
            .filter_map(|r| r.get("name").and_then(Json::as_str))
            .collect();
        let expected = merged_view_columns(metric);
        if actual == expected {
            report.unchanged.push(name);
            continue;
        }
        // A view stores nothing: replacing it loses nothing.
        if !actual.is_empty() {
            execute(
                client,
                &format!(
                    "DROP TABLE IF EXISTS {}{}",
                    qualified(database, &name),
                    on_cluster(cluster)
                ),
            )
            .await?;
        }
        execute(client, &merged_view_sql(database, metric, cluster)).await?;
        tracing::info!(database = %database, view = %name, "created merged view");
        report.created.push(name);
    }
    Ok(report)
}

/// Whether `table` exists (`false`: create it) with the expected engine and
/// the columns of `spec`; [`WarehouseError::Drift`] when it exists otherwise.
async fn check_table(
    client: &Client,
    database: &str,
    spec: &TableSpec,
    table: &TableStatement,
) -> Result<bool, WarehouseError> {
    let engine = query_rows(
        client,
        "SELECT engine, sorting_key FROM system.tables WHERE database = ? AND name = ?",
        &[database, &table.name],
    )
    .await?;
    let Some(engine) = engine.first() else {
        return Ok(false);
    };
    let existing = query_rows(
        client,
        "SELECT name, type FROM system.columns WHERE database = ? AND table = ?",
        &[database, &table.name],
    )
    .await?;
    let actual: Vec<(String, String)> = existing
        .iter()
        .map(|r| {
            (
                r.get("name")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
                r.get("type")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let mut differences = Vec::new();
    let actual_engine = engine
        .get("engine")
        .and_then(Json::as_str)
        .unwrap_or_default();
    if actual_engine != table.engine {
        differences.push(format!(
            "engine is {actual_engine}, expected {} ({})",
            table.engine,
            if table.engine.starts_with("Replicated") || table.engine == "Distributed" {
                "clickhouse.cluster is set"
            } else {
                "clickhouse.cluster is not set"
            }
        ));
    }
    // (A Distributed table has no sorting key of its own.)
    let actual_key = engine
        .get("sorting_key")
        .and_then(Json::as_str)
        .unwrap_or_default();
    if let Some(expected_key) = spec.sorting_key()
        && !actual_key.is_empty()
        && normalized_key(actual_key) != normalized_key(expected_key)
    {
        let hint = if spec.name.ends_with("_batch") && !actual_key.contains("run_id") {
            " (a batch table made before run_id joined its key: see docs/OPERATIONS.md, \"Upgrading the batch tables' sorting key\")"
        } else {
            ""
        };
        differences.push(format!(
            "sorting key is ({actual_key}), expected ({expected_key}){hint}"
        ));
    }
    for (name, ty, _) in &spec.columns {
        match actual.iter().find(|(n, _)| n == name) {
            None => differences.push(format!("column {name} is missing")),
            Some((_, t)) if t != ty => {
                differences.push(format!("column {name} is {t}, expected {ty}"));
            }
            Some(_) => {}
        }
    }
    for (name, _) in &actual {
        if !spec.columns.iter().any(|(n, _, _)| n == name) {
            differences.push(format!("column {name} is not in the metric definition"));
        }
    }
    if differences.is_empty() {
        Ok(true)
    } else {
        Err(WarehouseError::Drift {
            table: format!("{database}.{}", table.name),
            differences: differences.join("; "),
        })
    }
}

/// A sorting key as ClickHouse reports it and as a spec writes it, without
/// quotes or spaces.
fn normalized_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '`' && !c.is_whitespace())
        .collect()
}

impl TableSpec {
    /// The `ORDER BY` columns of the layout, without parentheses.
    fn sorting_key(&self) -> Option<&str> {
        let rest = &self.layout[self.layout.find("ORDER BY ")? + "ORDER BY ".len()..];
        let rest = rest.strip_prefix('(').unwrap_or(rest);
        Some(rest.split(')').next().unwrap_or(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tables_keep_every_run_apart_and_sorting_keys_read_back() {
        let config = strata_schemas::config::load_with_env(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml"),
            |_| None,
        )
        .unwrap();
        let metric = config.metric("page_views_per_minute").unwrap();
        let spec = batch_table_spec(metric);
        assert_eq!(
            spec.sorting_key(),
            Some("window_start_ms, `page`, `country`, run_id")
        );
        assert_eq!(
            normalized_key("window_start_ms, page, country, run_id"),
            normalized_key(spec.sorting_key().unwrap())
        );
        assert_eq!(
            batch_runs_table_spec().sorting_key(),
            Some("metric, run_id")
        );
    }

    #[test]
    fn one_server_gets_the_plain_table() {
        let spec = watermarks_table_spec();
        let statements = spec.statements("db", None);
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].name, "strata_watermarks");
        assert_eq!(statements[0].engine, "ReplacingMergeTree");
        assert_eq!(statements[0].sql, spec.create_sql("db"));
        assert!(
            statements[0].sql.ends_with(
                ") ENGINE = ReplacingMergeTree(version) ORDER BY (metric, layer, kafka_partition)"
            ),
            "{}",
            statements[0].sql
        );
        assert!(
            batch_runs_table_spec()
                .create_sql("db")
                .ends_with(") ENGINE = MergeTree ORDER BY (metric, run_id)")
        );
    }

    #[test]
    fn a_cluster_replicates_metadata_to_every_node() {
        let statements = batch_runs_table_spec().statements("db", Some("c"));
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].engine, "ReplicatedMergeTree");
        let sql = &statements[0].sql;
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS `db`.`strata_batch_runs` ON CLUSTER `c` ("),
            "{sql}"
        );
        assert!(
            sql.ends_with(") ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/db/strata_batch_runs', '{replica}') ORDER BY (metric, run_id)"),
            "{sql}"
        );
    }

    #[test]
    fn a_cluster_shards_window_tables_behind_distributed_tables() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
        let config = strata_schemas::config::load_with_env(&path, |_| None).unwrap();
        let metric = config.metric("page_views_per_minute").unwrap();
        let speed = speed_table_spec(metric).statements("db", Some("c"));
        let names: Vec<&str> = speed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "page_views_per_minute_speed_local",
                "page_views_per_minute_speed"
            ]
        );
        assert!(
            speed[0].sql.contains(") ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/page_views_per_minute_speed', '{replica}', version) PARTITION BY "),
            "{}",
            speed[0].sql
        );
        assert!(
            speed[1].sql.ends_with(") ENGINE = Distributed(`c`, `db`, `page_views_per_minute_speed_local`, cityHash64(window_start_ms, `page`, `country`, kafka_partition))"),
            "{}",
            speed[1].sql
        );
        let batch = batch_table_spec(metric).statements("db", Some("c"));
        assert!(
            batch[0].sql.contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/page_views_per_minute_batch', '{replica}', run_id)"),
            "{}",
            batch[0].sql
        );
        assert!(
            batch[1].sql.ends_with("Distributed(`c`, `db`, `page_views_per_minute_batch_local`, cityHash64(window_start_ms, `page`, `country`))"),
            "{}",
            batch[1].sql
        );
    }

    const MONTH_MS: i64 = 31 * 24 * 3_600_000;

    #[test]
    fn rows_of_few_months_are_one_block() {
        let starts: Vec<i64> = (0..MONTHS_PER_INSERT)
            .map(|m| m * 28 * 24 * 3_600_000)
            .collect();
        assert_eq!(insert_blocks(&starts), None);
        assert_eq!(insert_blocks(&[]), None);
    }

    #[test]
    fn rows_of_many_months_are_cut_into_blocks_of_whole_months() {
        // 120 months, two rows each, in a shuffled order.
        let mut starts = Vec::new();
        for m in (0..120).rev() {
            starts.push(1_199_145_600_000 + m * MONTH_MS);
            starts.push(1_199_145_600_000 + m * MONTH_MS + 60_000);
        }
        let blocks = insert_blocks(&starts).expect("120 months need several inserts");
        assert_eq!(
            blocks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 40]
        );
        let mut rows: Vec<usize> = blocks.concat();
        rows.sort_unstable();
        assert_eq!(rows, (0..240).collect::<Vec<_>>(), "every row exactly once");
        for block in &blocks {
            let months: std::collections::BTreeSet<i64> =
                block.iter().map(|&r| utc_month(starts[r])).collect();
            assert!(months.len() as i64 <= MONTHS_PER_INSERT);
        }
    }
}
