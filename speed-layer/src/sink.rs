//! Writing speed rows and checkpoints to ClickHouse, with retries.
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
use strata_warehouse::{self as warehouse, InsertFormat, WarehouseError};

use crate::metrics as m;

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
