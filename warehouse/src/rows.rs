//! Typed rows of the shared tables: what the layers write to and read from
//! `strata_speed_checkpoints`, `strata_watermarks`, `strata_batch_runs` and
//! the batch views, with the column names spelled once, here. (The speed
//! views' rows are written as `RowBinary` straight from the operator's
//! states: see [`crate::speed_row_columns`] and [`crate::state`].)

use serde_json::{Map, Value as Json};
use strata_schemas::aggregate::Accumulator;
use strata_schemas::config::MetricDef;
use strata_schemas::window::Window;

use crate::{json_i64, state};

/// A speed-layer restart point of one partition (see
/// [`crate::speed_checkpoints_table_spec`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    /// The checkpoint namespace (`speed.checkpoint_namespace`).
    pub group_id: String,
    /// Source topic.
    pub topic: String,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// First offset to process on restart.
    pub next_offset: i64,
    /// The partition's max event time before `next_offset`.
    pub replay_max_event_ms: i64,
    /// Every window ending at or before this is final and written.
    pub final_watermark_ms: i64,
}

impl CheckpointRow {
    /// The row as JSON, stamped `updated_at` (`YYYY-MM-DD hh:mm:ss`).
    pub fn to_json(&self, updated_at: &str) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("group_id".into(), Json::from(self.group_id.as_str()));
        row.insert("topic".into(), Json::from(self.topic.as_str()));
        row.insert("kafka_partition".into(), Json::from(self.kafka_partition));
        row.insert("next_offset".into(), Json::from(self.next_offset));
        row.insert(
            "replay_max_event_ms".into(),
            Json::from(self.replay_max_event_ms),
        );
        row.insert(
            "final_watermark_ms".into(),
            Json::from(self.final_watermark_ms),
        );
        // Offsets only grow along a partition, whichever process owns it:
        // the newest checkpoint wins the ReplacingMergeTree.
        row.insert("version".into(), Json::from(self.next_offset.max(0) as u64));
        row.insert("updated_at".into(), Json::from(updated_at));
        row
    }

    /// The SQL selecting the newest checkpoint of every partition of one
    /// (namespace, topic): bind the namespace, then the topic.
    pub fn select_newest_sql(database: &str) -> String {
        format!(
            "SELECT group_id, topic, kafka_partition, next_offset, replay_max_event_ms, \
             final_watermark_ms FROM {} WHERE group_id = ? AND topic = ? \
             ORDER BY kafka_partition, version DESC, updated_at DESC LIMIT 1 BY kafka_partition",
            crate::qualified(database, crate::SPEED_CHECKPOINTS_TABLE)
        )
    }

    /// A row read back with [`Self::select_newest_sql`]; `None` when a
    /// column is missing.
    pub fn from_json(row: &Map<String, Json>) -> Option<Self> {
        let int = |k: &str| row.get(k).and_then(json_i64);
        let text = |k: &str| row.get(k).and_then(Json::as_str).map(str::to_string);
        Some(CheckpointRow {
            group_id: text("group_id")?,
            topic: text("topic")?,
            kafka_partition: i32::try_from(int("kafka_partition")?).ok()?,
            next_offset: int("next_offset")?,
            replay_max_event_ms: int("replay_max_event_ms")?,
            final_watermark_ms: int("final_watermark_ms")?,
        })
    }
}

/// Which layer a watermark row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Per Kafka partition, written at every speed-layer flush.
    Speed,
    /// One per metric (partition -1), written when a batch run publishes.
    Batch,
}

impl Layer {
    /// The `layer` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Speed => "speed",
            Layer::Batch => "batch",
        }
    }
}

/// A row of `strata_watermarks`, the dashboards' mirror of both layers'
/// watermarks (readers of the merged answer use the batch run log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkRow<'a> {
    /// Metric name.
    pub metric: &'a str,
    /// Layer.
    pub layer: Layer,
    /// Kafka partition (-1 for the batch layer).
    pub kafka_partition: i32,
    /// The watermark, epoch ms.
    pub watermark_ms: i64,
    /// Newer rows replace older ones.
    pub version: u64,
    /// The batch run (0 for the speed layer).
    pub run_id: u64,
}

impl WatermarkRow<'_> {
    /// The row as JSON, stamped `updated_at`.
    pub fn to_json(&self, updated_at: &str) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("metric".into(), Json::from(self.metric));
        row.insert("layer".into(), Json::from(self.layer.as_str()));
        row.insert("kafka_partition".into(), Json::from(self.kafka_partition));
        row.insert("watermark_ms".into(), Json::from(self.watermark_ms));
        row.insert("version".into(), Json::from(self.version));
        row.insert("run_id".into(), Json::from(self.run_id));
        row.insert("updated_at".into(), Json::from(updated_at));
        row
    }
}

/// A row of `strata_batch_runs`, the batch layer's run log and commit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRunRow<'a> {
    /// The run.
    pub run_id: u64,
    /// Metric name.
    pub metric: &'a str,
    /// `published` (the only status readers trust).
    pub status: &'a str,
    /// First window start recomputed.
    pub from_ms: i64,
    /// End of the recomputed range.
    pub to_ms: i64,
    /// The batch watermark this run publishes.
    pub watermark_ms: i64,
    /// Events read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
    /// `YYYY-MM-DD hh:mm:ss`.
    pub started_at: &'a str,
    /// `YYYY-MM-DD hh:mm:ss`.
    pub finished_at: &'a str,
    /// `scheduled` or `backfill`.
    pub message: &'a str,
}

impl BatchRunRow<'_> {
    /// The row as JSON.
    pub fn to_json(&self) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("run_id".into(), Json::from(self.run_id));
        row.insert("metric".into(), Json::from(self.metric));
        row.insert("status".into(), Json::from(self.status));
        row.insert("from_ms".into(), Json::from(self.from_ms));
        row.insert("to_ms".into(), Json::from(self.to_ms));
        row.insert("watermark_ms".into(), Json::from(self.watermark_ms));
        row.insert("rows_read".into(), Json::from(self.rows_read));
        row.insert("rows_written".into(), Json::from(self.rows_written));
        row.insert("started_at".into(), Json::from(self.started_at));
        row.insert("finished_at".into(), Json::from(self.finished_at));
        row.insert("message".into(), Json::from(self.message));
        row
    }
}

/// One row of a batch-run lease claim (see [`crate::batch_leases_table_spec`]):
/// the claim, a renewal (later `expires_ms`) or the release, each with a
/// higher `version` than the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow<'a> {
    /// Metric name.
    pub metric: &'a str,
    /// Who claims: random 128 bits, host and process id.
    pub holder: &'a str,
    /// When the claim was first made (epoch ms): the oldest live claim wins.
    pub claimed_ms: i64,
    /// The claim lapses at this time unless renewed (epoch ms).
    pub expires_ms: i64,
    /// Whether the holder gave it up.
    pub released: bool,
    /// Grows with every row of one claim.
    pub version: u64,
}

impl LeaseRow<'_> {
    /// The row as JSON.
    pub fn to_json(&self) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("metric".into(), Json::from(self.metric));
        row.insert("holder".into(), Json::from(self.holder));
        row.insert("claimed_ms".into(), Json::from(self.claimed_ms));
        row.insert("expires_ms".into(), Json::from(self.expires_ms));
        row.insert("released".into(), Json::from(u8::from(self.released)));
        row.insert("version".into(), Json::from(self.version));
        row
    }
}

/// A row of a metric's batch view: one (window, group key) of one run, or
/// the retraction of a window an earlier run published that no longer
/// exists.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRow<'a> {
    /// The window.
    pub window: Window,
    /// The group-by values, in the metric's order, as JSON.
    pub key: Vec<Json>,
    /// The state (empty for a retraction).
    pub state: &'a Accumulator,
    /// The run writing the row.
    pub run_id: u64,
    /// Whether the row retracts the window.
    pub retracted: bool,
}

impl BatchRow<'_> {
    /// The row as JSON, stamped `updated_at`.
    pub fn to_json(&self, metric: &MetricDef, updated_at: &str) -> Map<String, Json> {
        let mut row = Map::new();
        row.insert("window_start_ms".into(), Json::from(self.window.start_ms));
        row.insert("window_end_ms".into(), Json::from(self.window.end_ms));
        for (g, v) in metric.group_by.iter().zip(&self.key) {
            row.insert(g.name.clone(), v.clone());
        }
        state::write_json(&metric.plan, self.state, &mut row);
        row.insert("run_id".into(), Json::from(self.run_id));
        row.insert("retracted".into(), Json::from(u8::from(self.retracted)));
        row.insert("updated_at".into(), Json::from(updated_at));
        row
    }
}
