//! Loading and storing speed-layer checkpoints in ClickHouse.
//!
//! Checkpoints live in ClickHouse, next to the rows they vouch for, rather
//! than in Kafka commit metadata: not every Kafka-compatible broker keeps
//! commit metadata, and writing the checkpoint right after the rows it
//! covers, to the same store, keeps the ordering argument simple (rows, then
//! checkpoint; a crash in between only means a replay of rows that are
//! rewritten identically).

use std::collections::HashMap;

use clickhouse::Client;
use strata_warehouse::rows::CheckpointRow;
use strata_warehouse::{self as warehouse, WarehouseError};

use crate::operator::Checkpoint;

/// The newest checkpoint of each partition of `topic` for `group_id`.
pub async fn load(
    client: &Client,
    database: &str,
    group_id: &str,
    topic: &str,
) -> Result<HashMap<i32, Checkpoint>, WarehouseError> {
    let sql = CheckpointRow::select_newest_sql(database);
    let rows = warehouse::query_rows(client, &sql, &[group_id, topic]).await?;
    Ok(rows
        .iter()
        .filter_map(CheckpointRow::from_json)
        .map(|r| {
            (
                r.kafka_partition,
                Checkpoint {
                    next_offset: r.next_offset,
                    replay_max_event_ms: r.replay_max_event_ms,
                    final_watermark_ms: r.final_watermark_ms,
                },
            )
        })
        .collect())
}

/// The row storing `checkpoint` of `topic`/`partition`.
pub fn row(group_id: &str, topic: &str, partition: i32, checkpoint: &Checkpoint) -> CheckpointRow {
    CheckpointRow {
        group_id: group_id.to_string(),
        topic: topic.to_string(),
        kafka_partition: partition,
        next_offset: checkpoint.next_offset,
        replay_max_event_ms: checkpoint.replay_max_event_ms,
        final_watermark_ms: checkpoint.final_watermark_ms,
    }
}
