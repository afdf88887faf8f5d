//! The ClickHouse side of the contract between the layers: table layout,
//! client construction, `strata init`, and error classification.
//!
//! Every table name and column comes from the metric definitions (never from
//! user input), so DDL is assembled from identifiers that config validation
//! has already restricted to `[a-z_][a-z0-9_]*`.
//!
//! The SQL sticks to what ClickHouse 18.16 (Debian's package) and current
//! releases both accept: `ReplacingMergeTree(version)` with `PARTITION BY` /
//! `ORDER BY`, `ALIAS` columns, no `LowCardinality`, no `DateTime64`, no
//! Nullable sorting keys.

use std::fmt::Write as _;
use std::time::Duration;

use clickhouse::Client;
use serde_json::{Map, Value as Json};

use strata_schemas::config::{ClickHouseSection, Config, MetricDef};
use strata_schemas::window::WindowKind;

pub mod rowbinary;
pub mod rows;
pub mod state;

/// Watermarks of both layers, one row per (metric, layer, partition).
pub const WATERMARKS_TABLE: &str = "strata_watermarks";
/// One row per batch run and metric.
pub const BATCH_RUNS_TABLE: &str = "strata_batch_runs";
/// Speed-layer restart points, one row per (consumer group, topic, partition).
pub const SPEED_CHECKPOINTS_TABLE: &str = "strata_speed_checkpoints";

/// A failure talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The server answered with an error or could not be reached.
    #[error("ClickHouse {operation} failed: {source}")]
    ClickHouse {
        /// What Strata was doing.
        operation: String,
        /// The client error.
        #[source]
        source: clickhouse::error::Error,
    },
    /// The server answered with something Strata cannot read.
    #[error("ClickHouse {operation} returned unreadable data: {message}")]
    Decode {
        /// What Strata was doing.
        operation: String,
        /// What is wrong.
        message: String,
    },
    /// A table exists with a different layout.
    #[error(
        "table {table} exists with a different layout: {differences}; drop it (or rename it) and rerun `strata init`, or restore the metric definition it was created from"
    )]
    Drift {
        /// The table.
        table: String,
        /// What differs.
        differences: String,
    },
}

impl WarehouseError {
    /// The ClickHouse exception code, when the server sent one.
    pub fn exception_code(&self) -> Option<u32> {
        match self {
            WarehouseError::ClickHouse { source, .. } => exception_code(source),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WarehouseError::ClickHouse { source, .. } => is_retryable(source),
            _ => false,
        }
    }
}

/// The `Code: N.` of a ClickHouse exception carried in a client error.
pub fn exception_code(e: &clickhouse::error::Error) -> Option<u32> {
    let text = e.to_string();
    let rest = &text[text.find("Code: ")? + 6..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// ClickHouse exception codes that mean the request itself is wrong: sending
/// it again cannot succeed, so the sink fails loudly instead of retrying.
/// (Syntax, unknown table/column/identifier, type mismatch, cannot parse
/// input, too large array, bad arguments, readonly, access denied.)
pub const NON_RETRYABLE_CODES: [u32; 18] = [
    6, 16, 26, 27, 32, 33, 36, 38, 41, 43, 44, 47, 53, 60, 62, 81, 164, 497,
];

/// Whether a client error is worth retrying: network failures, timeouts,
/// and server errors outside [`NON_RETRYABLE_CODES`] (too many parts, memory
/// limits, server shutting down, ...).
pub fn is_retryable(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(_) => {
            exception_code(e).is_none_or(|code| !NON_RETRYABLE_CODES.contains(&code))
        }
        _ => false,
    }
}

/// A client for the configured server. Schema validation is off: it relies
/// on `RowBinaryWithNamesAndTypes`, which ClickHouse 18.16 does not speak.
pub fn client(section: &ClickHouseSection) -> Client {
    Client::default()
        .with_url(section.url.trim_end_matches('/'))
        .with_user(&section.user)
        .with_password(&section.password)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}

fn ch_err(operation: &str) -> impl FnOnce(clickhouse::error::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::ClickHouse {
        operation: operation.to_string(),
        source,
    }
}

/// Runs a statement that returns nothing.
pub async fn execute(client: &Client, sql: &str) -> Result<(), WarehouseError> {
    client
        .query_raw(sql)
        .execute()
        .await
        .map_err(ch_err(sql_head(sql)))
}

/// Runs a query and returns its rows as JSON objects (`JSONEachRow`, with
/// 64-bit integers unquoted). `sql` may contain `?` placeholders that
/// `binds` fill with client-side escaped values.
pub async fn query_rows(
    client: &Client,
    sql: &str,
    binds: &[&str],
) -> Result<Vec<Map<String, Json>>, WarehouseError> {
    let operation = sql_head(sql);
    let bytes = query_bytes(client, sql, binds, "JSONEachRow").await?;
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Json>(line) {
            Ok(Json::Object(row)) => rows.push(row),
            Ok(other) => {
                return Err(WarehouseError::Decode {
                    operation: operation.to_string(),
                    message: format!("expected a JSON object per row, got {other}"),
                });
            }
            Err(e) => {
                return Err(WarehouseError::Decode {
                    operation: operation.to_string(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(rows)
}

/// Runs a query and returns its whole answer in `format` (e.g. `RowBinary`
/// for callers that decode typed columns themselves; JSON formats print
/// 64-bit integers unquoted). `sql` may contain `?` placeholders that
/// `binds` fill with client-side escaped values.
pub async fn query_bytes(
    client: &Client,
    sql: &str,
    binds: &[&str],
    format: &str,
) -> Result<Vec<u8>, WarehouseError> {
    let mut query = client
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0");
    for b in binds {
        query = query.bind(*b);
    }
    let operation = sql_head(sql);
    let mut cursor = query.fetch_bytes(format).map_err(ch_err(operation))?;
    // Chunks are kept until the end so the answer is copied once, into a
    // buffer of its exact size.
    let mut chunks = Vec::new();
    while let Some(chunk) = cursor.next().await.map_err(ch_err(operation))? {
        chunks.push(chunk);
    }
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Inserts JSON rows into `database.table` in one request (`JSONEachRow`).
pub async fn insert_rows(
    client: &Client,
    database: &str,
    table: &str,
    rows: &[Map<String, Json>],
    timeout: Duration,
) -> Result<(), WarehouseError> {
    if rows.is_empty() {
        return Ok(());
    }
    insert_json_each_row(client, database, table, json_each_row(rows).into(), timeout).await
}

/// `rows` as a `JSONEachRow` body: one object per line.
pub fn json_each_row(rows: &[Map<String, Json>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(rows.len() * 256);
    for row in rows {
        // A map of JSON values always serialises; the writer is a Vec.
        serde_json::to_writer(&mut body, row).expect("a JSON map serialises into a Vec");
        body.push(b'\n');
    }
    body
}

/// Inserts a `JSONEachRow` body (one object per line, e.g. written by
/// [`json_each_row`]) into `database.table`. The body is shared, so a
/// retry does not copy it.
pub async fn insert_json_each_row(
    client: &Client,
    database: &str,
    table: &str,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(), WarehouseError> {
    insert(
        client,
        database,
        table,
        &InsertFormat::JsonEachRow,
        body,
        timeout,
    )
    .await
}

/// How an insert's body is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertFormat {
    /// One JSON object per line; columns by name, omitted ones take their
    /// type's zero (ClickHouse 18.16 ignores `DEFAULT` there).
    JsonEachRow,
    /// [`crate::rowbinary`] values of exactly these columns, in this order.
    RowBinary(std::sync::Arc<[String]>),
}

impl InsertFormat {
    /// `RowBinary` of `columns` (name, type), in their order.
    pub fn row_binary(columns: &[(String, String)]) -> Self {
        InsertFormat::RowBinary(columns.iter().map(|(name, _)| name.clone()).collect())
    }
}

/// Inserts `body`, written in `format`, into `database.table`.
pub async fn insert(
    client: &Client,
    database: &str,
    table: &str,
    format: &InsertFormat,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(), WarehouseError> {
    if body.is_empty() {
        return Ok(());
    }
    let target = qualified(database, table);
    let sql = match format {
        InsertFormat::JsonEachRow => format!("INSERT INTO {target} FORMAT JSONEachRow"),
        InsertFormat::RowBinary(columns) => {
            // Column names come from validated config and contracts
            // (identifiers: `[a-z_][a-z0-9_]*`), never from a request.
            debug_assert!(
                columns
                    .iter()
                    .all(|c| strata_schemas::contract::is_identifier(c))
            );
            let list: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
            format!(
                "INSERT INTO {target} ({}) FORMAT RowBinary",
                list.join(", ")
            )
        }
    };
    let operation = format!("insert into {database}.{table}");
    let mut insert = client
        .insert_formatted_with(sql)
        .with_timeouts(Some(timeout), Some(timeout));
    insert.send(body).await.map_err(ch_err(&operation))?;
    insert.end().await.map_err(ch_err(&operation))
}

fn sql_head(sql: &str) -> &str {
    let head = sql.trim_start();
    match head.char_indices().nth(60) {
        Some((i, _)) => &head[..i],
        None => head,
    }
}

/// The current time as a ClickHouse `DateTime` literal (UTC). Written
/// explicitly because ClickHouse 18.16 fills columns omitted from
/// `JSONEachRow` with zero values, not with their `DEFAULT` expressions.
pub fn now_datetime() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `` `db`.`table` ``.
pub fn qualified(database: &str, table: &str) -> String {
    format!("`{database}`.`{table}`")
}

/// Name of a metric's speed view table.
pub fn speed_table(metric: &str) -> String {
    format!("{metric}_speed")
}

/// Name of a metric's batch view table.
pub fn batch_table(metric: &str) -> String {
    format!("{metric}_batch")
}

/// A table Strata manages: its name, columns and engine clause.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    /// Table name (without database).
    pub name: String,
    /// (name, type, extra) — `extra` is e.g. `DEFAULT now()` or `ALIAS ...`.
    pub columns: Vec<(String, String, String)>,
    /// Everything after the column list.
    pub engine: String,
}

impl TableSpec {
    /// `CREATE TABLE IF NOT EXISTS ...`.
    pub fn create_sql(&self, database: &str) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n",
            qualified(database, &self.name)
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
        let _ = write!(sql, ") {}", self.engine);
        sql
    }
}

fn col(name: &str, ty: &str) -> (String, String, String) {
    (name.to_string(), ty.to_string(), String::new())
}

const DAY_PARTITION: &str = "toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))";

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
        engine: format!(
            "ENGINE = ReplacingMergeTree(version) PARTITION BY {DAY_PARTITION} ORDER BY ({})",
            sorting_key(metric, &["kafka_partition"])
        ),
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
/// the newest run wins.
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
        engine: format!(
            "ENGINE = ReplacingMergeTree(run_id) PARTITION BY {DAY_PARTITION} ORDER BY ({})",
            sorting_key(metric, &[])
        ),
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
        engine: "ENGINE = ReplacingMergeTree(version) ORDER BY (metric, layer, kafka_partition)"
            .into(),
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
        engine: "ENGINE = MergeTree ORDER BY (metric, run_id)".into(),
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
        engine: "ENGINE = ReplacingMergeTree(version) ORDER BY (group_id, topic, kafka_partition)"
            .into(),
    }
}

/// Every table `strata init` manages for a configuration, in creation order.
pub fn all_table_specs(config: &Config) -> Vec<TableSpec> {
    let mut specs = vec![
        watermarks_table_spec(),
        batch_runs_table_spec(),
        speed_checkpoints_table_spec(),
    ];
    for m in &config.metrics {
        specs.push(speed_table_spec(m));
        specs.push(batch_table_spec(m));
    }
    specs
}

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
/// `[from_ms, to_ms)`, retracted rows left out. Deduplicates with `argMax`
/// instead of `FINAL` so it reads a consistent snapshot on every ClickHouse
/// version. One `?` placeholder (the metric name, for the batch view) must
/// be bound. Identifiers come only from the metric definition; the two
/// bounds are integers.
pub fn view_sql(
    database: &str,
    metric: &MetricDef,
    view: View,
    from_ms: i64,
    to_ms: i64,
) -> String {
    let mut keys = vec!["window_start_ms".to_string()];
    keys.extend(metric.group_by.iter().map(|g| format!("`{}`", g.name)));
    let (table, version) = match view {
        View::Batch { .. } => (batch_table(&metric.name), "run_id"),
        View::Speed => {
            keys.push("kafka_partition".into());
            (speed_table(&metric.name), "version")
        }
    };
    let mut values = vec!["window_end_ms".to_string()];
    values.extend(state::columns(&metric.plan).into_iter().map(|c| c.name));
    if view == View::Speed {
        values.push("is_final".into());
    }
    let mut select = keys.clone();
    for v in &values {
        select.push(format!("argMax(`{v}`, {version}) AS `_v_{v}`"));
    }
    select.push(format!("argMax(retracted, {version}) AS `_retracted`"));
    let mut filter = format!("window_start_ms >= {from_ms} AND window_start_ms < {to_ms}");
    if let View::Batch { run_id } = view {
        let _ = write!(
            filter,
            " AND run_id IN (SELECT run_id FROM {} WHERE metric = ? AND status = 'published' AND run_id <= {run_id})",
            qualified(database, BATCH_RUNS_TABLE)
        );
    }
    format!(
        "SELECT {} FROM {} WHERE {filter} GROUP BY {} HAVING `_retracted` = 0",
        select.join(", "),
        qualified(database, &table),
        keys.join(", ")
    )
}

/// Renames the `_v_<column>` fields of a [`view_sql`] row back to `<column>`.
pub fn unprefix_view_row(row: Map<String, Json>) -> Map<String, Json> {
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
    let mut merged: std::collections::BTreeMap<(i64, String), ViewRow> =
        std::collections::BTreeMap::new();
    for row in rows {
        let row = unprefix_view_row(row);
        let start = row
            .get("window_start_ms")
            .and_then(json_i64)
            .unwrap_or_default();
        let end = row
            .get("window_end_ms")
            .and_then(json_i64)
            .unwrap_or_default();
        let key: Vec<Json> = metric
            .group_by
            .iter()
            .map(|g| row.get(&g.name).cloned().unwrap_or(Json::Null))
            .collect();
        let acc = state::read_json(&metric.plan, &row).map_err(|e| WarehouseError::Decode {
            operation: format!("read {} view of {}", view_name(view), metric.name),
            message: e.to_string(),
        })?;
        let is_final = match view {
            View::Batch { .. } => true,
            View::Speed => row.get("is_final").and_then(json_u64).unwrap_or(0) == 1,
        };
        let text = serde_json::to_string(&key).unwrap_or_default();
        match merged.entry((start, text)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let v = e.get_mut();
                v.acc.merge(&acc);
                v.end_ms = v.end_ms.max(end);
                v.is_final &= is_final;
            }
            std::collections::btree_map::Entry::Vacant(e) => {
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

/// A JSON number or numeric string as `i64` (ClickHouse may quote 64-bit integers).
pub fn json_i64(v: &Json) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// A JSON number or numeric string as `u64`.
pub fn json_u64(v: &Json) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Whether a metric's windows have a fixed length (tumbling, hopping).
pub fn has_fixed_windows(metric: &MetricDef) -> bool {
    !matches!(metric.window, WindowKind::Session { .. })
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
/// against the expected layout. Idempotent: a second run changes nothing.
pub async fn init(client: &Client, config: &Config) -> Result<InitReport, WarehouseError> {
    let database = &config.clickhouse.database;
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
            &format!("CREATE DATABASE IF NOT EXISTS `{database}`"),
        )
        .await?;
        report.created_database = true;
    }
    for spec in all_table_specs(config) {
        let existing = query_rows(
            client,
            "SELECT name, type FROM system.columns WHERE database = ? AND table = ?",
            &[database, &spec.name],
        )
        .await?;
        if existing.is_empty() {
            execute(client, &spec.create_sql(database)).await?;
            tracing::info!(database = %database, table = %spec.name, "created table");
            report.created.push(spec.name);
            continue;
        }
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
        if !differences.is_empty() {
            return Err(WarehouseError::Drift {
                table: format!("{database}.{}", spec.name),
                differences: differences.join("; "),
            });
        }
        report.unchanged.push(spec.name);
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
                &format!("DROP TABLE IF EXISTS {}", qualified(database, &name)),
            )
            .await?;
        }
        execute(client, &merged_view_sql(database, metric)).await?;
        tracing::info!(database = %database, view = %name, "created merged view");
        report.created.push(name);
    }
    Ok(report)
}

/// Name of a metric's merged (batch + speed) ClickHouse view.
pub fn merged_view(metric: &str) -> String {
    format!("{metric}_merged")
}

/// The columns of the merged view, in order.
pub fn merged_view_columns(metric: &MetricDef) -> Vec<String> {
    let mut cols = vec![
        "window_start_ms".to_string(),
        "window_end_ms".to_string(),
        "window_start".to_string(),
        "window_end".to_string(),
    ];
    cols.extend(metric.group_by.iter().map(|g| g.name.clone()));
    cols.extend(metric.plan.output_columns().into_iter().map(|c| c.name));
    cols.push("source".to_string());
    cols
}

/// `CREATE VIEW` of the merged answer for Grafana and SQL users: windows
/// before the newest published batch watermark from that run of the batch
/// view, the others from the speed view, partitions merged. It gives the
/// API's numbers for count, sum, avg, min and max; `count_distinct` is the
/// exact union of the stored hashes (equal to the API while each partial
/// holds at most 4096 distinct values, below the sketch's exact limit), and
/// quantiles are left to the API (null here).
pub fn merged_view_sql(database: &str, metric: &MetricDef) -> String {
    use strata_schemas::aggregate::AggFunction;
    let name = metric.name.replace('\'', "");
    let runs = format!(
        "(SELECT run_id FROM {} WHERE metric = '{name}' AND status = 'published')",
        qualified(database, BATCH_RUNS_TABLE)
    );
    let watermark = format!(
        "(SELECT max(watermark_ms) FROM {} WHERE metric = '{name}' AND status = 'published')",
        qualified(database, BATCH_RUNS_TABLE)
    );
    let groups: Vec<String> = metric
        .group_by
        .iter()
        .map(|g| format!("`{}`", g.name))
        .collect();
    let states: Vec<String> = state::columns(&metric.plan)
        .into_iter()
        .map(|c| c.name)
        .collect();
    let dedup = |version: &str, extra_key: &str| {
        let mut select = vec!["window_start_ms".to_string()];
        select.extend(groups.iter().cloned());
        select.push(format!(
            "argMax(window_end_ms, {version}) AS s_window_end_ms"
        ));
        for c in &states {
            select.push(format!("argMax(`{c}`, {version}) AS `s_{c}`"));
        }
        select.push(format!("argMax(retracted, {version}) AS s_retracted"));
        let mut key = vec!["window_start_ms".to_string()];
        key.extend(groups.iter().cloned());
        if !extra_key.is_empty() {
            key.push(extra_key.to_string());
        }
        (select.join(", "), key.join(", "))
    };
    let (batch_select, batch_key) = dedup("run_id", "");
    let (speed_select, speed_key) = dedup("version", "kafka_partition");
    let batch = format!(
        "SELECT {batch_select}, 'batch' AS s_source FROM {} WHERE run_id IN {runs} AND window_start_ms < {watermark} GROUP BY {batch_key} HAVING s_retracted = 0",
        qualified(database, &batch_table(&metric.name))
    );
    let speed = format!(
        "SELECT {speed_select}, 'speed' AS s_source FROM {} WHERE window_start_ms >= {watermark} GROUP BY {speed_key} HAVING s_retracted = 0",
        qualified(database, &speed_table(&metric.name))
    );
    let mut outer = vec![
        "window_start_ms".to_string(),
        "max(s_window_end_ms) AS window_end_ms".to_string(),
        "toDateTime(intDiv(window_start_ms, 1000)) AS window_start".to_string(),
        "toDateTime(intDiv(max(s_window_end_ms), 1000)) AS window_end".to_string(),
    ];
    outer.extend(groups.iter().cloned());
    for c in metric.plan.output_columns() {
        let a = &metric.plan.aggregations()[c.aggregation];
        let f = a.field.as_ref().map(|f| f.name.clone()).unwrap_or_default();
        let expr = match a.function {
            AggFunction::Count => "sum(s_agg_events)".to_string(),
            AggFunction::Sum => format!("sum(`s_agg_{f}_sum`)"),
            AggFunction::Avg => format!(
                "if(sum(`s_agg_{f}_count`) > 0, sum(`s_agg_{f}_sum`) / sum(`s_agg_{f}_count`), NULL)"
            ),
            AggFunction::Min => format!(
                "if(sum(`s_agg_{f}_count`) > 0, minIf(`s_agg_{f}_min`, `s_agg_{f}_count` > 0), NULL)"
            ),
            AggFunction::Max => format!(
                "if(sum(`s_agg_{f}_count`) > 0, maxIf(`s_agg_{f}_max`, `s_agg_{f}_count` > 0), NULL)"
            ),
            AggFunction::CountDistinct => {
                format!("length(groupUniqArrayArray(`s_agg_{f}_distinct_hashes`))")
            }
            AggFunction::Quantiles => "CAST(NULL AS Nullable(Float64))".to_string(),
        };
        outer.push(format!("{expr} AS `{}`", c.name));
    }
    outer.push("any(s_source) AS source".to_string());
    let mut key = vec!["window_start_ms".to_string()];
    key.extend(groups.iter().cloned());
    format!(
        "CREATE VIEW IF NOT EXISTS {} AS SELECT {} FROM ({batch} UNION ALL {speed}) GROUP BY {}",
        qualified(database, &merged_view(&metric.name)),
        outer.join(", "),
        key.join(", ")
    )
}
