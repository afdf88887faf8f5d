//! Writing speed rows and checkpoints to ClickHouse, with retries.
//!
//! [`SpeedTables`] is the operator's ClickHouse [`RowSink`]: it writes each
//! row as `RowBinary`, straight from the state, into one body per speed
//! table, which [`insert_once`] sends.
//!
//! Failures are split the way ClickHouse reports them: network errors,
//! timeouts and server-side overload are retried with exponential backoff
//! (the caller pauses consumption meanwhile, so memory stays bounded and
//! nothing is dropped); errors that mean the request itself is wrong (syntax,
//! unknown column, type mismatch, ...; see
//! [`strata_warehouse::NON_RETRYABLE_CODES`]) are returned at once,
//! because repeating them cannot succeed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Client;
use serde_json::{Map, Value as Json};
use strata_schemas::MetricDef;
use strata_warehouse::{self as warehouse, InsertFormat, WarehouseError, rowbinary};

use crate::metrics as m;
use crate::operator::{RowSink, SpeedRow};

/// Speed rows bound for ClickHouse: one `RowBinary` body per speed table
/// (see [`strata_warehouse::rowbinary`]), each row written straight from
/// its state in the column order of [`warehouse::speed_row_columns`],
/// never as a map per row. One sink takes the rows of every partition of a
/// flush, so each table is inserted once.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedTables {
    /// `updated_at` of every row, Unix seconds.
    updated_at_s: u32,
    /// In the order their first row came.
    tables: Vec<SpeedTableRows>,
    /// Index in `tables` of the last row's table: rows come metric by
    /// metric, so the table is looked up once per metric, not per row.
    last: usize,
}

impl SpeedTables {
    /// No rows yet; every row will be stamped `updated_at_s` (Unix
    /// seconds).
    pub fn new(updated_at_s: u32) -> Self {
        SpeedTables {
            updated_at_s,
            tables: Vec::new(),
            last: 0,
        }
    }

    /// Number of rows, over all tables.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.count).sum()
    }

    /// The tables with rows, in the order their first row came.
    pub fn tables(&self) -> &[SpeedTableRows] {
        &self.tables
    }

    /// The tables with rows, by table name.
    pub fn into_tables(mut self) -> Vec<SpeedTableRows> {
        self.tables.sort_by(|a, b| a.table.cmp(&b.table));
        self.tables
    }

    /// The rows of `metric`'s table.
    fn table_of(&mut self, metric: &MetricDef) -> &mut SpeedTableRows {
        if self
            .tables
            .get(self.last)
            .is_none_or(|t| t.metric != metric.name)
        {
            self.last = match self.tables.iter().position(|t| t.metric == metric.name) {
                Some(at) => at,
                None => {
                    self.tables.push(SpeedTableRows::new(metric));
                    self.tables.len() - 1
                }
            };
        }
        &mut self.tables[self.last]
    }
}

impl RowSink for SpeedTables {
    fn push(&mut self, row: &SpeedRow<'_>) {
        let updated_at_s = self.updated_at_s;
        let table = self.table_of(row.metric);
        table.row_starts.push(table.body.len());
        let out = &mut table.body;
        rowbinary::write_i64(out, row.window.start_ms);
        rowbinary::write_i64(out, row.window.end_ms);
        for (field, value) in row.metric.group_by.iter().zip(row.key_values()) {
            rowbinary::write_key_value(out, value, field.ty);
        }
        rowbinary::write_i32(out, row.kafka_partition);
        warehouse::state::write_rowbinary(row.state, out);
        rowbinary::write_i64(out, row.first_offset);
        rowbinary::write_i64(out, row.last_offset);
        rowbinary::write_u64(out, row.version);
        rowbinary::write_u8(out, u8::from(row.retracted));
        rowbinary::write_u8(out, u8::from(row.is_final));
        rowbinary::write_datetime(out, updated_at_s);
        table.count += 1;
    }
}

/// The rows of one metric's speed table, as one `RowBinary` body.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedTableRows {
    metric: String,
    table: String,
    /// (name, ClickHouse type) of every column of a row, in order.
    columns: Vec<(String, String)>,
    body: Vec<u8>,
    /// Where each row starts in `body` (a row starts with its window
    /// start), to cut the body into blocks ClickHouse accepts.
    row_starts: Vec<usize>,
    count: usize,
}

impl SpeedTableRows {
    fn new(metric: &MetricDef) -> Self {
        SpeedTableRows {
            metric: metric.name.clone(),
            table: warehouse::speed_table(&metric.name),
            columns: warehouse::speed_row_columns(metric),
            body: Vec::new(),
            row_starts: Vec::new(),
            count: 0,
        }
    }

    /// The metric whose rows these are.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The speed table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Number of rows.
    pub fn count(&self) -> usize {
        self.count
    }

    /// How the body is inserted.
    pub fn format(&self) -> InsertFormat {
        InsertFormat::row_binary(&self.columns)
    }

    /// The rows as insert bodies with their row counts: one body, unless
    /// the rows' windows span more months than one insert may touch
    /// ([`warehouse::insert_blocks`]), which a replay of old events can do.
    pub fn into_blocks(self) -> Vec<(Vec<u8>, usize)> {
        let row_end = |row: usize| {
            self.row_starts
                .get(row + 1)
                .copied()
                .unwrap_or(self.body.len())
        };
        let window_starts: Vec<i64> = self
            .row_starts
            .iter()
            .map(|&at| {
                let bytes = self.body[at..at + 8]
                    .try_into()
                    .expect("a row starts with an Int64");
                i64::from_le_bytes(bytes)
            })
            .collect();
        let Some(blocks) = warehouse::insert_blocks(&window_starts) else {
            return vec![(self.body, self.count)];
        };
        blocks
            .into_iter()
            .map(|rows| {
                let mut body = Vec::new();
                for &row in &rows {
                    body.extend_from_slice(&self.body[self.row_starts[row]..row_end(row)]);
                }
                (body, rows.len())
            })
            .collect()
    }

    /// Every row read back into a map keyed by column name, for tests and
    /// tools that inspect rows.
    pub fn parsed(&self) -> Vec<Map<String, Json>> {
        rowbinary::read_rows(&self.body, &self.columns)
            .expect("the sink writes the rows of its columns")
    }
}

/// Backoff between retries: 100 ms doubling up to 5 s.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// One insert attempt of a body of `rows` rows, written in `format`, into
/// `database.table`, with metrics.
pub async fn insert_once(
    client: &Client,
    database: &str,
    table: &str,
    format: &InsertFormat,
    body: Bytes,
    rows: usize,
) -> Result<(), WarehouseError> {
    let started = Instant::now();
    let result = warehouse::insert(
        client,
        database,
        table,
        format,
        body,
        Duration::from_secs(10),
    )
    .await;
    let outcome = match &result {
        Ok(()) => "ok",
        Err(e) if e.is_retryable() => "retryable_error",
        Err(_) => "error",
    };
    metrics::counter!(m::SINK_BATCHES, "table" => table.to_string(), "outcome" => outcome)
        .increment(1);
    if result.is_ok() {
        metrics::counter!(m::SINK_ROWS, "table" => table.to_string()).increment(rows as u64);
        metrics::histogram!(m::SINK_LATENCY, "table" => table.to_string())
            .record(started.elapsed().as_secs_f64());
    }
    result
}
