//! One batch run per metric at a time: a lease in ClickHouse
//! (`strata_batch_leases`).
//!
//! The scheduler, `strata batch run --once` and `strata batch backfill` may
//! run at the same moment, on one host or several. Two runs of one metric
//! computed from the same published run would each retract only what that
//! run held, so the windows of one could stay visible beside the other's
//! (sessions counted twice), and the later publication could carry the
//! older watermark. ClickHouse has no compare-and-set, so a run claims by
//! inserting a row, then reads every live claim of the metric: the oldest
//! claim (by claim time, then holder) holds the lease, and every reader
//! computes the same winner from the same rows. A claim that loses is
//! released at once, so it never blocks the next run. Because an insert
//! that is slow to become visible could be missed by the first read, the
//! winner reads again after [`SETTLE`] and keeps the lease only if it still
//! wins; the run also re-checks, just before publishing, that it still
//! holds the lease and that no other run published since it started
//! (`crate::run`), so the remaining window (an insert slower than the
//! settle time, or clocks more than that apart) can cost a wasted run, not a
//! wrong view.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use clickhouse::Client;
use strata_warehouse::rows::LeaseRow;
use strata_warehouse::{self as warehouse, BATCH_LEASES_TABLE};

use crate::BatchError;

/// How long a claim lives unless renewed. A holder renews every third of
/// it, so a run that died frees its metric within this time.
pub const LEASE_TTL: Duration = Duration::from_secs(300);
/// How long a winner waits before it reads the claims a second time.
pub const SETTLE: Duration = Duration::from_millis(500);
/// Pause between attempts of a run that waits for the lease.
const RETRY: Duration = Duration::from_secs(1);

/// A held lease; renewed in the background until [`Lease::release`] (or,
/// if dropped, until it lapses).
pub struct Lease {
    client: Client,
    database: String,
    metric: String,
    holder: String,
    claimed_ms: i64,
    version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    renewer: tokio::task::JoinHandle<()>,
}

/// A process-unique claimant id: 128 random bits, the host and the pid.
fn holder_id() -> String {
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!(
        "{:016x}{:016x}@{host}:{}",
        random(1),
        random(2),
        std::process::id()
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn write(client: &Client, database: &str, row: &LeaseRow<'_>) -> Result<(), BatchError> {
    warehouse::insert_rows(
        client,
        database,
        BATCH_LEASES_TABLE,
        &[row.to_json()],
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// Who holds `metric`'s lease now, if anyone.
async fn holder(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<Option<warehouse::run_log::LeaseClaim>, BatchError> {
    Ok(
        warehouse::run_log::lease_claims(client, database, metric, now_ms())
            .await?
            .into_iter()
            .next(),
    )
}

/// Claims `metric`'s lease, retrying for up to `wait`. `Ok(Err(claim))`
/// when another run still holds it after `wait` (its claim, for the report).
pub async fn acquire(
    client: &Client,
    database: &str,
    metric: &str,
    wait: Duration,
) -> Result<Result<Lease, warehouse::run_log::LeaseClaim>, BatchError> {
    // Databases initialised before leases existed get the table here (two
    // runs may race to create it: the loser finds it there).
    if !warehouse::run_log::table_exists(client, database, BATCH_LEASES_TABLE).await? {
        let created = warehouse::execute(
            client,
            &warehouse::batch_leases_table_spec().create_sql(database),
        )
        .await;
        if let Err(e) = created
            && !warehouse::run_log::table_exists(client, database, BATCH_LEASES_TABLE).await?
        {
            return Err(e.into());
        }
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        // A fresh claimant per attempt: the released claim of the last
        // attempt has a higher version than a new claim under its id.
        let holder = holder_id();
        let claimed_ms = now_ms();
        let ttl = LEASE_TTL.as_millis() as i64;
        let mut row = LeaseRow {
            metric,
            holder: &holder,
            claimed_ms,
            expires_ms: claimed_ms + ttl,
            released: false,
            version: 1,
        };
        write(client, database, &row).await?;
        let mut winner = None;
        for check in 0..2 {
            if check == 1 {
                tokio::time::sleep(SETTLE).await;
            }
            let claims =
                warehouse::run_log::lease_claims(client, database, metric, now_ms()).await?;
            match claims.into_iter().next() {
                Some(first) if first.holder == holder => winner = None,
                Some(first) => {
                    winner = Some(first);
                    break;
                }
                // Not even our own claim is visible: never run on a lease
                // nobody can see.
                None if check == 1 => {
                    return Err(BatchError::Usage(format!(
                        "the batch lease claim of {metric} is not visible in {BATCH_LEASES_TABLE} after it was written; is the table replicated asynchronously?"
                    )));
                }
                None => {}
            }
        }
        let Some(other) = winner else {
            tracing::debug!(metric, holder = %holder, "batch lease acquired");
            let version = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
            let renewer = tokio::spawn(renew(
                client.clone(),
                database.to_string(),
                metric.to_string(),
                holder.clone(),
                claimed_ms,
                version.clone(),
            ));
            return Ok(Ok(Lease {
                client: client.clone(),
                database: database.to_string(),
                metric: metric.to_string(),
                holder,
                claimed_ms,
                version,
                renewer,
            }));
        };
        // Lost: give the claim up at once so it never blocks a later run.
        row.released = true;
        row.version = 2;
        write(client, database, &row).await?;
        if std::time::Instant::now() + RETRY > deadline {
            return Ok(Err(other));
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn renew(
    client: Client,
    database: String,
    metric: String,
    holder: String,
    claimed_ms: i64,
    version: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        let v = version.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let row = LeaseRow {
            metric: &metric,
            holder: &holder,
            claimed_ms,
            expires_ms: now_ms() + LEASE_TTL.as_millis() as i64,
            released: false,
            version: v,
        };
        if let Err(e) = write(&client, &database, &row).await {
            // The pre-publication check notices a lapsed lease.
            tracing::warn!(metric = %metric, error = %e, "cannot renew the batch lease");
        }
    }
}

impl Lease {
    /// The claimant id of this lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Hands the lease over to a planned run whose workers are other
    /// processes (`strata batch chunk` pods): stops renewing it here and
    /// extends the claim to `ttl` from now; the workers renew it
    /// ([`renew_claim`]) and the publisher releases it ([`release_claim`]).
    /// From here on versions are wall-clock milliseconds, so any worker's
    /// renewal supersedes the counters this process used.
    pub async fn hand_over(self, ttl: Duration) -> Result<String, BatchError> {
        self.renewer.abort();
        let row = LeaseRow {
            metric: &self.metric,
            holder: &self.holder,
            claimed_ms: self.claimed_ms,
            expires_ms: now_ms() + ttl.as_millis() as i64,
            released: false,
            version: now_ms().max(0) as u64,
        };
        write(&self.client, &self.database, &row).await?;
        Ok(self.holder.clone())
    }

    /// Whether this lease is still the metric's live claim that wins.
    pub async fn still_held(&self) -> Result<bool, BatchError> {
        let first = holder(&self.client, &self.database, &self.metric).await?;
        Ok(first.is_some_and(|c| c.holder == self.holder))
    }

    /// Gives the lease up (the next run need not wait for it to lapse).
    pub async fn release(self) -> Result<(), BatchError> {
        self.renewer.abort();
        let v = self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        // The release keeps a future expiry: see `lease_claims`.
        let row = LeaseRow {
            metric: &self.metric,
            holder: &self.holder,
            claimed_ms: self.claimed_ms,
            expires_ms: now_ms() + LEASE_TTL.as_millis() as i64,
            released: true,
            version: v,
        };
        write(&self.client, &self.database, &row).await
    }
}

/// Renews the claim of `holder` (a handed-over lease) to `ttl` from now if
/// it still holds the metric's lease; `false` when it no longer does (it
/// lapsed or was released: the plan it guarded is abandoned).
pub async fn renew_claim(
    client: &Client,
    database: &str,
    metric: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, BatchError> {
    let Some(first) = self::holder(client, database, metric).await? else {
        return Ok(false);
    };
    if first.holder != holder {
        return Ok(false);
    }
    let row = LeaseRow {
        metric,
        holder,
        claimed_ms: first.claimed_ms,
        expires_ms: now_ms() + ttl.as_millis() as i64,
        released: false,
        version: now_ms().max(0) as u64,
    };
    write(client, database, &row).await?;
    Ok(true)
}

/// Whether `holder` holds `metric`'s lease now.
pub async fn held_by(
    client: &Client,
    database: &str,
    metric: &str,
    holder: &str,
) -> Result<bool, BatchError> {
    Ok(self::holder(client, database, metric)
        .await?
        .is_some_and(|c| c.holder == holder))
}

/// Releases the claim of `holder` (a handed-over lease).
pub async fn release_claim(
    client: &Client,
    database: &str,
    metric: &str,
    holder: &str,
    claimed_ms: i64,
) -> Result<(), BatchError> {
    let row = LeaseRow {
        metric,
        holder,
        claimed_ms,
        expires_ms: now_ms() + LEASE_TTL.as_millis() as i64,
        released: true,
        // Above the renewal of this very millisecond.
        version: now_ms().max(0) as u64 + 1,
    };
    write(client, database, &row).await
}

/// The claim time of `holder`'s live claim on `metric`, if it is live.
pub async fn claimed_at(
    client: &Client,
    database: &str,
    metric: &str,
    holder: &str,
) -> Result<Option<i64>, BatchError> {
    Ok(
        warehouse::run_log::lease_claims(client, database, metric, now_ms())
            .await?
            .into_iter()
            .find(|c| c.holder == holder)
            .map(|c| c.claimed_ms),
    )
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A run that failed stops renewing; its claim lapses after the TTL.
        self.renewer.abort();
    }
}
