//! Per-partition window state: the speed layer's operator.
//!
//! Each Kafka partition is processed independently and deterministically:
//! its watermark is `max event time seen in the partition − allowed
//! lateness`, and every decision (which window an event joins, whether it is
//! late, when a window is final) depends only on the partition's records in
//! offset order and on the [`Checkpoint`] the partition started from. That is
//! what makes replay after a crash or a rebalance produce exactly the rows the
//! first pass produced (see docs/ARCHITECTURE.md, "Effectively once").
//!
//! Window assignment, session merging and aggregate states all come from
//! `strata_schemas`; this module only keeps them per partition and decides
//! when to write them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use strata_schemas::aggregate::PreparedEvent;
use strata_schemas::window::{Mergeable, SessionSet, Window, WindowKind};
use strata_schemas::{Accumulator, Event, MetricDef, Value};

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

/// Bookkeeping of one open window (or session).
#[derive(Clone, Copy, Debug)]
struct WindowMeta {
    /// Offset of the first event applied.
    first_offset: i64,
    /// The partition's max event time just before that first event.
    max_event_before_first: i64,
    /// Offset of the last event applied (the row version's base).
    last_offset: i64,
    /// Changed since last written.
    dirty: bool,
}

impl WindowMeta {
    fn new(offset: i64, max_before: i64) -> Self {
        WindowMeta {
            first_offset: offset,
            max_event_before_first: max_before,
            last_offset: offset,
            dirty: true,
        }
    }
}

struct SessionEntry {
    meta: WindowMeta,
    acc: Accumulator,
}

impl Mergeable for SessionEntry {
    fn merge_from(&mut self, other: Self) {
        self.acc.merge(&other.acc);
        if other.meta.first_offset < self.meta.first_offset {
            self.meta.first_offset = other.meta.first_offset;
            self.meta.max_event_before_first = other.meta.max_event_before_first;
        }
        self.meta.last_offset = self.meta.last_offset.max(other.meta.last_offset);
        self.meta.dirty = true;
    }
}

/// Group keys of one metric, interned to small ids so window maps stay
/// compact and lookups hash a reused byte buffer instead of cloning values.
#[derive(Default)]
struct KeyInterner {
    ids: HashMap<Box<[u8]>, u32>,
    values: Vec<Vec<Value>>,
    buf: Vec<u8>,
}

impl KeyInterner {
    fn intern(&mut self, metric: &MetricDef, event: &Event) -> u32 {
        self.buf.clear();
        for g in &metric.group_by {
            encode_value(&mut self.buf, &event.values[g.index]);
        }
        if let Some(id) = self.ids.get(self.buf.as_slice()) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(metric.group_key(event));
        self.ids.insert(self.buf.clone().into_boxed_slice(), id);
        id
    }
}

/// Length-prefixed, type-tagged encoding: distinct keys never collide.
fn encode_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => buf.push(0),
        Value::String(s) => {
            buf.push(1);
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        Value::Int(i) => {
            buf.push(2);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            buf.push(3);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Bool(b) => buf.extend_from_slice(&[4, u8::from(*b)]),
        Value::Timestamp(t) => {
            buf.push(5);
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
}

enum Windows {
    Fixed {
        size_ms: i64,
        open: BTreeMap<(i64, u32), (WindowMeta, Accumulator)>,
    },
    Session {
        gap_ms: i64,
        open: HashMap<u32, SessionSet<SessionEntry>>,
        /// Sessions merged away since the last emit: (window, key, version).
        retracted: Vec<(Window, u32, u64)>,
    },
}

/// One metric's windows in one partition.
struct MetricWindows {
    metric: Arc<MetricDef>,
    keys: KeyInterner,
    windows: Windows,
}

/// What applying one event did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Metrics for which the event was too late for at least one window.
    pub late: u32,
    /// Metrics whose filter rejected the event.
    pub filtered: u32,
}

/// A row for a speed table, with the metric it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedRow {
    /// Index of the metric in the partition's metric list.
    pub metric: usize,
    /// The row, keyed by column name.
    pub row: Map<String, Json>,
}

/// The output of one emit: rows to write, then the checkpoint they make valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Emission {
    /// Rows, in order.
    pub rows: Vec<SpeedRow>,
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
    /// Reused buffer: an event's slot values, extracted once per metric.
    prepared: PreparedEvent,
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
            prepared: PreparedEvent::default(),
            metrics: metrics
                .iter()
                .map(|m| MetricWindows {
                    metric: m.clone(),
                    keys: KeyInterner::default(),
                    windows: match m.window {
                        WindowKind::Session { gap } => Windows::Session {
                            gap_ms: gap.as_i64(),
                            open: HashMap::new(),
                            retracted: Vec::new(),
                        },
                        WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => {
                            Windows::Fixed {
                                size_ms: size.as_i64(),
                                open: BTreeMap::new(),
                            }
                        }
                    },
                })
                .collect(),
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
        let max_before = self.max_event_ms;
        let floor = self.restored_floor_ms;
        let mut outcome = ApplyOutcome::default();
        let prepared = &mut self.prepared;
        for mw in &mut self.metrics {
            let metric = &*mw.metric;
            if !metric.filter.matches(event) {
                outcome.filtered += 1;
                continue;
            }
            let t = event.time_ms;
            match &mut mw.windows {
                Windows::Fixed { open, .. } => {
                    let mut late = false;
                    let mut ready = false;
                    for w in metric.window.assign(t) {
                        if w.end_ms <= floor && w.end_ms > watermark {
                            // Final and written before the restart; the
                            // replayed watermark has not caught up yet.
                            continue;
                        }
                        if w.end_ms <= watermark {
                            late = true;
                            continue;
                        }
                        let key = mw.keys.intern(metric, event);
                        let (meta, acc) = open.entry((w.start_ms, key)).or_insert_with(|| {
                            (
                                WindowMeta::new(offset, max_before),
                                metric.plan.new_accumulator(),
                            )
                        });
                        if !ready {
                            metric.plan.prepare(event, prepared);
                            ready = true;
                        }
                        metric.plan.update_prepared(acc, prepared);
                        meta.last_offset = offset;
                        meta.dirty = true;
                    }
                    if late {
                        outcome.late += 1;
                    }
                }
                Windows::Session {
                    gap_ms,
                    open,
                    retracted,
                } => {
                    // A session event older than the watermark could overlap a
                    // session that is already final; it is late.
                    if t < watermark {
                        outcome.late += 1;
                        continue;
                    }
                    let key = mw.keys.intern(metric, event);
                    let plan = &metric.plan;
                    let change = open.entry(key).or_default().insert(
                        t,
                        *gap_ms,
                        || SessionEntry {
                            meta: WindowMeta::new(offset, max_before),
                            acc: plan.new_accumulator(),
                        },
                        |s| {
                            plan.update(&mut s.acc, event);
                            s.meta.last_offset = offset;
                            s.meta.dirty = true;
                        },
                    );
                    // The merged-away sessions' rows are retracted with a
                    // version above anything they were written with.
                    let version = offset as u64 * 2 + 1;
                    retracted.extend(change.replaced.into_iter().map(|w| (w, key, version)));
                }
            }
        }
        self.max_event_ms = self.max_event_ms.max(event.time_ms);
        self.next_offset = self.next_offset.max(offset + 1);
        outcome
    }

    /// Number of open (window, key) states, for the state-size gauge.
    pub fn open_windows(&self) -> usize {
        self.metrics
            .iter()
            .map(|m| match &m.windows {
                Windows::Fixed { open, .. } => open.len(),
                Windows::Session { open, .. } => open.values().map(SessionSet::len).sum(),
            })
            .sum()
    }

    /// Collects the rows of every changed or newly final window, removes
    /// final windows, and computes the checkpoint those rows make valid.
    pub fn emit(&mut self) -> Emission {
        let watermark = self.watermark();
        let floor = self.restored_floor_ms;
        let partition = self.partition;
        let mut rows = Vec::new();
        let mut finalized = 0;
        // (first offset, max event before it) of the earliest open window.
        let mut earliest: Option<(i64, i64)> = None;
        let mut note = |meta: &WindowMeta| {
            if earliest.is_none_or(|(o, _)| meta.first_offset < o) {
                earliest = Some((meta.first_offset, meta.max_event_before_first));
            }
        };
        for (index, mw) in self.metrics.iter_mut().enumerate() {
            let metric = &*mw.metric;
            match &mut mw.windows {
                Windows::Fixed { size_ms, open } => {
                    let size = *size_ms;
                    let mut closed = Vec::new();
                    for (&(start, key), (meta, acc)) in open.iter_mut() {
                        let window = Window {
                            start_ms: start,
                            end_ms: start + size,
                        };
                        let is_final = window.end_ms <= watermark;
                        if meta.dirty || is_final {
                            rows.push(SpeedRow {
                                metric: index,
                                row: row(
                                    metric,
                                    &mw.keys.values[key as usize],
                                    partition,
                                    window,
                                    meta,
                                    acc,
                                    is_final,
                                ),
                            });
                            meta.dirty = false;
                        }
                        if is_final {
                            closed.push((start, key));
                        } else {
                            note(meta);
                        }
                    }
                    finalized += closed.len() as u64;
                    for k in closed {
                        open.remove(&k);
                    }
                }
                Windows::Session {
                    open, retracted, ..
                } => {
                    for (window, key, version) in retracted.drain(..) {
                        // A session inside the final floor is a partial replay
                        // of a session already final: never touch its row.
                        if window.end_ms > floor {
                            rows.push(SpeedRow {
                                metric: index,
                                row: tombstone(
                                    metric,
                                    &mw.keys.values[key as usize],
                                    partition,
                                    window,
                                    version,
                                ),
                            });
                        }
                    }
                    for (&key, set) in open.iter_mut() {
                        for (window, entry) in set.drain_closed(watermark) {
                            finalized += 1;
                            if window.end_ms > floor {
                                rows.push(SpeedRow {
                                    metric: index,
                                    row: row(
                                        metric,
                                        &mw.keys.values[key as usize],
                                        partition,
                                        window,
                                        &entry.meta,
                                        &entry.acc,
                                        true,
                                    ),
                                });
                            }
                        }
                        for (window, entry) in set.iter_mut() {
                            note(&entry.meta);
                            if entry.meta.dirty {
                                entry.meta.dirty = false;
                                if window.end_ms > floor {
                                    rows.push(SpeedRow {
                                        metric: index,
                                        row: row(
                                            metric,
                                            &mw.keys.values[key as usize],
                                            partition,
                                            window,
                                            &entry.meta,
                                            &entry.acc,
                                            false,
                                        ),
                                    });
                                }
                            }
                        }
                    }
                    open.retain(|_, set| !set.is_empty());
                }
            }
        }
        self.final_watermark_ms = self.final_watermark_ms.max(watermark);
        let checkpoint = match earliest {
            Some((first_offset, max_before)) if first_offset < self.next_offset => Checkpoint {
                next_offset: first_offset,
                replay_max_event_ms: max_before,
                final_watermark_ms: self.final_watermark_ms,
            },
            _ => Checkpoint {
                next_offset: self.next_offset,
                replay_max_event_ms: self.max_event_ms,
                final_watermark_ms: self.final_watermark_ms,
            },
        };
        Emission {
            rows,
            checkpoint,
            finalized,
        }
    }
}

fn base_row(
    metric: &MetricDef,
    key: &[Value],
    partition: i32,
    window: Window,
) -> Map<String, Json> {
    let mut row = Map::new();
    row.insert("window_start_ms".into(), Json::from(window.start_ms));
    row.insert("window_end_ms".into(), Json::from(window.end_ms));
    for (g, v) in metric.group_by.iter().zip(key) {
        row.insert(g.name.clone(), v.to_json());
    }
    row.insert("kafka_partition".into(), Json::from(partition));
    row
}

fn row(
    metric: &MetricDef,
    key: &[Value],
    partition: i32,
    window: Window,
    meta: &WindowMeta,
    acc: &Accumulator,
    is_final: bool,
) -> Map<String, Json> {
    let mut row = base_row(metric, key, partition, window);
    metric.plan.write_state(acc, &mut row);
    row.insert("first_offset".into(), Json::from(meta.first_offset));
    row.insert("last_offset".into(), Json::from(meta.last_offset));
    // The version only grows: a later offset, or the same offset turned final.
    row.insert(
        "version".into(),
        Json::from(meta.last_offset as u64 * 2 + u64::from(is_final)),
    );
    row.insert("retracted".into(), Json::from(0));
    row.insert("is_final".into(), Json::from(u8::from(is_final)));
    row
}

fn tombstone(
    metric: &MetricDef,
    key: &[Value],
    partition: i32,
    window: Window,
    version: u64,
) -> Map<String, Json> {
    let mut row = base_row(metric, key, partition, window);
    row.insert("version".into(), Json::from(version));
    row.insert("retracted".into(), Json::from(1));
    row.insert("is_final".into(), Json::from(1));
    row
}
