//! The operator of fixed windows (tumbling and hopping): panes of one
//! `slide`, merged into a window's row only when it is written.

use std::collections::VecDeque;

use hashbrown::HashMap;
use strata_schemas::window::{Window, boundary_after, boundary_at_or_before};
use strata_schemas::{Accumulator, AggPlan, Event, MetricDef};

use super::keys::KeyDictionary;
use super::rows::{MetricEmit, RowOffsets, RowSink};
use super::slab::AccumulatorSlab;
use super::{EventContext, ReplayStart, WindowOperator};

/// A pane's key id → slot map. Key ids are dense (the dictionary is
/// compacted), and a pane usually holds a good share of them, so the map
/// is first a vector indexed by key id: one read per event, no hashing, and
/// 4 bytes per id where a hash map of 4-byte pairs takes about 18 per entry
/// with its control bytes and spare room. A pane holding a small share of
/// the ids (a per-user hopping metric whose panes each see a minute's
/// users out of an hour's) would pay 4 bytes for every id: past 65,536 ids
/// and below a quarter of them, it turns into a hash map, for good.
#[derive(Clone, Debug)]
enum SlotIndex {
    /// `slots[key]`, [`SlotIndex::ABSENT`] for a key not in the pane.
    Dense {
        slots: Vec<u32>,
        len: usize,
    },
    Sparse(HashMap<u32, u32>),
}

impl Default for SlotIndex {
    fn default() -> Self {
        SlotIndex::Dense {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl SlotIndex {
    const ABSENT: u32 = u32::MAX;
    /// Ids a pane may index densely whatever its share of them (256 KiB):
    /// a new pane's first keys are a small share of ids in any order.
    const DENSE_ALWAYS: usize = 1 << 16;

    fn len(&self) -> usize {
        match self {
            SlotIndex::Dense { len, .. } => *len,
            SlotIndex::Sparse(map) => map.len(),
        }
    }

    #[inline]
    fn get(&self, key: u32) -> Option<u32> {
        match self {
            SlotIndex::Dense { slots, .. } => slots
                .get(key as usize)
                .copied()
                .filter(|&s| s != Self::ABSENT),
            SlotIndex::Sparse(map) => map.get(&key).copied(),
        }
    }

    /// The slot of `key`, made by `new_slot` if absent.
    #[inline]
    fn get_or_insert_with(&mut self, key: u32, new_slot: impl FnOnce() -> u32) -> u32 {
        if let SlotIndex::Dense { slots, len } = self {
            if let Some(&slot) = slots.get(key as usize)
                && slot != Self::ABSENT
            {
                return slot;
            }
            let needed = key as usize + 1;
            let bound = (4 * (*len + 1)).max(Self::DENSE_ALWAYS);
            if needed <= slots.len() || needed <= bound {
                if needed > slots.capacity() {
                    // Doubling (amortized), but never past the bound a pane
                    // of this many keys may take.
                    let target = (2 * slots.capacity()).clamp(needed, bound);
                    slots.reserve_exact(target - slots.len());
                }
                if needed > slots.len() {
                    slots.resize(needed, Self::ABSENT);
                }
                let slot = new_slot();
                slots[key as usize] = slot;
                *len += 1;
                return slot;
            }
            // Under a quarter of the ids it would cover: a hash map.
            *self = SlotIndex::Sparse(self.iter().collect());
        }
        let SlotIndex::Sparse(map) = self else {
            unreachable!("turned sparse above")
        };
        *map.entry(key).or_insert_with(new_slot)
    }

    /// (key, slot) pairs, in no particular order.
    fn iter(&self) -> Box<dyn Iterator<Item = (u32, u32)> + '_> {
        match self {
            SlotIndex::Dense { slots, .. } => Box::new(
                (0_u32..)
                    .zip(slots.iter().copied())
                    .filter(|&(_, slot)| slot != Self::ABSENT),
            ),
            SlotIndex::Sparse(map) => Box::new(map.iter().map(|(&key, &slot)| (key, slot))),
        }
    }

    fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// The same slots under the keys' new ids (`remap[old]`, every key of
    /// the pane live), dense again if dense enough.
    fn remapped(&self, remap: &[u32]) -> SlotIndex {
        let mut index = SlotIndex::default();
        let mut pairs: Vec<(u32, u32)> = self.iter().map(|(k, s)| (remap[k as usize], s)).collect();
        // Ascending ids: a dense index grows once and stays dense if it can.
        pairs.sort_unstable();
        for (key, slot) in pairs {
            index.get_or_insert_with(key, || slot);
        }
        index
    }
}

/// The states of one pane (one `slide` of event time) of a tumbling or
/// hopping metric in one partition: one slot per group key seen in it,
/// stored column-wise.
///
/// Offsets are kept per pane, not per key: a key's row in a window holds
/// exactly that key's events up to the last offset applied to the window's
/// panes, so `2 × that offset + is_final` is a version that grows with every
/// change and is the same on replay (see docs/ARCHITECTURE.md, "Rows are
/// idempotent upserts"). That keeps a count/sum/min/max state under 100
/// bytes.
struct Pane {
    /// Key id → slot.
    slots: SlotIndex,
    /// Slot → changed since last written.
    dirty: Vec<bool>,
    /// Whether any slot is dirty.
    any_dirty: bool,
    states: AccumulatorSlab,
    /// Offset of the first event applied to any slot: a replay of this
    /// pane starts there.
    first_offset: i64,
    /// The partition's max event time just before that first event.
    max_event_before_first: i64,
    /// Offset of the last event applied to any slot.
    last_offset: i64,
}

impl Pane {
    fn new(metric: &MetricDef, offset: i64, max_before: i64) -> Self {
        Pane {
            slots: SlotIndex::default(),
            dirty: Vec::new(),
            any_dirty: false,
            states: AccumulatorSlab::new(&metric.plan),
            first_offset: offset,
            max_event_before_first: max_before,
            last_offset: offset,
        }
    }

    /// Applies an event of group key `key` at `offset`.
    #[inline]
    fn apply(&mut self, key: u32, offset: i64, plan: &AggPlan, event: &Event) {
        let Pane {
            slots,
            dirty,
            states,
            ..
        } = self;
        let slot = slots.get_or_insert_with(key, || {
            dirty.push(false);
            states.push_empty() as u32
        }) as usize;
        plan.update(states.slot_mut(slot), event);
        dirty[slot] = true;
        self.any_dirty = true;
        self.last_offset = offset;
    }

    fn remap_keys(&mut self, remap: &[u32]) {
        self.slots = self.slots.remapped(remap);
    }
}

/// The panes of one metric, sorted by start. Events arrive nearly in
/// event-time order, so the pane an event needs is almost always the newest
/// one: it is checked first, then found by binary search. (A map keyed by
/// start cost a tree walk per event and metric; a ring indexed by start
/// would let one far-future timestamp allocate every pane in between.)
#[derive(Default)]
struct Panes(VecDeque<(i64, Pane)>);

impl Panes {
    /// The pane starting at `start`, created by `make` if absent.
    #[inline]
    fn get_or_insert_with(&mut self, start: i64, make: impl FnOnce() -> Pane) -> &mut Pane {
        let panes = &mut self.0;
        let at = match panes.back() {
            Some(&(last, _)) if last == start => panes.len() - 1,
            Some(&(last, _)) if last < start => {
                panes.push_back((start, make()));
                panes.len() - 1
            }
            None => {
                panes.push_back((start, make()));
                0
            }
            Some(_) => match panes.binary_search_by_key(&start, |(s, _)| *s) {
                Ok(at) => at,
                Err(at) => {
                    panes.insert(at, (start, make()));
                    at
                }
            },
        };
        &mut panes[at].1
    }

    /// Start of the oldest pane starting at or after `start`.
    fn first_at_or_after(&self, start: i64) -> Option<i64> {
        let at = self.0.partition_point(|(s, _)| *s < start);
        self.0.get(at).map(|(s, _)| *s)
    }

    /// Start of the oldest pane.
    fn first_start(&self) -> Option<i64> {
        self.0.front().map(|(s, _)| *s)
    }

    /// Panes starting in `[from, to)`, oldest first.
    fn range(&self, from: i64, to: i64) -> impl Iterator<Item = &Pane> {
        let lo = self.0.partition_point(|(s, _)| *s < from);
        let hi = self.0.partition_point(|(s, _)| *s < to);
        self.0.range(lo..hi).map(|(_, p)| p)
    }

    /// Drops the panes starting before `start`.
    fn drop_before(&mut self, start: i64) {
        let n = self.0.partition_point(|(s, _)| *s < start);
        self.0.drain(..n);
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &Pane)> {
        self.0.iter().map(|(s, p)| (*s, p))
    }

    fn values(&self) -> impl Iterator<Item = &Pane> {
        self.0.iter().map(|(_, p)| p)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (i64, &mut Pane)> {
        self.0.iter_mut().map(|(s, p)| (*s, p))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Pane> {
        self.0.iter_mut().map(|(_, p)| p)
    }
}

/// A window's row waiting for the next emit: built when the watermark
/// passed the window's end, so no later event can reach it.
struct FinalRow {
    window: Window,
    key: u32,
    acc: Accumulator,
    first_offset: i64,
    last_offset: i64,
}

/// Tumbling and hopping windows of one metric in one partition, kept as
/// panes of one `slide` ("no pane, no gain"): an event updates only its
/// pane, and a window's state is the merge of its `size / slide` panes,
/// computed only when a row is written. A 5-minute window sliding every
/// minute therefore costs one update per event instead of five, and one
/// copy of the state instead of five. Tumbling windows are the case of one
/// pane per window.
///
/// A window's final rows are built the moment the watermark passes its end
/// (in [`PanedWindows::finalize`], right after the event that moved the
/// watermark), exactly as a per-window state would have been frozen: an
/// event that is late for it but still lands in one of its panes for a
/// newer window never reaches it.
pub(super) struct PanedWindows {
    size_ms: i64,
    slide_ms: i64,
    /// Panes by start, each `slide_ms` long.
    panes: Panes,
    /// End of the earliest window with a pane that is not final yet
    /// (`i64::MAX` without panes): until the watermark reaches it, moving
    /// the watermark finalizes nothing, which is the case for almost every
    /// event.
    next_final_end: i64,
    /// Windows ending at or before this are final (rows built or written).
    finalized_end: i64,
    /// Final rows built since the last emit.
    pending: Vec<FinalRow>,
}

impl PanedWindows {
    /// Windows of `size_ms` starting every `slide_ms` (which divides it).
    pub(super) fn new(size_ms: i64, slide_ms: i64) -> Self {
        PanedWindows {
            size_ms,
            slide_ms,
            panes: Panes::default(),
            next_final_end: i64::MAX,
            finalized_end: i64::MIN,
            pending: Vec::new(),
        }
    }

    /// Starts of the windows containing the pane starting at `pane`.
    fn windows_of_pane(&self, pane: i64) -> impl Iterator<Item = i64> + use<> {
        let (slide, count) = (self.slide_ms, self.size_ms / self.slide_ms);
        (0..count).map(move |i| pane - (count - 1 - i) * slide)
    }

    /// The panes (present) of the window starting at `start`.
    fn panes_of_window(&self, start: i64) -> impl Iterator<Item = &Pane> {
        self.panes.range(start, start + self.size_ms)
    }

    /// Merges the window's panes for every key in `keys` (sorted, unique).
    fn window_rows(&self, start: i64, keys: &[u32], plan: &AggPlan, out: &mut Vec<FinalRow>) {
        let window = Window {
            start_ms: start,
            end_ms: start + self.size_ms,
        };
        let (mut first_offset, mut last_offset) = (i64::MAX, i64::MIN);
        for pane in self.panes_of_window(start) {
            first_offset = first_offset.min(pane.first_offset);
            last_offset = last_offset.max(pane.last_offset);
        }
        let mut parts = Vec::new();
        for &key in keys {
            parts.clear();
            parts.extend(self.panes_of_window(start).filter_map(|pane| {
                let slot = pane.slots.get(key)?;
                Some((&pane.states, slot as usize))
            }));
            out.push(FinalRow {
                window,
                key,
                acc: AccumulatorSlab::merged(&parts).unwrap_or_else(|| plan.new_accumulator()),
                first_offset,
                last_offset,
            });
        }
    }

    /// Builds the final rows of every window ending at or before
    /// `watermark` (except those final before a restart, ending at or
    /// before `floor`) and drops the panes no open window needs. Windows
    /// without any pane yet become final too: a late event creating one of
    /// their panes later must not reach them.
    fn finalize(&mut self, watermark: i64, floor: i64, plan: &AggPlan) -> u64 {
        if watermark <= self.finalized_end {
            return 0;
        }
        if watermark < self.next_final_end {
            // No window with a pane ends in (finalized_end, watermark], and
            // no pane is old enough to drop (its newest window ends after
            // its oldest one).
            self.finalized_end = watermark;
            return 0;
        }
        let (size, slide) = (self.size_ms, self.slide_ms);
        // Panes the watermark has passed get no more events in time: their
        // distinct sets are sorted once here, for all the windows that
        // merge them (a late event turns one back into a table).
        for (start, pane) in self.panes.iter_mut() {
            if start + slide > watermark {
                break;
            }
            pane.states.freeze_distinct();
        }
        let mut finalized = 0;
        if let Some(first_pane) = self.panes.first_start() {
            let mut start = first_pane - (size - slide);
            if self.finalized_end != i64::MIN {
                // The first window not yet final ends above finalized_end.
                start = start.max(boundary_after(self.finalized_end - size, slide));
            }
            let mut rows = std::mem::take(&mut self.pending);
            while start + size <= watermark {
                // A window holding no pane has no rows: go straight to the
                // first one holding the next pane (after a gap in event
                // time, e.g. a watermark that leapt ahead, stepping every
                // `slide` could take billions of steps).
                let Some(next_pane) = self.panes.first_at_or_after(start) else {
                    break;
                };
                let first_holding_it = next_pane - (size - slide);
                if first_holding_it > start {
                    start = first_holding_it;
                    continue;
                }
                if start + size > floor {
                    let mut keys: Vec<u32> = self
                        .panes_of_window(start)
                        .flat_map(|p| p.slots.keys())
                        .collect();
                    keys.sort_unstable();
                    keys.dedup();
                    finalized += keys.len() as u64;
                    self.window_rows(start, &keys, plan, &mut rows);
                }
                start += slide;
            }
            self.pending = rows;
        }
        self.finalized_end = watermark;
        // A pane's newest window starts at the pane itself.
        self.panes.drop_before(watermark.saturating_sub(size - 1));
        self.next_final_end = self.panes.first_start().map_or(i64::MAX, |first| {
            // Window ends are multiples of `slide` (windows start on them).
            (first + slide).max(boundary_after(watermark, slide))
        });
        finalized
    }

    /// The pane starting at `pane` (created at `offset` if new).
    #[inline]
    fn pane(&mut self, pane: i64, metric: &MetricDef, offset: i64, max_before: i64) -> &mut Pane {
        let PanedWindows {
            slide_ms,
            panes,
            next_final_end,
            finalized_end,
            ..
        } = self;
        panes.get_or_insert_with(pane, || {
            // The new pane's first window not yet final (its windows end at
            // pane + slide, ..., pane + size, multiples of slide) may end
            // before every window of the older panes.
            let above_final = boundary_after(*finalized_end, *slide_ms);
            *next_final_end = (*next_final_end).min((pane + *slide_ms).max(above_final));
            Pane::new(metric, offset, max_before)
        })
    }

    /// Rows of the open windows with a changed key, merged over their panes;
    /// clears the change marks.
    fn open_rows(&mut self, floor: i64, plan: &AggPlan) -> Vec<FinalRow> {
        let mut starts: Vec<i64> = self
            .panes
            .iter()
            .filter(|(_, p)| p.any_dirty)
            .flat_map(|(start, _)| self.windows_of_pane(start))
            .filter(|&w| {
                let end = w + self.size_ms;
                end > self.finalized_end && end > floor
            })
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let mut rows = Vec::new();
        for start in starts {
            let mut keys: Vec<u32> = self
                .panes_of_window(start)
                .filter(|p| p.any_dirty)
                .flat_map(|p| {
                    p.slots
                        .iter()
                        .filter(|&(_, slot)| p.dirty[slot as usize])
                        .map(|(key, _)| key)
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            self.window_rows(start, &keys, plan, &mut rows);
        }
        for pane in self.panes.values_mut().filter(|p| p.any_dirty) {
            pane.dirty.fill(false);
            pane.any_dirty = false;
        }
        rows
    }
}

impl WindowOperator for PanedWindows {
    #[inline]
    fn apply(
        &mut self,
        metric: &MetricDef,
        keys: &mut KeyDictionary,
        event: &Event,
        at: EventContext,
    ) -> bool {
        let (size, slide) = (self.size_ms, self.slide_ms);
        let pane = boundary_at_or_before(event.time_ms, slide);
        // The pane's windows end at pane + slide, ..., pane + size.
        // Final and written before a restart (end ≤ floor while the
        // replayed watermark catches up) is not late.
        let late = pane + slide <= at.watermark;
        if pane + size > at.watermark.max(at.floor) {
            let key = keys.intern(metric, event);
            self.pane(pane, metric, at.offset, at.max_before).apply(
                key,
                at.offset,
                &metric.plan,
                event,
            );
        }
        late
    }

    fn advance_watermark(&mut self, plan: &AggPlan, watermark: i64, floor: i64) -> u64 {
        self.finalize(watermark, floor, plan)
    }

    fn emit<S: RowSink + ?Sized>(&mut self, out: &mut MetricEmit<'_, S>) -> u64 {
        let metric = out.metric;
        let plan = &metric.plan;
        let finals = std::mem::take(&mut self.pending);
        let open_rows = self.open_rows(out.floor, plan);
        for (r, is_final) in finals
            .into_iter()
            .map(|r| (r, true))
            .chain(open_rows.into_iter().map(|r| (r, false)))
        {
            let offsets = RowOffsets {
                first: r.first_offset,
                last: r.last_offset,
            };
            out.row(r.window, r.key, offsets, &r.acc, is_final);
        }
        for pane in self.panes.values() {
            out.note_open(ReplayStart {
                offset: pane.first_offset,
                max_event_before: pane.max_event_before_first,
            });
        }
        // Windows become final as the watermark moves (counted there).
        0
    }

    fn open_states(&self) -> usize {
        self.panes.values().map(|p| p.slots.len()).sum()
    }

    fn mark_live_keys(&self, live: &mut [bool]) {
        for key in self.panes.values().flat_map(|p| p.slots.keys()) {
            live[key as usize] = true;
        }
    }

    fn remap_keys(&mut self, remap: &[u32], _keys: usize) {
        for pane in self.panes.values_mut() {
            pane.remap_keys(remap);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;
    use crate::operator::test_support::{emit_parsed, event, metric};
    use crate::operator::{Checkpoint, PartitionState};

    /// A slot index answers like a map whatever the ids' order and spread,
    /// dense while it may be, sparse past 65,536 ids at under a quarter.
    #[test]
    fn slot_index_is_a_map_dense_or_sparse() {
        let mut lcg = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = |n: u64| {
            lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (lcg >> 33) % n
        };
        // Ids in order, as a new pane of known keys sees them: doubling,
        // not one growth per id, and no more room than twice the ids.
        let mut in_order = SlotIndex::default();
        for key in 0..1_000 {
            in_order.get_or_insert_with(key, || key);
        }
        let SlotIndex::Dense { slots, .. } = &in_order else {
            panic!("1,000 ids in order are dense")
        };
        assert!(slots.capacity() <= 2_048, "{}", slots.capacity());
        for (spread, expect_dense) in [(1_000, true), (60_000, true), (5_000_000, false)] {
            let mut index = SlotIndex::default();
            let mut reference = std::collections::BTreeMap::new();
            // Dense entries first, then keys of the spread: the turn to a
            // hash map carries the entries over.
            let near = (0..500).map(|i| i * 97 % 60_000);
            for key in near.chain((0..3_000).map(|_| next(spread))) {
                let key = key as u32;
                let fresh = reference.len() as u32;
                let slot = *reference.entry(key).or_insert(fresh);
                assert_eq!(index.get_or_insert_with(key, || fresh), slot, "key {key}");
            }
            assert_eq!(
                matches!(index, SlotIndex::Dense { .. }),
                expect_dense,
                "spread {spread}"
            );
            if let SlotIndex::Dense { slots, .. } = &index {
                // Grown by doubling: at most twice what the ids need.
                assert!(
                    slots.capacity() <= 2 * slots.len(),
                    "{} for {}",
                    slots.capacity(),
                    slots.len()
                );
            }
            assert_eq!(index.len(), reference.len());
            let mut pairs: Vec<(u32, u32)> = index.iter().collect();
            pairs.sort_unstable();
            assert_eq!(
                pairs,
                reference.iter().map(|(&k, &s)| (k, s)).collect::<Vec<_>>()
            );
            for key in 0..2_000 {
                assert_eq!(index.get(key), reference.get(&key).copied(), "key {key}");
            }
            assert_eq!(index.get(u32::MAX - 1), None);
            // Renumbered keys keep their slots; a compacted spread is dense.
            let ids = *reference.keys().last().expect("keys") as usize + 1;
            let mut remap = vec![u32::MAX; ids];
            for (new, &old) in reference.keys().enumerate() {
                remap[old as usize] = new as u32;
            }
            let moved = index.remapped(&remap);
            assert!(matches!(moved, SlotIndex::Dense { .. }));
            for (&old, &slot) in &reference {
                assert_eq!(moved.get(remap[old as usize]), Some(slot));
            }
            assert_eq!(moved.len(), reference.len());
        }
    }

    /// A watermark that leaps years ahead (a valid but far-future event
    /// time) finalizes the open windows at once: only windows holding a pane
    /// are visited, not every `slide` in between.
    #[test]
    fn a_watermark_leap_finalizes_without_walking_every_window() {
        let (metric, decoder, lateness) =
            metric(r#"{ kind = "hopping", size = "5m", slide = "1s" }"#, "0s");
        let mut state = PartitionState::new(0, lateness, &[metric], Checkpoint::fresh(0));
        let t0 = 1_795_341_600_000;
        state.apply(0, &event(&decoder, t0, 1, 10));
        state.apply(1, &event(&decoder, t0 + 1_000, 2, 10));
        // 8,000 years of one-second slides later.
        let far = strata_schemas::decode::MAX_TIMESTAMP_MS - 60_000;
        state.apply(2, &event(&decoder, far, 3, 10));
        let rows = emit_parsed(&mut state);
        let finals = rows.iter().filter(|r| r.row["is_final"] == 1).count();
        // User 1 is in the 300 windows holding its pane, user 2 in 300.
        assert_eq!(finals, 600);
        assert!(
            rows.iter()
                .filter(|r| r.row["is_final"] == 0)
                .all(|r| r.row["user_id"] == "u3")
        );
    }

    /// Fixed windows keep one offset per window: the version of a key's row
    /// grows with every emission that changed it, and a final row is always
    /// above every open row of the same window.
    #[test]
    fn versions_grow_and_final_rows_win() {
        let (metric, decoder, lateness) = metric(r#"{ kind = "tumbling", size = "1m" }"#, "0s");
        let mut state = PartitionState::new(0, lateness, &[metric], Checkpoint::fresh(0));
        let t0 = 1_795_341_600_000;
        state.apply(0, &event(&decoder, t0, 1, 10));
        state.apply(1, &event(&decoder, t0 + 1, 2, 10));
        let first = emit_parsed(&mut state);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.row["version"] == 2));
        state.apply(2, &event(&decoder, t0 + 2, 1, 5));
        let second = emit_parsed(&mut state);
        assert_eq!(second.len(), 1, "only the changed key is written");
        assert_eq!(second[0].row["version"], Json::from(4));
        assert_eq!(second[0].row["agg_duration_ms_sum"], Json::from(15.0));
        // The next minute closes the first window: both keys final at 2·2+1.
        state.apply(3, &event(&decoder, t0 + 60_000, 3, 1));
        let third = emit_parsed(&mut state);
        let finals: Vec<_> = third.iter().filter(|r| r.row["is_final"] == 1).collect();
        assert_eq!(finals.len(), 2);
        assert!(finals.iter().all(|r| r.row["version"] == 5));
    }
}
