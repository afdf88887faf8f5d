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
use serde_json::{Map, Value as Json};
use strata_warehouse::{self as warehouse, SPEED_CHECKPOINTS_TABLE, WarehouseError};

use crate::operator::Checkpoint;

/// The newest checkpoint of each partition of `topic` for `group_id`.
pub async fn load(
    client: &Client,
    database: &str,
    group_id: &str,
    topic: &str,
) -> Result<HashMap<i32, Checkpoint>, WarehouseError> {
    let sql = format!(
        "SELECT kafka_partition, next_offset, replay_max_event_ms, final_watermark_ms \
         FROM {} WHERE group_id = ? AND topic = ? \
         ORDER BY kafka_partition, version DESC, updated_at DESC LIMIT 1 BY kafka_partition",
        warehouse::qualified(database, SPEED_CHECKPOINTS_TABLE)
    );
    let rows = warehouse::query_rows(client, &sql, &[group_id, topic]).await?;
    let mut out = HashMap::new();
    for r in rows {
        let get = |k: &str| r.get(k).and_then(Json::as_i64);
        if let (Some(p), Some(next_offset), Some(replay), Some(final_wm)) = (
            get("kafka_partition"),
            get("next_offset"),
            get("replay_max_event_ms"),
            get("final_watermark_ms"),
        ) {
            out.insert(
                p as i32,
                Checkpoint {
                    next_offset,
                    replay_max_event_ms: replay,
                    final_watermark_ms: final_wm,
                },
            );
        }
    }
    Ok(out)
}

/// The row storing `checkpoint`.
pub fn row(
    group_id: &str,
    topic: &str,
    partition: i32,
    checkpoint: &Checkpoint,
) -> Map<String, Json> {
    let mut row = Map::new();
    row.insert("group_id".into(), Json::from(group_id));
    row.insert("topic".into(), Json::from(topic));
    row.insert("kafka_partition".into(), Json::from(partition));
    row.insert("next_offset".into(), Json::from(checkpoint.next_offset));
    row.insert(
        "replay_max_event_ms".into(),
        Json::from(checkpoint.replay_max_event_ms),
    );
    row.insert(
        "final_watermark_ms".into(),
        Json::from(checkpoint.final_watermark_ms),
    );
    // Offsets only grow along a partition, whichever process owns it.
    row.insert(
        "version".into(),
        Json::from(checkpoint.next_offset.max(0) as u64),
    );
    row
}
