//! One Kafka partition's state: its watermark, the checkpoint it restarts
//! from, and each metric's windows.

use std::sync::Arc;

use strata_schemas::{Accumulator, Event, MetricDef};

use super::keys::KeyDictionary;
use super::rows::{MetricEmit, RowSink};
use super::{EventContext, Operator, ReplayStart, WindowOperator};

/// Where a partition (re)starts, and what it already knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// First offset to process.
    pub next_offset: i64,
    /// The partition's max event time over the offsets before `next_offset`
    /// (`i64::MIN` when none): replay starts with the same watermark the
    /// first pass had at `next_offset`.
    pub replay_max_event_ms: i64,
    /// Every window ending at or before this is final and already written;
    /// it is never recreated.
    pub final_watermark_ms: i64,
}

impl Checkpoint {
    /// The start of a partition nobody has processed yet.
    pub fn fresh(next_offset: i64) -> Self {
        Checkpoint {
            next_offset,
            replay_max_event_ms: i64::MIN,
            final_watermark_ms: i64::MIN,
        }
    }
}

/// One metric's windows in one partition.
struct MetricWindows {
    metric: Arc<MetricDef>,
    keys: KeyDictionary,
    operator: Operator,
    /// The state of a retraction row.
    empty_state: Accumulator,
}

impl MetricWindows {
    fn new(metric: &Arc<MetricDef>) -> Self {
        MetricWindows {
            metric: metric.clone(),
            keys: KeyDictionary::default(),
            operator: Operator::for_window(metric),
            empty_state: metric.plan.new_accumulator(),
        }
    }

    /// Drops the keys no open window uses once they could be the majority:
    /// a key space like user ids would otherwise grow the dictionary
    /// forever. Each compaction frees at least half of it, so the cost is
    /// amortised over the keys interned since the last one.
    fn compact_keys(&mut self) {
        if self.keys.len() <= 2 * self.operator.open_states() + 4096 {
            return;
        }
        let mut live = vec![false; self.keys.len()];
        self.operator.mark_live_keys(&mut live);
        let remap = self.keys.compact(&live);
        self.operator.remap_keys(&remap, self.keys.len());
    }
}

/// What applying one event did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Metrics for which the event was too late for at least one window.
    pub late: u32,
    /// Metrics whose filter rejected the event.
    pub filtered: u32,
}

/// What one emit did, besides handing its rows to the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emission {
    /// The checkpoint to store once every row is written.
    pub checkpoint: Checkpoint,
    /// Windows that became final in this emission.
    pub finalized: u64,
}

/// The state of one Kafka partition of one source.
pub struct PartitionState {
    partition: i32,
    lateness_ms: i64,
    next_offset: i64,
    max_event_ms: i64,
    /// Windows ending at or before this were final before this partition
    /// was (re)started from its checkpoint: never recreated, never touched.
    restored_floor_ms: i64,
    /// The highest watermark emitted so far (the next checkpoint's floor).
    final_watermark_ms: i64,
    metrics: Vec<MetricWindows>,
    /// Windows made final since the last emit (fixed windows are finalized
    /// as the watermark moves).
    finalized: u64,
}

impl PartitionState {
    /// State for `partition`, starting from `checkpoint`, computing `metrics`
    /// (all of the same source).
    pub fn new(
        partition: i32,
        lateness_ms: i64,
        metrics: &[Arc<MetricDef>],
        checkpoint: Checkpoint,
    ) -> Self {
        PartitionState {
            partition,
            lateness_ms,
            next_offset: checkpoint.next_offset,
            max_event_ms: checkpoint.replay_max_event_ms,
            restored_floor_ms: checkpoint.final_watermark_ms,
            final_watermark_ms: checkpoint.final_watermark_ms,
            finalized: 0,
            metrics: metrics.iter().map(MetricWindows::new).collect(),
        }
    }

    /// The partition's watermark: max event time − allowed lateness.
    pub fn watermark(&self) -> i64 {
        self.max_event_ms.saturating_sub(self.lateness_ms)
    }

    /// The next offset this partition expects.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether `offset` was already processed (a redelivery after a seek or
    /// rebalance); such records must be skipped, not applied twice.
    pub fn is_duplicate(&self, offset: i64) -> bool {
        offset < self.next_offset
    }

    /// Records that `offset` was consumed without an event (a dead letter).
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Applies a valid event at `offset` to every metric. The caller checks
    /// [`Self::is_duplicate`] first.
    pub fn apply(&mut self, offset: i64, event: &Event) -> ApplyOutcome {
        let watermark = self.watermark();
        let floor = self.restored_floor_ms;
        let at = EventContext {
            offset,
            watermark,
            max_before: self.max_event_ms,
            floor,
        };
        let mut outcome = ApplyOutcome::default();
        for mw in &mut self.metrics {
            let metric = &*mw.metric;
            if !metric.filter.matches(event) {
                outcome.filtered += 1;
                continue;
            }
            if mw.operator.apply(metric, &mut mw.keys, event, at) {
                outcome.late += 1;
            }
        }
        self.max_event_ms = self.max_event_ms.max(event.time_ms);
        let moved = self.watermark();
        if moved > watermark {
            for mw in &mut self.metrics {
                self.finalized += mw.operator.advance_watermark(&mw.metric.plan, moved, floor);
            }
        }
        self.next_offset = self.next_offset.max(offset + 1);
        outcome
    }

    /// Number of open (window, key) states, for the state-size gauge.
    pub fn open_windows(&self) -> usize {
        self.metrics
            .iter()
            .map(|mw| mw.operator.open_states())
            .sum()
    }

    /// Hands the rows of every changed or newly final window to `sink`,
    /// metric by metric, removes final windows, and computes the checkpoint
    /// those rows make valid.
    pub fn emit<S: RowSink + ?Sized>(&mut self, sink: &mut S) -> Emission {
        let watermark = self.watermark();
        let mut finalized = std::mem::take(&mut self.finalized);
        // The earliest replay start of an open window.
        let mut earliest: Option<ReplayStart> = None;
        for mw in &mut self.metrics {
            let mut out = MetricEmit {
                watermark,
                floor: self.restored_floor_ms,
                metric: &mw.metric,
                keys: &mw.keys,
                kafka_partition: self.partition,
                empty_state: &mw.empty_state,
                sink: &mut *sink,
                earliest: &mut earliest,
            };
            finalized += mw.operator.emit(&mut out);
        }
        for mw in &mut self.metrics {
            mw.compact_keys();
        }
        self.final_watermark_ms = self.final_watermark_ms.max(watermark);
        let checkpoint = match earliest {
            Some(start) if start.offset < self.next_offset => Checkpoint {
                next_offset: start.offset,
                replay_max_event_ms: start.max_event_before,
                final_watermark_ms: self.final_watermark_ms,
            },
            _ => Checkpoint {
                next_offset: self.next_offset,
                replay_max_event_ms: self.max_event_ms,
                final_watermark_ms: self.final_watermark_ms,
            },
        };
        Emission {
            checkpoint,
            finalized,
        }
    }

    /// The same state without the session cache, as a reference.
    #[cfg(test)]
    pub(super) fn without_session_cache(mut self) -> Self {
        for mw in &mut self.metrics {
            if let Operator::Session(sessions) = &mut mw.operator {
                sessions.without_cache();
            }
        }
        self
    }

    /// Events applied through the session cache.
    #[cfg(test)]
    pub(super) fn session_cache_hits(&self) -> u64 {
        self.metrics
            .iter()
            .map(|mw| match &mw.operator {
                Operator::Session(sessions) => sessions.cache_hits(),
                Operator::Paned(_) => 0,
            })
            .sum()
    }

    /// Keys interned for metric `metric` (an index into the metric list).
    #[cfg(test)]
    pub(super) fn interned_keys(&self, metric: usize) -> usize {
        self.metrics[metric].keys.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;
    use crate::operator::test_support::{emit_parsed, event, metric};

    /// A key space that never repeats (a new user every minute) must not
    /// grow the dictionary forever: keys of final windows are dropped, and
    /// the rows written after a compaction still carry the right keys.
    #[test]
    fn dictionary_forgets_keys_of_final_windows() {
        let (metric, decoder, lateness) = metric(r#"{ kind = "tumbling", size = "1m" }"#, "0s");
        let mut state = PartitionState::new(0, lateness, &[metric], Checkpoint::fresh(0));
        let t0 = 1_795_341_600_000;
        let mut offset = 0;
        let mut written = 0u64;
        for minute in 0..30i64 {
            for i in 0..1_000u64 {
                let user = minute as u64 * 1_000 + i;
                let e = event(&decoder, t0 + minute * 60_000 + i as i64, user, 3);
                state.apply(offset, &e);
                offset += 1;
            }
            for row in emit_parsed(&mut state) {
                let user = row.row["user_id"].as_str().unwrap();
                let n: u64 = user[1..].parse().unwrap();
                let start = row.row["window_start_ms"].as_i64().unwrap();
                // user u<minute*1000+i> only ever appears in its own minute.
                assert_eq!(start, t0 + (n / 1_000) as i64 * 60_000, "{:?}", row.row);
                assert_eq!(row.row["agg_events"], Json::from(1));
                written += 1;
            }
            let keys = state.interned_keys(0);
            assert!(
                keys <= 2 * 1_000 + 4_096 + 1_000,
                "dictionary holds {keys} keys"
            );
        }
        // Each key written open in its minute, then final in the next (the
        // last minute is still open).
        assert_eq!(written, 30_000 + 29_000);
        assert!(state.interned_keys(0) < 30_000);
    }
}
