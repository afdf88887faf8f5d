//! What the operator emits: typed rows, each the state of one (window,
//! group key) of a metric in one Kafka partition, handed to a [`RowSink`].
//! How a row is stored (ClickHouse `RowBinary`, see [`crate::sink`]) is
//! the sink's business.

use strata_schemas::group_key;
use strata_schemas::value::ValueRef;
use strata_schemas::window::Window;
use strata_schemas::{Accumulator, MetricDef};

use super::ReplayStart;
use super::keys::KeyDictionary;

/// One row of a metric's speed view, borrowed from the operator for the
/// time of [`RowSink::push`]. Rows are idempotent upserts keyed by
/// (window start, group key, Kafka partition): the highest `version` wins
/// (see docs/ARCHITECTURE.md, "Rows are idempotent upserts").
#[derive(Clone, Copy, Debug)]
pub struct SpeedRow<'a> {
    /// The metric the row belongs to.
    pub metric: &'a MetricDef,
    /// The window (a session's, for session metrics).
    pub window: Window,
    /// The group key, in the [`strata_schemas::group_key`] encoding (see
    /// [`Self::key_values`]).
    pub group_key: &'a [u8],
    /// The Kafka partition whose events the row aggregates.
    pub kafka_partition: i32,
    /// Offset of the window's first event (0 in a retraction).
    pub first_offset: i64,
    /// Offset of the last event applied to the window (0 in a retraction).
    pub last_offset: i64,
    /// Grows with every change of the row; a replay writes, for any
    /// version, the same row.
    pub version: u64,
    /// No event can change the window any more.
    pub is_final: bool,
    /// The window no longer exists (a session merged into another): the
    /// row withdraws it, its state empty.
    pub retracted: bool,
    /// The window's aggregate state.
    pub state: &'a Accumulator,
}

impl SpeedRow<'_> {
    /// The group-by values, in the metric's `group_by` order.
    pub fn key_values(&self) -> impl Iterator<Item = ValueRef<'_>> {
        group_key::values(self.group_key)
    }
}

/// Where the operator's rows go: [`crate::operator::PartitionState::emit`]
/// pushes every changed or newly final window's row, metric by metric.
pub trait RowSink {
    /// Takes one row (copying what it keeps: the row borrows the operator).
    fn push(&mut self, row: &SpeedRow<'_>);
}

/// Offsets a row records: where its window's replay starts, and the last
/// offset applied (the version's base).
#[derive(Clone, Copy)]
pub(super) struct RowOffsets {
    pub(super) first: i64,
    pub(super) last: i64,
}

/// One metric's part of an emit, as its operator sees it: the watermark
/// and floor it decides by, rows built into [`SpeedRow`]s (group key,
/// partition, version) for the sink, and where the partition's replay must
/// start for the windows left open.
pub(super) struct MetricEmit<'a, S: ?Sized> {
    /// The partition's watermark: windows ending at or before it are final.
    pub(super) watermark: i64,
    /// Windows ending at or before this were final before the partition
    /// restarted: their rows are never written again.
    pub(super) floor: i64,
    pub(super) metric: &'a MetricDef,
    pub(super) keys: &'a KeyDictionary,
    pub(super) kafka_partition: i32,
    /// The state of a retraction.
    pub(super) empty_state: &'a Accumulator,
    pub(super) sink: &'a mut S,
    /// The earliest replay start of an open window so far.
    pub(super) earliest: &'a mut Option<ReplayStart>,
}

impl<S: RowSink + ?Sized> MetricEmit<'_, S> {
    /// A window's row: its state, offsets and version.
    pub(super) fn row(
        &mut self,
        window: Window,
        key: u32,
        offsets: RowOffsets,
        state: &Accumulator,
        is_final: bool,
    ) {
        self.sink.push(&SpeedRow {
            metric: self.metric,
            window,
            group_key: self.keys.key(key),
            kafka_partition: self.kafka_partition,
            first_offset: offsets.first,
            last_offset: offsets.last,
            // The version only grows: a later offset, or the same offset
            // turned final.
            version: offsets.last as u64 * 2 + u64::from(is_final),
            is_final,
            retracted: false,
            state,
        });
    }

    /// The retraction of a session merged away by the event at `offset`:
    /// its version is above anything the session was written with, its
    /// state and offsets at their zero values.
    pub(super) fn retraction(&mut self, window: Window, key: u32, offset: i64) {
        self.sink.push(&SpeedRow {
            metric: self.metric,
            window,
            group_key: self.keys.key(key),
            kafka_partition: self.kafka_partition,
            first_offset: 0,
            last_offset: 0,
            version: offset as u64 * 2 + 1,
            is_final: true,
            retracted: true,
            state: self.empty_state,
        });
    }

    /// Records that an open window's replay starts at `start`.
    pub(super) fn note_open(&mut self, start: ReplayStart) {
        if self.earliest.is_none_or(|e| start.offset < e.offset) {
            *self.earliest = Some(start);
        }
    }
}
