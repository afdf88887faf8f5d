//! What readers and the batch layer ask of the shared bookkeeping tables:
//! the batch run log (`strata_batch_runs`, the batch layer's commit log),
//! the planned runs of split runs and their done chunks
//! (`strata_batch_plans`, `strata_batch_chunks`), the batch leases, the
//! watermarks mirror and the existence of tables. Every query here
//! binds the metric name; identifiers come from the configuration.

use clickhouse::Client;
use serde_json::{Map, Value as Json};

use crate::{
    BATCH_CHUNKS_TABLE, BATCH_LEASES_TABLE, BATCH_PLANS_TABLE, BATCH_RUNS_TABLE, WATERMARKS_TABLE,
    WarehouseError, batch_table, json_i64, json_u64, qualified, query_rows,
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

/// A planned batch run, as stored in `strata_batch_plans`
/// ([`crate::batch_plans_table_spec`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    /// The run id every chunk writes under.
    pub run_id: u64,
    /// Metric.
    pub metric: String,
    /// `scheduled` or `backfill`.
    pub kind: String,
    /// First window start recomputed.
    pub from_ms: i64,
    /// End of the recomputed range (window starts).
    pub to_ms: i64,
    /// Archive horizon the plan was made at: no event at or after it is read.
    pub horizon_ms: i64,
    /// Number of chunks.
    pub chunk_count: u32,
    /// The published run `(run_id, watermark_ms)` the plan builds on.
    pub based_on: Option<(u64, i64)>,
    /// The lease claim that keeps other runs of the metric out.
    pub lease_holder: String,
    /// How far ahead a worker renews that claim, ms.
    pub lease_ttl_ms: i64,
    /// The name workers started together know the plan by (empty: none).
    pub plan_key: String,
    /// When it was planned, `YYYY-MM-DD hh:mm:ss` (the run's start).
    pub planned_at: String,
}

impl PlanRow {
    /// The row as JSON.
    pub fn to_json(&self) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("run_id".into(), Json::from(self.run_id));
        row.insert("metric".into(), Json::from(self.metric.as_str()));
        row.insert("kind".into(), Json::from(self.kind.as_str()));
        row.insert("from_ms".into(), Json::from(self.from_ms));
        row.insert("to_ms".into(), Json::from(self.to_ms));
        row.insert("horizon_ms".into(), Json::from(self.horizon_ms));
        row.insert("chunk_count".into(), Json::from(self.chunk_count));
        row.insert(
            "based_on_run".into(),
            Json::from(self.based_on.map_or(0, |p| p.0)),
        );
        row.insert(
            "based_on_watermark_ms".into(),
            Json::from(self.based_on.map_or(i64::MIN, |p| p.1)),
        );
        row.insert(
            "lease_holder".into(),
            Json::from(self.lease_holder.as_str()),
        );
        row.insert("lease_ttl_ms".into(), Json::from(self.lease_ttl_ms));
        row.insert("plan_key".into(), Json::from(self.plan_key.as_str()));
        row.insert("planned_at".into(), Json::from(self.planned_at.as_str()));
        row
    }

    fn from_row(r: &Map<String, Json>) -> Option<PlanRow> {
        let i = |name: &str| r.get(name).and_then(json_i64);
        let u = |name: &str| r.get(name).and_then(json_u64);
        let s = |name: &str| Some(r.get(name)?.as_str()?.to_string());
        let based_on_run = u("based_on_run")?;
        Some(PlanRow {
            run_id: u("run_id")?,
            metric: s("metric")?,
            kind: s("kind")?,
            from_ms: i("from_ms")?,
            to_ms: i("to_ms")?,
            horizon_ms: i("horizon_ms")?,
            chunk_count: u32::try_from(u("chunk_count")?).ok()?,
            based_on: (based_on_run > 0).then_some((based_on_run, i("based_on_watermark_ms")?)),
            lease_holder: s("lease_holder")?,
            lease_ttl_ms: i("lease_ttl_ms")?,
            plan_key: s("plan_key")?,
            planned_at: s("planned_at")?,
        })
    }
}

/// The newest plan of a metric that has no `published` run-log row, if the
/// newest plan is such (a plan older than a published one is never resumed).
pub async fn newest_unpublished_plan(
    client: &Client,
    database: &str,
    metric: &str,
) -> Result<Option<PlanRow>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT * FROM {} WHERE metric = ? AND run_id NOT IN (SELECT run_id FROM {} WHERE metric = ? AND status = 'published') ORDER BY run_id DESC LIMIT 1",
            qualified(database, BATCH_PLANS_TABLE),
            qualified(database, BATCH_RUNS_TABLE),
        ),
        &[metric, metric],
    )
    .await?;
    let Some(plan) = rows.first().and_then(PlanRow::from_row) else {
        return Ok(None);
    };
    // A newer published run (planned or not) makes this plan stale.
    let newest = crate::published_batch(client, database, metric).await?;
    Ok(match newest {
        Some((published, _)) if published > plan.run_id => None,
        _ => Some(plan),
    })
}

/// The newest plan of `metric` named `plan_key`, if any.
pub async fn plan_by_key(
    client: &Client,
    database: &str,
    metric: &str,
    plan_key: &str,
) -> Result<Option<PlanRow>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT * FROM {} WHERE metric = ? AND plan_key = ? ORDER BY run_id DESC LIMIT 1",
            qualified(database, BATCH_PLANS_TABLE)
        ),
        &[metric, plan_key],
    )
    .await?;
    Ok(rows.first().and_then(PlanRow::from_row))
}

/// The plan of run `run_id` of `metric`, if any.
pub async fn plan_of(
    client: &Client,
    database: &str,
    metric: &str,
    run_id: u64,
) -> Result<Option<PlanRow>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT * FROM {} WHERE metric = ? AND run_id = {run_id} LIMIT 1",
            qualified(database, BATCH_PLANS_TABLE)
        ),
        &[metric],
    )
    .await?;
    Ok(rows.first().and_then(PlanRow::from_row))
}

/// Whether run `run_id` of `metric` has a `published` run-log row.
pub async fn is_published(
    client: &Client,
    database: &str,
    metric: &str,
    run_id: u64,
) -> Result<bool, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT count() AS n FROM {} WHERE metric = ? AND run_id = {run_id} AND status = 'published'",
            qualified(database, BATCH_RUNS_TABLE)
        ),
        &[metric],
    )
    .await?;
    Ok(rows.first().and_then(|r| r.get("n")).and_then(json_u64) > Some(0))
}

/// One chunk of a planned run whose rows are all in
/// ([`crate::batch_chunks_table_spec`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRow {
    /// The planned run.
    pub run_id: u64,
    /// Metric.
    pub metric: String,
    /// Index of the chunk in its plan, from 0.
    pub chunk_index: u32,
    /// First window start of the chunk.
    pub from_ms: i64,
    /// End of the chunk's window starts.
    pub to_ms: i64,
    /// Events read.
    pub events_read: u64,
    /// Rows written (with retractions).
    pub rows_written: u64,
    /// Earliest start of a session of the chunk open at the horizon
    /// (`i64::MAX`: none).
    pub open_session_ms: i64,
    /// Attempts it took.
    pub attempts: u32,
    /// Who computed it.
    pub worker: String,
}

impl ChunkRow {
    /// The row as JSON.
    pub fn to_json(&self) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("run_id".into(), Json::from(self.run_id));
        row.insert("metric".into(), Json::from(self.metric.as_str()));
        row.insert("chunk_index".into(), Json::from(self.chunk_index));
        row.insert("from_ms".into(), Json::from(self.from_ms));
        row.insert("to_ms".into(), Json::from(self.to_ms));
        row.insert("events_read".into(), Json::from(self.events_read));
        row.insert("rows_written".into(), Json::from(self.rows_written));
        row.insert("open_session_ms".into(), Json::from(self.open_session_ms));
        row.insert("attempts".into(), Json::from(self.attempts));
        row.insert("worker".into(), Json::from(self.worker.as_str()));
        row
    }

    fn from_row(r: &Map<String, Json>) -> Option<ChunkRow> {
        let i = |name: &str| r.get(name).and_then(json_i64);
        let u = |name: &str| r.get(name).and_then(json_u64);
        Some(ChunkRow {
            run_id: u("run_id")?,
            metric: r.get("metric")?.as_str()?.to_string(),
            chunk_index: u32::try_from(u("chunk_index")?).ok()?,
            from_ms: i("from_ms")?,
            to_ms: i("to_ms")?,
            events_read: u("events_read")?,
            rows_written: u("rows_written")?,
            open_session_ms: i("open_session_ms")?,
            attempts: u32::try_from(u("attempts")?).ok()?,
            worker: r.get("worker")?.as_str()?.to_string(),
        })
    }
}

/// The done chunks of run `run_id`, one row per chunk index (the first
/// recorded when a chunk was done twice), by index.
pub async fn done_chunks(
    client: &Client,
    database: &str,
    metric: &str,
    run_id: u64,
) -> Result<Vec<ChunkRow>, WarehouseError> {
    let rows = query_rows(
        client,
        &format!(
            "SELECT * FROM {} WHERE metric = ? AND run_id = {run_id} ORDER BY chunk_index, finished_at",
            qualified(database, BATCH_CHUNKS_TABLE)
        ),
        &[metric],
    )
    .await?;
    let mut out: Vec<ChunkRow> = Vec::new();
    for chunk in rows.iter().filter_map(ChunkRow::from_row) {
        if out
            .last()
            .is_none_or(|c| c.chunk_index != chunk.chunk_index)
        {
            out.push(chunk);
        }
    }
    Ok(out)
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
