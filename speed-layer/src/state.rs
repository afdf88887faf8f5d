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

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap};
use serde_json::{Map, Value as Json};
use strata_schemas::aggregate::{AccumulatorSlab, AggPlan};
use strata_schemas::group_key::{self, KeyValue};
use strata_schemas::window::{
    Mergeable, SessionSet, Window, WindowKind, boundary_after, boundary_at_or_before,
};
use strata_schemas::{Accumulator, Event, MetricDef};
use strata_warehouse::{self as warehouse, rowbinary};

use crate::hot_sessions::HotSessions;
use crate::id_table::IdTable;

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
pub(crate) struct WindowMeta {
    /// Offset of the first event applied.
    first_offset: i64,
    /// The partition's max event time just before that first event.
    max_event_before_first: i64,
    /// Offset of the last event applied (the row version's base).
    pub(crate) last_offset: i64,
    /// Changed since last written.
    pub(crate) dirty: bool,
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

pub(crate) struct SessionEntry {
    pub(crate) meta: WindowMeta,
    pub(crate) acc: Accumulator,
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

/// Group keys of one metric, interned to dense ids so window states stay
/// compact: every key is stored once, encoded. A lookup encodes the event's
/// values into a reused buffer (a few bytes), then hashes and compares that
/// one byte string: fewer instructions than hashing the values one by one
/// and walking the stored encoding against them, which it replaced. A known
/// key is never cloned; the values are decoded again only when a row is
/// written.
///
/// A key's encoding is kept in its id's entry when it fits (a user id, a
/// country, a short page with its country), else in an overflow arena. A
/// lookup then reads one bucket of the [`IdTable`] (a tag and the id
/// together), then the entry: the id gives the entry's address and the
/// window state's (a user's sessions) at once, so the two loads run in
/// parallel. With many keys each is a cache miss; a control byte, then a
/// slot, then an arena read after a bounds read made more, one after the
/// other.
#[derive(Default)]
struct KeyDictionary {
    hasher: DefaultHashBuilder,
    /// Key ids, looked up by the hash of their encoding.
    table: IdTable,
    /// Key `id`'s encoding, or where it is in `long`.
    entries: Vec<KeyEntry>,
    /// Encodings longer than [`KeyEntry::INLINE`], back to back.
    long: Vec<u8>,
    /// Reused: a new key's encoding.
    buf: Vec<u8>,
}

/// One key's encoding: inline up to [`Self::INLINE`] bytes, else the
/// start of its `len` bytes in the dictionary's `long` arena. 20 bytes: no
/// more than the arena's bytes and end offset of a typical key took.
#[derive(Clone, Copy)]
struct KeyEntry {
    len: u32,
    bytes: [u8; KeyEntry::INLINE],
}

impl KeyEntry {
    const INLINE: usize = 16;

    /// An entry for `key`, appending it to `long` if it does not fit.
    fn new(key: &[u8], long: &mut Vec<u8>) -> Self {
        let len = u32::try_from(key.len()).expect("a group key under 4 GiB");
        let mut bytes = [0; Self::INLINE];
        if key.len() <= Self::INLINE {
            bytes[..key.len()].copy_from_slice(key);
        } else {
            let start = u32::try_from(long.len()).expect("under 4 GiB of long live group keys");
            bytes[..4].copy_from_slice(&start.to_le_bytes());
            long.extend_from_slice(key);
        }
        KeyEntry { len, bytes }
    }

    /// The encoding.
    #[inline]
    fn key<'a>(&'a self, long: &'a [u8]) -> &'a [u8] {
        let len = self.len as usize;
        if len <= Self::INLINE {
            &self.bytes[..len]
        } else {
            let start = u32::from_le_bytes(self.bytes[..4].try_into().expect("4 bytes")) as usize;
            &long[start..start + len]
        }
    }
}

/// Byte equality for the short slices group keys usually are, compared in
/// at most four word loads instead of a call into libc's `memcmp` (which,
/// for keys of 4 to 30 bytes, a user id or a page, cost more than the
/// comparison itself).
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0 => true,
        // Bytes 0, n/2 and n-1 cover 1 to 3 bytes (a byte loop would be
        // turned back into a `memcmp` call).
        1..4 => {
            let three = |s: &[u8]| [s[0], s[n / 2], s[n - 1]];
            three(a) == three(b)
        }
        4..8 => (half(a, 0) ^ half(b, 0)) | (half(a, n - 4) ^ half(b, n - 4)) == 0,
        8..=16 => (word(a, 0) ^ word(b, 0)) | (word(a, n - 8) ^ word(b, n - 8)) == 0,
        17..=32 => {
            (word(a, 0) ^ word(b, 0))
                | (word(a, 8) ^ word(b, 8))
                | (word(a, n - 16) ^ word(b, n - 16))
                | (word(a, n - 8) ^ word(b, n - 8))
                == 0
        }
        _ => a == b,
    }
}

impl KeyDictionary {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn intern(&mut self, metric: &MetricDef, event: &Event) -> u32 {
        let KeyDictionary {
            hasher,
            table,
            entries,
            long,
            buf,
        } = self;
        // The event's key is encoded (a few bytes: a tag, a length and the
        // text of each value), then hashed and compared as one byte string:
        // a short copy costs fewer instructions than walking the stored
        // encoding value by value against the event's values.
        buf.clear();
        group_key::encode(buf, metric, event);
        let hash = hasher.hash_one(buf.as_slice());
        if let Some(id) = table.find(hash, |id| short_eq(entries[id as usize].key(long), buf)) {
            return id;
        }
        let id = u32::try_from(entries.len()).expect("fewer than 2^32 live group keys");
        entries.push(KeyEntry::new(buf, long));
        table.insert(hash, id, |id| {
            hasher.hash_one(entries[id as usize].key(long))
        });
        id
    }

    /// The group-by values of key `id`, borrowed from the dictionary.
    fn values(&self, id: u32) -> impl Iterator<Item = KeyValue<'_>> {
        group_key::values(self.entries[id as usize].key(&self.long))
    }

    /// Keeps only the keys with `live[id]`, renumbered densely in their old
    /// order; returns the old → new id map (`u32::MAX` for a dropped key).
    fn compact(&mut self, live: &[bool]) -> Vec<u32> {
        let old = std::mem::take(self);
        self.hasher = old.hasher;
        // Sized for the live keys at once: growing would re-hash them all
        // at every doubling.
        self.table = IdTable::with_capacity(live.iter().filter(|&&l| l).count());
        let mut remap = vec![u32::MAX; old.entries.len()];
        for (id, new) in remap.iter_mut().enumerate() {
            if !live[id] {
                continue;
            }
            let key = old.entries[id].key(&old.long);
            let next = self.entries.len() as u32;
            self.entries.push(KeyEntry::new(key, &mut self.long));
            let hash = self.hasher.hash_one(key);
            let (entries, long) = (&self.entries, &self.long);
            let hasher = &self.hasher;
            self.table.insert(hash, next, |id| {
                hasher.hash_one(entries[id as usize].key(long))
            });
            *new = next;
        }
        remap
    }
}

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
            states: metric.plan.new_slab(),
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
        plan.update_slot(states, slot, event);
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
struct PanedWindows {
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
    fn new(size_ms: i64, slide_ms: i64) -> Self {
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
    fn window_rows(
        &self,
        start: i64,
        keys: &[u32],
        plan: &strata_schemas::AggPlan,
        out: &mut Vec<FinalRow>,
    ) {
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
    fn finalize(&mut self, watermark: i64, floor: i64, plan: &strata_schemas::AggPlan) -> u64 {
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
    fn open_rows(&mut self, floor: i64, plan: &strata_schemas::AggPlan) -> Vec<FinalRow> {
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

enum Windows {
    Fixed(PanedWindows),
    Session {
        gap_ms: i64,
        /// Sessions by key id (ids are dense: the dictionary is compacted).
        open: Vec<SessionSet<SessionEntry>>,
        /// Sessions merged away since the last emit: (window, key, version).
        retracted: Vec<(Window, u32, u64)>,
        /// Each key's newest session, where the plan's state fits a cache
        /// line: written back to `open` before `open` is read.
        hot: Option<HotSessions>,
    },
}

/// One metric's windows in one partition.
struct MetricWindows {
    metric: Arc<MetricDef>,
    /// The columns of the metric's speed rows.
    columns: Arc<[(String, String)]>,
    keys: KeyDictionary,
    windows: Windows,
}

impl MetricWindows {
    /// Number of open (window, key) states.
    fn open_states(&self) -> usize {
        match &self.windows {
            Windows::Fixed(fixed) => fixed.panes.values().map(|p| p.slots.len()).sum(),
            Windows::Session { open, .. } => open.iter().map(SessionSet::len).sum(),
        }
    }

    /// Drops the keys no open window uses once they could be the majority:
    /// a key space like user ids would otherwise grow the dictionary
    /// forever. Each compaction frees at least half of it, so the cost is
    /// amortised over the keys interned since the last one.
    fn compact_keys(&mut self) {
        if self.keys.len() <= 2 * self.open_states() + 4096 {
            return;
        }
        // The sets are read and renumbered: nothing may stay cached.
        if let Windows::Session {
            open,
            hot: Some(hot),
            ..
        } = &mut self.windows
        {
            hot.write_back_all(open);
        }
        let mut live = vec![false; self.keys.len()];
        match &self.windows {
            Windows::Fixed(fixed) => {
                for key in fixed.panes.values().flat_map(|p| p.slots.keys()) {
                    live[key as usize] = true;
                }
            }
            Windows::Session { open, .. } => {
                for (key, set) in open.iter().enumerate() {
                    live[key] = !set.is_empty();
                }
            }
        }
        let remap = self.keys.compact(&live);
        match &mut self.windows {
            Windows::Fixed(fixed) => {
                for pane in fixed.panes.values_mut() {
                    pane.remap_keys(&remap);
                }
            }
            Windows::Session { open, .. } => {
                let mut kept = Vec::new();
                kept.resize_with(self.keys.len(), SessionSet::default);
                for (key, set) in std::mem::take(open).into_iter().enumerate() {
                    if let Some(slot) = kept.get_mut(remap[key] as usize) {
                        *slot = set;
                    }
                }
                *open = kept;
            }
        }
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

/// The rows of one metric from one emit, as a `RowBinary` body (see
/// [`strata_warehouse::rowbinary`]) of the metric's speed-row columns: written
/// straight to bytes, ready to send to the speed table.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRows {
    /// The rows, back to back.
    pub body: Vec<u8>,
    /// Number of rows in `body`.
    pub count: usize,
    /// The columns of every row, (name, ClickHouse type) in order
    /// ([`warehouse::speed_row_columns`]).
    pub columns: Arc<[(String, String)]>,
}

impl MetricRows {
    /// No rows yet, of `columns`.
    pub fn new(columns: Arc<[(String, String)]>) -> Self {
        MetricRows {
            body: Vec::new(),
            count: 0,
            columns,
        }
    }

    /// Appends another body of the same table.
    pub fn append(&mut self, other: &MetricRows) {
        debug_assert_eq!(self.columns, other.columns);
        self.body.extend_from_slice(&other.body);
        self.count += other.count;
    }

    /// How the body is inserted.
    pub fn format(&self) -> warehouse::InsertFormat {
        warehouse::InsertFormat::row_binary(&self.columns)
    }

    /// Every row read back into a map keyed by column name.
    pub fn parsed(&self) -> Vec<Map<String, Json>> {
        rowbinary::read_rows(&self.body, &self.columns)
            .expect("the row writer writes the rows of its columns")
    }
}

/// A speed row parsed back into a map, for tests and tools that inspect
/// rows (see [`Emission::parsed_rows`]).
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
    /// Rows per metric, indexed like the partition's metric list.
    pub rows: Vec<MetricRows>,
    /// The checkpoint to store once every row is written.
    pub checkpoint: Checkpoint,
    /// Windows that became final in this emission.
    pub finalized: u64,
}

impl Emission {
    /// Number of rows, over all metrics.
    pub fn row_count(&self) -> usize {
        self.rows.iter().map(|r| r.count).sum()
    }

    /// Every row parsed back into a map, metric by metric in write order.
    pub fn parsed_rows(&self) -> Vec<SpeedRow> {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(metric, rows)| {
                rows.parsed()
                    .into_iter()
                    .map(move |row| SpeedRow { metric, row })
            })
            .collect()
    }
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
            metrics: metrics
                .iter()
                .map(|m| MetricWindows {
                    metric: m.clone(),
                    columns: warehouse::speed_row_columns(m).into(),
                    keys: KeyDictionary::default(),
                    windows: match m.window {
                        WindowKind::Session { gap } => Windows::Session {
                            gap_ms: gap.as_i64(),
                            open: Vec::new(),
                            retracted: Vec::new(),
                            hot: HotSessions::for_plan(&m.plan),
                        },
                        WindowKind::Tumbling { size } => {
                            Windows::Fixed(PanedWindows::new(size.as_i64(), size.as_i64()))
                        }
                        WindowKind::Hopping { size, slide } => {
                            Windows::Fixed(PanedWindows::new(size.as_i64(), slide.as_i64()))
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
        for mw in &mut self.metrics {
            let metric = &*mw.metric;
            if !metric.filter.matches(event) {
                outcome.filtered += 1;
                continue;
            }
            let t = event.time_ms;
            match &mut mw.windows {
                Windows::Fixed(fixed) => {
                    let (size, slide) = (fixed.size_ms, fixed.slide_ms);
                    let pane = boundary_at_or_before(t, slide);
                    // The pane's windows end at pane + slide, ..., pane + size.
                    // Final and written before a restart (end ≤ floor while
                    // the replayed watermark catches up) is not late.
                    if pane + slide <= watermark {
                        outcome.late += 1;
                    }
                    if pane + size > watermark.max(floor) {
                        let key = mw.keys.intern(metric, event);
                        fixed.pane(pane, metric, offset, max_before).apply(
                            key,
                            offset,
                            &metric.plan,
                            event,
                        );
                    }
                }
                Windows::Session {
                    gap_ms,
                    open,
                    retracted,
                    hot,
                } => {
                    // A session event older than the watermark could overlap a
                    // session that is already final; it is late.
                    if t < watermark {
                        outcome.late += 1;
                        continue;
                    }
                    let key = mw.keys.intern(metric, event);
                    if let Some(hot) = hot.as_mut()
                        && hot.try_apply(&metric.plan, key, t, *gap_ms, offset, event)
                    {
                        continue;
                    }
                    let plan = &metric.plan;
                    if open.len() <= key as usize {
                        open.resize_with(key as usize + 1, SessionSet::default);
                    }
                    let set = &mut open[key as usize];
                    if let Some(hot) = hot.as_mut() {
                        hot.write_back(key, set);
                    }
                    let change = set.insert(
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
                    if let Some(hot) = hot.as_mut() {
                        hot.cache(key, set);
                    }
                }
            }
        }
        self.max_event_ms = self.max_event_ms.max(event.time_ms);
        let moved = self.watermark();
        if moved > watermark {
            for mw in &mut self.metrics {
                if let Windows::Fixed(fixed) = &mut mw.windows {
                    self.finalized += fixed.finalize(moved, floor, &mw.metric.plan);
                }
            }
        }
        self.next_offset = self.next_offset.max(offset + 1);
        outcome
    }

    /// The same state without the session cache, as a reference.
    #[cfg(test)]
    fn without_session_cache(mut self) -> Self {
        for mw in &mut self.metrics {
            if let Windows::Session { hot, .. } = &mut mw.windows {
                *hot = None;
            }
        }
        self
    }

    /// Events applied through the session cache.
    #[cfg(test)]
    fn session_cache_hits(&self) -> u64 {
        self.metrics
            .iter()
            .map(|mw| match &mw.windows {
                Windows::Session { hot: Some(hot), .. } => hot.hits,
                _ => 0,
            })
            .sum()
    }

    /// Number of open (window, key) states, for the state-size gauge.
    pub fn open_windows(&self) -> usize {
        self.metrics.iter().map(MetricWindows::open_states).sum()
    }

    /// Collects the rows of every changed or newly final window (each row
    /// stamped `updated_at_s`, Unix seconds), removes final windows, and
    /// computes the checkpoint those rows make valid.
    pub fn emit(&mut self, updated_at_s: u32) -> Emission {
        let watermark = self.watermark();
        let floor = self.restored_floor_ms;
        let partition = self.partition;
        let mut emitted = Vec::with_capacity(self.metrics.len());
        let mut finalized = std::mem::take(&mut self.finalized);
        // (first offset, max event before it) of the earliest open window.
        let mut earliest: Option<(i64, i64)> = None;
        let mut note = |first_offset: i64, max_before: i64| {
            if earliest.is_none_or(|(o, _)| first_offset < o) {
                earliest = Some((first_offset, max_before));
            }
        };
        for mw in &mut self.metrics {
            let metric = &*mw.metric;
            let mut out = MetricRows::new(mw.columns.clone());
            let rows = RowWriter::new(metric, &mw.keys, partition, updated_at_s);
            match &mut mw.windows {
                Windows::Fixed(fixed) => {
                    let plan = &metric.plan;
                    let finals = std::mem::take(&mut fixed.pending);
                    let open_rows = fixed.open_rows(floor, plan);
                    for (r, is_final) in finals
                        .into_iter()
                        .map(|r| (r, true))
                        .chain(open_rows.into_iter().map(|r| (r, false)))
                    {
                        let offsets = RowOffsets {
                            first: r.first_offset,
                            last: r.last_offset,
                        };
                        rows.row(&mut out, r.window, r.key, offsets, &r.acc, is_final);
                    }
                    for pane in fixed.panes.values() {
                        note(pane.first_offset, pane.max_event_before_first);
                    }
                }
                Windows::Session {
                    open,
                    retracted,
                    hot,
                    ..
                } => {
                    for (window, key, version) in retracted.drain(..) {
                        // A session inside the final floor is a partial replay
                        // of a session already final: never touch its row.
                        if window.end_ms > floor {
                            rows.tombstone(&mut out, window, key, version);
                        }
                    }
                    for (key, set) in open.iter_mut().enumerate() {
                        let key = key as u32;
                        // Written back before the set is read, cached again
                        // (as this emit leaves it) after.
                        if let Some(hot) = hot.as_mut() {
                            hot.write_back(key, set);
                        }
                        for (window, entry) in set.drain_closed(watermark) {
                            finalized += 1;
                            if window.end_ms > floor {
                                let offsets = RowOffsets::from(&entry.meta);
                                rows.row(&mut out, window, key, offsets, &entry.acc, true);
                            }
                        }
                        for (window, entry) in set.iter_mut() {
                            note(entry.meta.first_offset, entry.meta.max_event_before_first);
                            if entry.meta.dirty {
                                entry.meta.dirty = false;
                                if window.end_ms > floor {
                                    let offsets = RowOffsets::from(&entry.meta);
                                    rows.row(&mut out, window, key, offsets, &entry.acc, false);
                                }
                            }
                        }
                        if let Some(hot) = hot.as_mut() {
                            hot.cache(key, set);
                        }
                    }
                }
            }
            emitted.push(out);
        }
        for mw in &mut self.metrics {
            mw.compact_keys();
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
            rows: emitted,
            checkpoint,
            finalized,
        }
    }
}

/// Offsets a row records: where its window's replay starts, and the last
/// offset applied (the version's base).
#[derive(Clone, Copy)]
struct RowOffsets {
    first: i64,
    last: i64,
}

impl From<&WindowMeta> for RowOffsets {
    fn from(meta: &WindowMeta) -> Self {
        RowOffsets {
            first: meta.first_offset,
            last: meta.last_offset,
        }
    }
}

/// Writes one metric's speed rows as `RowBinary`, in the order of
/// [`warehouse::speed_row_columns`]: window, group key, partition, state,
/// offsets, version, retracted, is_final, updated_at.
struct RowWriter<'a> {
    metric: &'a MetricDef,
    keys: &'a KeyDictionary,
    partition: i32,
    updated_at_s: u32,
    /// The state columns of an empty accumulator: a retraction's.
    empty_state: Vec<u8>,
}

impl<'a> RowWriter<'a> {
    fn new(
        metric: &'a MetricDef,
        keys: &'a KeyDictionary,
        partition: i32,
        updated_at_s: u32,
    ) -> Self {
        let mut empty_state = Vec::new();
        warehouse::state::write_rowbinary(&metric.plan.new_accumulator(), &mut empty_state);
        RowWriter {
            metric,
            keys,
            partition,
            updated_at_s,
            empty_state,
        }
    }

    /// The columns every row starts with: window, group key, partition.
    fn head(&self, out: &mut Vec<u8>, window: Window, key: u32) {
        rowbinary::write_i64(out, window.start_ms);
        rowbinary::write_i64(out, window.end_ms);
        for (field, value) in self.metric.group_by.iter().zip(self.keys.values(key)) {
            rowbinary::write_key_value(out, value, field.ty);
        }
        rowbinary::write_i32(out, self.partition);
    }

    /// The columns every row ends with.
    fn tail(
        &self,
        out: &mut Vec<u8>,
        offsets: RowOffsets,
        version: u64,
        retracted: bool,
        is_final: bool,
    ) {
        rowbinary::write_i64(out, offsets.first);
        rowbinary::write_i64(out, offsets.last);
        rowbinary::write_u64(out, version);
        rowbinary::write_u8(out, u8::from(retracted));
        rowbinary::write_u8(out, u8::from(is_final));
        rowbinary::write_datetime(out, self.updated_at_s);
    }

    /// A window's row: its state, offsets and version.
    fn row(
        &self,
        out: &mut MetricRows,
        window: Window,
        key: u32,
        offsets: RowOffsets,
        acc: &Accumulator,
        is_final: bool,
    ) {
        let body = &mut out.body;
        self.head(body, window, key);
        warehouse::state::write_rowbinary(acc, body);
        // The version only grows: a later offset, or the same offset turned final.
        let version = offsets.last as u64 * 2 + u64::from(is_final);
        self.tail(body, offsets, version, false, is_final);
        out.count += 1;
    }

    /// The retraction of a session merged away (its state and offsets at
    /// their zero values).
    fn tombstone(&self, out: &mut MetricRows, window: Window, key: u32, version: u64) {
        let body = &mut out.body;
        self.head(body, window, key);
        body.extend_from_slice(&self.empty_state);
        self.tail(body, RowOffsets { first: 0, last: 0 }, version, true, true);
        out.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use strata_schemas::config;

    use super::*;

    const STAMP: u32 = 1_795_406_400; // 2026-11-23 04:00:00 UTC

    fn metric(window: &str, lateness: &str) -> (Arc<MetricDef>, strata_schemas::Decoder, i64) {
        metric_grouped(window, lateness, r#"["user_id"]"#)
    }

    /// A count/sum metric grouped by `group_by` (a TOML array).
    fn metric_grouped(
        window: &str,
        lateness: &str,
        group_by: &str,
    ) -> (Arc<MetricDef>, strata_schemas::Decoder, i64) {
        let text = format!(
            r#"
[contracts]
dir = {:?}
[sources.s]
topic = "t"
contract = "page_view"
event_time_field = "event_time"
allowed_lateness = "{lateness}"
[metrics.m]
source = "s"
window = {window}
group_by = {group_by}
aggregations = [
  {{ name = "n", function = "count" }},
  {{ name = "s", function = "sum", field = "duration_ms" }},
]
"#,
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../schemas/contracts")
                .display()
                .to_string()
        );
        let config = config::parse(&text, "test.toml", Path::new("."), |_| None).unwrap();
        let source = config.sources.values().next().unwrap();
        (
            config.metrics[0].clone(),
            source.decoder(),
            source.allowed_lateness.as_i64(),
        )
    }

    fn event(decoder: &strata_schemas::Decoder, t: i64, user: u64, duration: i64) -> Event {
        let payload = format!(
            r#"{{"event_time":{t},"user_id":"u{user}","page":"/p","country":"DE","duration_ms":{duration}}}"#
        );
        decoder.decode(payload.as_bytes()).unwrap()
    }

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

    #[test]
    fn short_eq_is_byte_equality() {
        let bytes: Vec<u8> = (0u8..80).collect();
        // Equal content at another address.
        let twin = bytes.clone();
        for len in 0..48 {
            let a = &bytes[..len];
            assert!(short_eq(a, &twin[..len]));
            for flip in 0..len {
                let mut b = a.to_vec();
                b[flip] ^= 0x40;
                assert!(!short_eq(a, &b), "len {len}, byte {flip}");
            }
            assert!(!short_eq(a, &bytes[..len + 1]));
        }
    }

    #[test]
    fn dictionary_tells_keys_apart_whose_bytes_run_together() {
        let (metric, decoder, _) = metric_grouped(
            r#"{ kind = "tumbling", size = "1m" }"#,
            "0s",
            r#"["page", "country"]"#,
        );
        let event = |page: &str, country: &str| {
            let payload = format!(
                r#"{{"event_time":1795341600000,"user_id":"u","page":{page:?},"country":{country:?},"duration_ms":1}}"#
            );
            decoder.decode(payload.as_bytes()).unwrap()
        };
        // Keys whose concatenations coincide, keys that are prefixes of
        // others, and enough of them to make the table grow and rehash.
        let mut pairs = vec![
            ("/a".to_string(), "BC".to_string()),
            ("/aB".to_string(), "C".to_string()),
            ("/aBC".to_string(), String::new()),
            ("/a".to_string(), "B".to_string()),
            (String::new(), "/aBC".to_string()),
        ];
        pairs.extend((0..3000).map(|i| (format!("/p{i}"), format!("{}", i % 7))));
        // Encodings of every length around the inline limit (16 bytes).
        pairs.extend((0..24).map(|n| ("x".repeat(n), String::new())));
        let mut keys = KeyDictionary::default();
        let ids: Vec<u32> = pairs
            .iter()
            .map(|(p, c)| keys.intern(&metric, &event(p, c)))
            .collect();
        let expected: Vec<u32> = (0..pairs.len() as u32).collect();
        assert_eq!(ids, expected, "every pair is a new key");
        for ((p, c), id) in pairs.iter().zip(&ids) {
            assert_eq!(keys.intern(&metric, &event(p, c)), *id, "{p:?} {c:?}");
            let values: Vec<KeyValue<'_>> = keys.values(*id).collect();
            assert_eq!(values, vec![KeyValue::String(p), KeyValue::String(c)]);
        }
        // Compaction renumbers the live keys and keeps them findable.
        let live: Vec<bool> = (0..pairs.len()).map(|i| i % 3 == 0).collect();
        let remap = keys.compact(&live);
        for (i, (p, c)) in pairs.iter().enumerate() {
            if live[i] {
                let values: Vec<KeyValue<'_>> = keys.values(remap[i]).collect();
                assert_eq!(values, vec![KeyValue::String(p), KeyValue::String(c)]);
            }
        }
        for (i, (p, c)) in pairs.iter().enumerate() {
            if live[i] {
                assert_eq!(keys.intern(&metric, &event(p, c)), remap[i]);
            } else {
                assert_eq!(remap[i], u32::MAX);
            }
        }
    }

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
            for row in state.emit(STAMP).parsed_rows() {
                let user = row.row["user_id"].as_str().unwrap();
                let n: u64 = user[1..].parse().unwrap();
                let start = row.row["window_start_ms"].as_i64().unwrap();
                // user u<minute*1000+i> only ever appears in its own minute.
                assert_eq!(start, t0 + (n / 1_000) as i64 * 60_000, "{:?}", row.row);
                assert_eq!(row.row["agg_events"], Json::from(1));
                written += 1;
            }
            let keys = state.metrics[0].keys.len();
            assert!(
                keys <= 2 * 1_000 + 4_096 + 1_000,
                "dictionary holds {keys} keys"
            );
        }
        // Each key written open in its minute, then final in the next (the
        // last minute is still open).
        assert_eq!(written, 30_000 + 29_000);
        assert!(state.metrics[0].keys.len() < 30_000);
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
        let rows = state.emit(STAMP).parsed_rows();
        let finals = rows.iter().filter(|r| r.row["is_final"] == 1).count();
        // User 1 is in the 300 windows holding its pane, user 2 in 300.
        assert_eq!(finals, 600);
        assert!(
            rows.iter()
                .filter(|r| r.row["is_final"] == 0)
                .all(|r| r.row["user_id"] == "u3")
        );
    }

    /// Two states of one session metric: with the session cache (the
    /// default), and without it, the reference.
    fn cached_and_uncached(metric: Arc<MetricDef>, lateness: i64) -> [PartitionState; 2] {
        let cached = PartitionState::new(
            0,
            lateness,
            std::slice::from_ref(&metric),
            Checkpoint::fresh(0),
        );
        let plain = PartitionState::new(0, lateness, &[metric], Checkpoint::fresh(0));
        [cached, plain.without_session_cache()]
    }

    /// The cache of each key's newest session changes no row, checkpoint or
    /// count: a seeded stream with events out of order (some bridging two
    /// sessions, some late) gives the same emissions, emit after emit, with
    /// the cache as without it, and over half the events take the cached path.
    #[test]
    fn session_cache_changes_no_emission() {
        let (metric, decoder, lateness) = metric(r#"{ kind = "session", gap = "10s" }"#, "5s");
        let [mut cached, mut plain] = cached_and_uncached(metric, lateness);
        let mut lcg = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |n: u64| {
            lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (lcg >> 33) % n
        };
        let t0 = 1_795_341_600_000;
        let mut emissions = 0;
        for offset in 0..20_000_i64 {
            // 40 users, an event every 50 ms on average, up to 8 s out of
            // order; every 997th user goes quiet long enough to close.
            let t = t0 + offset * 50 - next(8_000) as i64 + (offset / 4_000) * 60_000;
            let event = event(&decoder, t, next(40), next(1_000) as i64);
            assert_eq!(
                cached.apply(offset, &event),
                plain.apply(offset, &event),
                "offset {offset}"
            );
            if next(400) == 0 || offset == 19_999 {
                assert_eq!(
                    cached.emit(STAMP),
                    plain.emit(STAMP),
                    "emit after offset {offset}"
                );
                emissions += 1;
            }
        }
        assert!(emissions > 20, "{emissions}");
        let hits = cached.session_cache_hits();
        assert!(
            hits > 10_000,
            "{hits} events of 20,000 took the cached path"
        );
        assert_eq!(plain.session_cache_hits(), 0);
    }

    /// The cache stays warm across emits (a key with one event per emit
    /// interval still finds its session there), and a compaction that
    /// renumbers the keys leaves nothing stale in it: emissions equal the
    /// uncached state's throughout.
    #[test]
    fn session_cache_survives_emits_and_compaction() {
        let (metric, decoder, lateness) = metric(r#"{ kind = "session", gap = "30m" }"#, "0s");
        let mut states = cached_and_uncached(metric, lateness);
        let t0 = 1_795_341_600_000;
        let mut offset = 0;
        let mut step = |states: &mut [PartitionState; 2], t: i64, user: u64, emit: bool| {
            let e = event(&decoder, t, user, 7);
            let [cached, plain] = states;
            assert_eq!(cached.apply(offset, &e), plain.apply(offset, &e));
            offset += 1;
            if emit {
                assert_eq!(
                    cached.emit(STAMP),
                    plain.emit(STAMP),
                    "emit after offset {offset}"
                );
            }
        };
        // Six thousand users, one event each; users 1 and 2 active again
        // just before a watermark an hour on closes every other session:
        // the emit compacts the keys, and users 1 and 2 become ids 0 and 1
        // (a cache kept by old id would now hand user 2 user 1's session).
        for user in 0..6_000 {
            step(&mut states, t0 + user as i64, user, false);
        }
        for user in [1, 2] {
            step(&mut states, t0 + 3_599_000, user, false);
        }
        step(&mut states, t0 + 3_600_000, 6_000, true);
        assert_eq!(
            states[0].metrics[0].keys.len(),
            3,
            "compacted to users 1, 2 and 6,000"
        );
        assert_eq!(states[0].session_cache_hits(), 0);
        // Then five users, an emit after every event: each event finds its
        // key's session in the cache, but for the first of users 0, 3 and 4
        // (new sessions).
        for round in 0..10 {
            for user in 0..5 {
                step(
                    &mut states,
                    t0 + 3_600_000 + round * 1_000 + user as i64,
                    user,
                    true,
                );
            }
        }
        assert_eq!(states[0].session_cache_hits(), 47);
    }

    /// A key's newest session can be cached unchanged (an event went into an
    /// older session of the key, after an emit): an event applied to it in
    /// the cache still marks it changed, and its row is written.
    #[test]
    fn session_cached_unchanged_is_written_once_changed() {
        let (metric, decoder, lateness) = metric(r#"{ kind = "session", gap = "10s" }"#, "60s");
        let mut states = cached_and_uncached(metric, lateness);
        let t0 = 1_795_341_600_000;
        let both = |states: &mut [PartitionState; 2], offset: i64, t: i64| {
            let e = event(&decoder, t, 1, 10);
            for state in states {
                state.apply(offset, &e);
            }
        };
        let emit = |states: &mut [PartitionState; 2]| {
            let [cached, plain] = states;
            let emission = cached.emit(STAMP);
            assert_eq!(emission, plain.emit(STAMP));
            emission
        };
        both(&mut states, 0, t0);
        both(&mut states, 1, t0 + 30_000);
        emit(&mut states);
        // Into the older session: the newest is cached as it is, unchanged.
        both(&mut states, 2, t0 + 5_000);
        // Into the newest session, through the cache.
        both(&mut states, 3, t0 + 35_000);
        let rows = emit(&mut states).parsed_rows();
        let mut sessions: Vec<_> = rows
            .iter()
            .map(|r| {
                let field = |name: &str| r.row[name].as_i64().expect(name);
                (
                    field("window_start_ms") - t0,
                    field("agg_events"),
                    field("last_offset"),
                )
            })
            .collect();
        sessions.sort_unstable();
        // Both sessions rewritten, two events each; the newest's end grew
        // in the cache too (checked against the uncached state above).
        assert_eq!(sessions, vec![(0, 2, 2), (30_000, 2, 3)]);
        assert_eq!(states[0].session_cache_hits(), 1);
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
        let first = state.emit(STAMP).parsed_rows();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.row["version"] == 2));
        state.apply(2, &event(&decoder, t0 + 2, 1, 5));
        let second = state.emit(STAMP).parsed_rows();
        assert_eq!(second.len(), 1, "only the changed key is written");
        assert_eq!(second[0].row["version"], Json::from(4));
        assert_eq!(second[0].row["agg_duration_ms_sum"], Json::from(15.0));
        // The next minute closes the first window: both keys final at 2·2+1.
        state.apply(3, &event(&decoder, t0 + 60_000, 3, 1));
        let third = state.emit(STAMP).parsed_rows();
        let finals: Vec<_> = third.iter().filter(|r| r.row["is_final"] == 1).collect();
        assert_eq!(finals.len(), 2);
        assert!(finals.iter().all(|r| r.row["version"] == 5));
    }
}
