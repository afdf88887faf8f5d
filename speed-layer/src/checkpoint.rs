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

/// The namespace of the dead-letter marks of checkpoint namespace `namespace`.
///
/// A partition's mark is the first source offset above every dead letter
/// the broker acknowledged: after a restart the replay skips re-sending the
/// dead letters below it, so the dead-letter topic holds each bad record
/// once. It is stored as a checkpoint row of its own namespace (its
/// `next_offset`; the other columns unused), which needs no new table and
/// rides in the same insert as the checkpoints.
pub fn dead_letter_namespace(namespace: &str) -> String {
    format!("{namespace}/dead-letters")
}

/// The newest dead-letter mark of each partition of `topic`.
pub async fn load_dead_letter_marks(
    client: &Client,
    database: &str,
    namespace: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, WarehouseError> {
    Ok(
        load(client, database, &dead_letter_namespace(namespace), topic)
            .await?
            .into_iter()
            .map(|(partition, ck)| (partition, ck.next_offset))
            .collect(),
    )
}

/// The row storing dead-letter mark `mark` of `topic`/`partition`.
pub fn dead_letter_mark_row(
    namespace: &str,
    topic: &str,
    partition: i32,
    mark: i64,
) -> CheckpointRow {
    row(
        &dead_letter_namespace(namespace),
        topic,
        partition,
        &Checkpoint::fresh(mark),
    )
}
