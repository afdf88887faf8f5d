//! The speed layer's operator: per-partition window state, deterministic
//! and replayable.
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
//! when to write them:
//!
//! - `partition`: [`PartitionState`], one partition's watermark, checkpoint
//!   and metrics, each metric a key dictionary and an operator;
//! - one operator per window kind, each a `WindowOperator`: `panes`
//!   (tumbling and hopping windows, kept as panes of one slide) and
//!   `sessions` (with its cache of each key's newest session), registered
//!   in the `Operator` enum;
//! - `keys`: group keys interned to dense ids; `slab`: a pane's states,
//!   column-wise;
//! - `rows`: what an emit hands to a [`RowSink`], one [`SpeedRow`] per
//!   changed or final window.
//!
//! A new window kind is one operator module implementing
//! `WindowOperator`, registered in this file (a variant of `Operator`, its
//! arm in `Operator::for_window` and in `dispatch!`).

mod keys;
mod panes;
mod partition;
mod rows;
mod sessions;
mod slab;
#[cfg(test)]
mod test_support;

use strata_schemas::window::WindowKind;
use strata_schemas::{AggPlan, Event, MetricDef};

pub use self::partition::{ApplyOutcome, Checkpoint, Emission, PartitionState};
pub use self::rows::{RowSink, SpeedRow};

use self::keys::KeyDictionary;
use self::panes::PanedWindows;
use self::rows::MetricEmit;
use self::sessions::SessionWindows;

/// An event as the partition applies it: its offset, and the partition's
/// time before it.
#[derive(Clone, Copy, Debug)]
struct EventContext {
    /// The record's offset.
    offset: i64,
    /// The partition's watermark before the event.
    watermark: i64,
    /// The partition's max event time before the event: a window the
    /// event opens replays from here.
    max_before: i64,
    /// Windows ending at or before this were final before the partition
    /// restarted from its checkpoint: never recreated, never touched.
    floor: i64,
}

/// Where the replay of an open window starts: the offset of its first
/// event, and the partition's max event time just before it (the watermark
/// the replay starts with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReplayStart {
    offset: i64,
    max_event_before: i64,
}

/// The windows of one metric in one partition, of one window kind: what
/// every operator does with events, the watermark and emits.
trait WindowOperator {
    /// Applies an event that passed the metric's filter, interning its
    /// group key in `keys` unless no window takes it. `true` when the event
    /// was late for at least one window (left to the batch layer).
    fn apply(
        &mut self,
        metric: &MetricDef,
        keys: &mut KeyDictionary,
        event: &Event,
        at: EventContext,
    ) -> bool;

    /// The partition's watermark moved up to `watermark` (windows ending at
    /// or before `floor` were final before the restart). Returns the
    /// number of windows made final.
    fn advance_watermark(&mut self, plan: &AggPlan, watermark: i64, floor: i64) -> u64;

    /// Hands the rows of every changed or newly final window to `out`,
    /// clears the change marks, drops final windows, and notes where each
    /// open window's replay starts. Returns the number of windows made
    /// final here.
    fn emit<S: RowSink + ?Sized>(&mut self, out: &mut MetricEmit<'_, S>) -> u64;

    /// Number of open (window, key) states.
    fn open_states(&self) -> usize;

    /// Sets `live[key]` for every key with an open state.
    fn mark_live_keys(&self, live: &mut [bool]);

    /// Renumbers the keys after the dictionary dropped the dead ones:
    /// `remap[old]` is the new id (every key with an open state is live),
    /// `keys` the number of new ids.
    fn remap_keys(&mut self, remap: &[u32], keys: usize);
}

/// Every window kind's operator: the one place a window kind is
/// registered. An enum rather than a trait object: an event reaches its
/// operator by one branch, and the operator's code is inlined there.
enum Operator {
    Paned(PanedWindows),
    Session(SessionWindows),
}

/// Runs `$body` with `$op` bound to the operator inside `$operator`.
macro_rules! dispatch {
    ($operator:expr, $op:ident => $body:expr) => {
        match $operator {
            Operator::Paned($op) => $body,
            Operator::Session($op) => $body,
        }
    };
}

impl Operator {
    /// The operator of `metric`'s window kind.
    fn for_window(metric: &MetricDef) -> Self {
        match metric.window {
            WindowKind::Tumbling { size } => {
                Operator::Paned(PanedWindows::new(size.as_i64(), size.as_i64()))
            }
            WindowKind::Hopping { size, slide } => {
                Operator::Paned(PanedWindows::new(size.as_i64(), slide.as_i64()))
            }
            WindowKind::Session { gap } => {
                Operator::Session(SessionWindows::new(gap.as_i64(), &metric.plan))
            }
        }
    }
}

impl WindowOperator for Operator {
    #[inline(always)]
    fn apply(
        &mut self,
        metric: &MetricDef,
        keys: &mut KeyDictionary,
        event: &Event,
        at: EventContext,
    ) -> bool {
        dispatch!(self, op => op.apply(metric, keys, event, at))
    }

    fn advance_watermark(&mut self, plan: &AggPlan, watermark: i64, floor: i64) -> u64 {
        dispatch!(self, op => op.advance_watermark(plan, watermark, floor))
    }

    fn emit<S: RowSink + ?Sized>(&mut self, out: &mut MetricEmit<'_, S>) -> u64 {
        dispatch!(self, op => op.emit(out))
    }

    fn open_states(&self) -> usize {
        dispatch!(self, op => op.open_states())
    }

    fn mark_live_keys(&self, live: &mut [bool]) {
        dispatch!(self, op => op.mark_live_keys(live));
    }

    fn remap_keys(&mut self, remap: &[u32], keys: usize) {
        dispatch!(self, op => op.remap_keys(remap, keys));
    }
}
