//! What bounds one request: a slot among `serving.max_concurrent_queries`
//! (429 past it), ClickHouse settings on every query (time from
//! `serving.query_timeout`, memory from `serving.query_max_memory_bytes`),
//! and a query id per ClickHouse query so that a request that ends early
//! (timeout, client gone) kills what it started instead of leaving it to
//! run on the server.
//!
//! Every request also gets a request id: returned in `x-request-id`, in the
//! body of every error, in the log lines about it and in the ClickHouse
//! `query_id`s (`strata-api-<request id>-<part>`), so an operator can follow
//! one request from the client to `system.query_log`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clickhouse::Client;
use strata_schemas::Config;
use strata_schemas::config::ClickHouseSection;
use strata_warehouse as warehouse;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics as m;

tokio::task_local! {
    /// The id of the request the current task serves.
    static REQUEST_ID: Arc<str>;
}

/// The current request's id (`-` outside a request).
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_string())
        .unwrap_or_else(|_| "-".into())
}

/// Runs `work` as the request `id`.
pub async fn with_request_id<F: Future>(id: Arc<str>, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// A new request id: unique in the process, and across restarts in practice
/// (it starts from the process start time).
pub fn new_request_id() -> Arc<str> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Fixed width: the start part never runs into the counter, so ids of
    // two processes (API replicas on one ClickHouse) differ when their
    // start times do.
    format!("{:012x}{n:06x}", start & 0xffff_ffff_ffff).into()
}

/// The client the API reads with: `serving.clickhouse_user` (a read-only
/// user) when set, else `clickhouse.user`; every query bounded in time and
/// memory by ClickHouse itself, so a query the API gave up on cannot run on.
pub fn reader_client(config: &Config) -> Client {
    let serving = &config.serving;
    let section = match &serving.clickhouse_user {
        Some(user) => ClickHouseSection {
            user: user.clone(),
            password: serving.clickhouse_password.clone().unwrap_or_default(),
            ..config.clickhouse.clone()
        },
        None => config.clickhouse.clone(),
    };
    // ClickHouse takes whole seconds; rounded up so that the API's own
    // timeout answers first with its clearer message.
    let seconds = serving.query_timeout.0.div_ceil(1000).max(1);
    warehouse::client(&section)
        .with_setting("max_execution_time", seconds.to_string())
        .with_setting("timeout_overflow_mode", "throw")
        .with_setting(
            "max_memory_usage",
            serving.query_max_memory_bytes.to_string(),
        )
}

/// The slots of `serving.max_concurrent_queries`.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>, usize);

impl Slots {
    /// `n` slots.
    pub fn new(n: usize) -> Slots {
        Slots(Arc::new(Semaphore::new(n)), n)
    }

    /// A slot, or 429 when every one is taken: queueing would only make the
    /// clients' timeouts fire while the server is already saturated.
    pub fn take(&self) -> Result<Slot, ApiError> {
        let permit = self.0.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(m::REJECTED_BUSY).increment(1);
            ApiError::Busy(format!(
                "{} queries are already running (serving.max_concurrent_queries); retry shortly",
                self.1
            ))
        })?;
        metrics::gauge!(m::QUERIES_IN_FLIGHT).increment(1.0);
        Ok(Slot(permit))
    }
}

/// A query slot, given back when dropped.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(m::QUERIES_IN_FLIGHT).decrement(1.0);
    }
}

/// The ClickHouse queries of one request. Each gets its own query id
/// (`<prefix>-<part>`); dropped before [`Queries::finish`] (the request
/// timed out, the client went away and the server dropped the handler, or
/// it was refused or failed midway), it kills every query of the request
/// still running. ClickHouse 18.16 notices a client that went away only
/// when it next writes, i.e. not while it aggregates.
pub struct Queries {
    client: Client,
    prefix: String,
    armed: bool,
}

impl Queries {
    /// The queries of the current request, through `client`. Outside a
    /// request (no request id) they get a fresh id of their own: a shared
    /// prefix would let one kill the queries of another.
    pub fn new(client: &Client) -> Queries {
        let id = REQUEST_ID
            .try_with(Arc::clone)
            .unwrap_or_else(|_| new_request_id());
        Queries {
            client: client.clone(),
            prefix: format!("strata-api-{id}"),
            armed: true,
        }
    }

    /// The client for the query named `part` (unique within the request:
    /// ClickHouse refuses two running queries with one id).
    pub fn client(&self, part: &str) -> Client {
        self.client
            .clone()
            .with_setting("query_id", format!("{}-{part}", self.prefix))
    }

    /// The query id prefix (for tests and logs).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every query ended (answered or failed): nothing to kill.
    pub fn finish(mut self) {
        self.armed = false;
    }
}

impl Drop for Queries {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let prefix = std::mem::take(&mut self.prefix);
        runtime.spawn(async move {
            metrics::counter!(m::QUERIES_KILLED).increment(1);
            // The prefix is `strata-api-<hex>`: no LIKE wildcard in it.
            let result = client
                .query("KILL QUERY WHERE query_id LIKE ? ASYNC")
                .bind(format!("{prefix}-%"))
                .execute()
                .await;
            match result {
                Ok(()) => tracing::info!(query_id_prefix = %prefix, "request ended without its answer (timed out, client gone, refused or failed); killed its ClickHouse queries still running"),
                Err(e) => tracing::warn!(query_id_prefix = %prefix, error = %e, "killing the ClickHouse queries of an abandoned request failed; max_execution_time still ends them"),
            }
        });
    }
}
