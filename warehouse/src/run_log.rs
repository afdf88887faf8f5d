//! What readers and the batch layer ask of the shared bookkeeping tables:
//! the batch run log (`strata_batch_runs`, the batch layer's commit log),
//! the watermarks mirror and the existence of tables. Every query here
//! binds the metric name; identifiers come from the configuration.

use std::collections::HashMap;

use clickhouse::Client;

use crate::{
    BATCH_LEASES_TABLE, BATCH_RUNS_TABLE, WATERMARKS_TABLE, WarehouseError, batch_table, json_i64,
    json_u64, qualified, query_rows,
};

/// What a query of the merged answer reads before the views: the newest
/// published batch run `(run_id, watermark_ms)` and the speed watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryState {
    /// The newest published batch run and its watermark, if any.
    pub batch: Option<(u64, i64)>,
    /// Min over the speed layer's partitions, if it reported any.
    pub speed_watermark: Option<i64>,
}

/// The newest published batch run and the speed watermark (the minimum
/// over the speed layer's partitions that have one) in one round trip. The
/// run id and the watermark come from one aggregation over one read of the
/// run log, so they always belong to the same run.
///
/// They are not folded into the data query as scalar subqueries: ClickHouse
/// 18.16 evaluates every occurrence of a scalar subquery separately (checked
/// with `(SELECT rand())` twice), so the batch half and the speed half could
/// see different watermarks if a run were published in between, and a
/// window would be read twice or not at all.
pub async fn query_state(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<QueryState, WarehouseError> {
    // Both halves cast every column to the same type, so UNION ALL needs
    // no type unification on any server version.
    let sql = format!(
        "SELECT toUInt8(0) AS part, toUInt64(count()) AS n, toUInt64(max(run_id)) AS run, toInt64(argMax(watermark_ms, run_id)) AS w \
         FROM {} WHERE metric = ? AND status = 'published' \
         UNION ALL SELECT toUInt8(1) AS part, toUInt64(1) AS n, toUInt64(0) AS run, toInt64(argMax(watermark_ms, version)) AS w \
         FROM {} WHERE metric = ? AND layer = 'speed' GROUP BY kafka_partition",
        qualified(database, BATCH_RUNS_TABLE),
        qualified(database, WATERMARKS_TABLE),
    );
    let rows = query_rows(client, &sql, &[metric, metric]).await?;
    let mut state = QueryState {
        batch: None,
        speed_watermark: None,
    };
    for row in &rows {
        let field = |name: &str| row.get(name).and_then(json_i64);
        match (field("part"), field("n"), field("w")) {
            (Some(0), Some(n), Some(w)) if n > 0 => {
                let run = row.get("run").and_then(json_u64);
                state.batch = run.map(|run| (run, w));
            }
            // Partitions without a watermark yet (i64::MIN) do not hold
            // the minimum down.
            (Some(1), _, Some(w)) if w > i64::MIN => {
                state.speed_watermark = Some(state.speed_watermark.map_or(w, |s| s.min(w)));
            }
            _ => {}
        }
    }
    Ok(state)
}

/// The largest run id a metric has used, in its run log or in its batch
/// view (a run killed before publishing leaves rows but no log entry); 0
/// when none.
pub async fn last_run_id(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<u64, WarehouseError> {
    let max_of = |rows: Vec<serde_json::Map<String, serde_json::Value>>| {
        rows.first()
            .and_then(|r| r.get("r"))
            .and_then(json_u64)
            .unwrap_or(0)
    };
    let logged = query_rows(
        client,
        &format!(
            "SELECT max(run_id) AS r FROM {} WHERE metric = ?",
            qualified(database, BATCH_RUNS_TABLE)
        ),
        &[metric],
    )
    .await?;
    let written = query_rows(
        client,
        &format!(
            "SELECT max(run_id) AS r FROM {}",
            qualified(database, &batch_table(metric))
        ),
        &[],
    )
    .await?;
    Ok(max_of(logged).max(max_of(written)))
}

/// The ranges `(from_ms, to_ms)` of a metric's published backfill runs,
/// each with its newest run id.
pub async fn published_backfills(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<HashMap<(i64, i64), u64>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT from_ms, to_ms, max(run_id) AS r FROM {} WHERE metric = ? AND status = 'published' AND message = 'backfill' GROUP BY from_ms, to_ms",
            qualified(database, BATCH_RUNS_TABLE)
        ),
        &[metric],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                (
                    r.get("from_ms").and_then(json_i64)?,
                    r.get("to_ms").and_then(json_i64)?,
                ),
                r.get("r").and_then(json_u64)?,
            ))
        })
        .collect())
}

/// A live claim of a metric's batch-run lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseClaim {
    /// Who claims.
    pub holder: String,
    /// When the claim was made (epoch ms).
    pub claimed_ms: i64,
    /// When it lapses unless renewed (epoch ms).
    pub expires_ms: i64,
}

/// The live claims of a metric's lease at `now_ms` (newest row of each
/// holder, neither released nor expired), oldest first: the first one holds
/// the lease. Rows whose expiry passed are left out before the newest row
/// is picked; a release keeps the expiry of the row it ends, so it is never
/// filtered out while the claim it releases would still be live.
pub async fn lease_claims(
    client: &Client,
    database: &str,
    metric: &str,
    now_ms: i64,
) -> Result<Vec<LeaseClaim>, WarehouseError> {
    // `now_ms` is an integer of ours, not user text.
    let rows = query_rows(
        client,
        &format!(
            "SELECT holder, argMax(claimed_ms, version) AS c, argMax(expires_ms, version) AS e, argMax(released, version) AS r \
             FROM {} WHERE metric = ? AND expires_ms > {now_ms} GROUP BY holder HAVING r = 0 AND e > {now_ms}",
            qualified(database, BATCH_LEASES_TABLE)
        ),
        &[metric],
    )
    .await?;
    let mut claims: Vec<LeaseClaim> = rows
        .iter()
        .filter_map(|r| {
            Some(LeaseClaim {
                holder: r.get("holder")?.as_str()?.to_string(),
                claimed_ms: r.get("c").and_then(json_i64)?,
                expires_ms: r.get("e").and_then(json_i64)?,
            })
        })
        .collect();
    claims.sort_by(|a, b| (a.claimed_ms, &a.holder).cmp(&(b.claimed_ms, &b.holder)));
    Ok(claims)
}

/// Whether `database.table` exists.
pub async fn table_exists(
    client: &Client,
    database: &str,
    table: &str,
) -> Result<bool, WarehouseError> {
    let rows = query_rows(
        client,
        "SELECT name FROM system.tables WHERE database = ? AND name = ?",
        &[database, table],
    )
    .await?;
    Ok(!rows.is_empty())
}
