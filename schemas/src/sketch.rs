//! Mergeable sketches: the aggregate states behind `count_distinct` and
//! `quantiles`.
//!
//! The speed layer and the batch layer each build partial states and both
//! write them to ClickHouse, where partial states of the same window are merged
//! either here in Rust or in SQL (ClickHouse 18.16: `sumMap`, `maxForEach`,
//! `groupUniqArrayArray`, `arrayMap`, ...). Two properties follow, and every
//! design decision below serves one of them:
//!
//! * **Merges must not depend on how the data was split.** A state is a pure
//!   function of the multiset of values inserted, so any partitioning, order
//!   and merge tree gives an `==` equal state. Late events, replays and the
//!   batch/speed overlap therefore never change a result.
//! * **The storage form is plain arrays and the estimators are spelt out
//!   exactly**, so SQL can merge the arrays and compute the same final value.
//!   Do not change a constant, a formula or an evaluation order documented
//!   here without changing the SQL that mirrors it (and re-writing stored
//!   data): both sides must agree.
//!
//! [`DistinctSketch`] is an exact hash set that turns into a HyperLogLog when
//! it grows past [`DISTINCT_EXACT_LIMIT`]; [`QuantileSketch`] is a DDSketch
//! style log-bucket histogram with relative accuracy
//! [`QUANTILE_RELATIVE_ACCURACY`].

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A stored sketch (its column form) that cannot be a valid sketch.
///
/// Only [`DistinctSketch::from_columns`] and [`QuantileSketch::from_columns`]
/// (and deserialisation, which goes through them) produce these: in-memory
/// operations cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SketchError {
    /// The HyperLogLog registers column has the wrong length.
    #[error("registers column has {len} elements; a HyperLogLog sketch needs 0 or {HLL_REGISTERS}")]
    RegisterCount {
        /// The length found.
        len: usize,
    },
    /// Both the exact hashes column and the registers column are non-empty.
    #[error(
        "hashes column has {hashes} elements and registers column has {registers}; \
         a distinct sketch stores exactly one of them (exact mode or HyperLogLog mode), never both"
    )]
    BothModes {
        /// Length of the hashes column.
        hashes: usize,
        /// Length of the registers column.
        registers: usize,
    },
    /// A HyperLogLog register holds a rank no 64-bit hash can produce.
    #[error(
        "register {index} holds rank {rank}; HyperLogLog ranks with precision {HLL_PRECISION} \
         are at most {HLL_MAX_RANK}"
    )]
    RankOutOfRange {
        /// Register index.
        index: usize,
        /// The rank found there.
        rank: u8,
    },
    /// The quantile keys and counts columns differ in length.
    #[error(
        "keys column has {keys} elements but counts column has {counts}; \
         a quantile sketch needs one count per key"
    )]
    ColumnLengthMismatch {
        /// Length of the keys column.
        keys: usize,
        /// Length of the counts column.
        counts: usize,
    },
    /// A quantile bucket key that no finite value maps to.
    #[error(
        "bucket key {key} is outside the valid range -{QUANTILE_MAX_KEY}..={QUANTILE_MAX_KEY} \
         of a quantile sketch"
    )]
    KeyOutOfRange {
        /// The key found.
        key: i32,
    },
    /// The counts of a quantile sketch add up to more than `u64::MAX`.
    #[error("bucket counts overflow u64 (at key {key}); the quantile sketch is corrupt")]
    CountOverflow {
        /// The key at which the running total overflowed.
        key: i32,
    },
}

// ---------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------

/// Hash of a string value for [`DistinctSketch`]: `xxh3_64(utf8 bytes)`.
///
/// Both layers must hash identically or the same value would count twice
/// across them, which is why these functions live next to the sketch.
#[inline]
#[must_use]
pub fn hash_str(s: &str) -> u64 {
    xxh3_64(s.as_bytes())
}

/// Hash of an integer value: `xxh3_64(v.to_le_bytes())`.
#[inline]
#[must_use]
pub fn hash_i64(v: i64) -> u64 {
    xxh3_64(&v.to_le_bytes())
}

/// Hash of a float value: `xxh3_64(v.to_bits().to_le_bytes())`.
///
/// `-0.0` is hashed as `0.0` and every NaN as [`f64::NAN`], because values
/// that compare (or print) the same must count as one distinct value whatever
/// bit pattern produced them.
#[inline]
#[must_use]
pub fn hash_f64(v: f64) -> u64 {
    let canonical = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    };
    xxh3_64(&canonical.to_bits().to_le_bytes())
}

/// Hash of a boolean value: `xxh3_64([b as u8])`.
#[inline]
#[must_use]
pub fn hash_bool(b: bool) -> u64 {
    xxh3_64(&[u8::from(b)])
}

// ---------------------------------------------------------------------------
// DistinctSketch
// ---------------------------------------------------------------------------

/// Largest number of distinct hashes kept exactly. Up to this many distinct
/// values the count is exact (small groups are the common case and users
/// notice when "3 users" shows as 4); one more and the sketch switches to
/// HyperLogLog, whose registers are exactly as large (4096 bytes) as 512
/// hashes, so the exact set is the costlier form near the limit.
pub const DISTINCT_EXACT_LIMIT: usize = 4096;

/// HyperLogLog precision `p`: `2^p` registers, standard error
/// `1.04 / sqrt(2^p)` ≈ 1.6 %.
pub const HLL_PRECISION: u32 = 12;

/// Number of HyperLogLog registers, `m = 2^HLL_PRECISION = 4096`.
pub const HLL_REGISTERS: usize = 1 << HLL_PRECISION;

/// Largest possible register value: `64 - p + 1 = 53` (all 52 low bits zero).
pub const HLL_MAX_RANK: u8 = (64 - HLL_PRECISION + 1) as u8;

/// Mask of the `64 - p = 52` low hash bits that determine the rank.
const HLL_W_MASK: u64 = (1 << (64 - HLL_PRECISION)) - 1;

/// The register a hash updates: its top `p = 12` bits, `h >> 52`.
#[inline]
#[must_use]
pub fn hll_index(hash: u64) -> usize {
    // At most 12 bits remain after the shift, so the cast is lossless.
    (hash >> (64 - HLL_PRECISION)) as usize
}

/// The rank a hash contributes: with `w = h & (2^52 - 1)` (the low 52 bits),
/// `rank = 52 - bit_length(w) + 1`, i.e. the number of leading zeros of `w`
/// counted within 52 bits plus one; `w == 0` gives 53.
///
/// Computed as `w.leading_zeros() - 11`, which is the same number: `w` has at
/// least 12 leading zeros in 64 bits, and `w == 0` gives `64 - 11 = 53`.
#[inline]
#[must_use]
pub fn hll_rank(hash: u64) -> u8 {
    // leading_zeros is in 12..=64 here, so the result is in 1..=53.
    ((hash & HLL_W_MASK).leading_zeros() - (HLL_PRECISION - 1)) as u8
}

/// Fixed-size register array; boxed so an exact-mode sketch stays small and
/// so that the index (always < 4096) needs no bounds check.
type Registers = Box<[u8; HLL_REGISTERS]>;

#[inline]
fn hll_update(registers: &mut [u8; HLL_REGISTERS], hash: u64) {
    let slot = &mut registers[hll_index(hash)];
    *slot = (*slot).max(hll_rank(hash));
}

/// `a ∪ b` of two ascending, duplicate-free runs into `out` (cleared
/// first), ascending and duplicate-free. Which run advances is computed,
/// not branched on: the two runs interleave unpredictably.
fn merge_sorted_unique(a: &[u64], b: &[u64], out: &mut Vec<u64>) {
    out.clear();
    out.reserve(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

fn registers_from(hashes: impl IntoIterator<Item = u64>) -> Registers {
    let mut registers: Registers = Box::new([0; HLL_REGISTERS]);
    for h in hashes {
        hll_update(&mut registers, h);
    }
    registers
}

/// An exact set of 64-bit hashes: open addressing with linear probing in a
/// power-of-two table, at most 3/4 full.
///
/// A hash table instead of a sorted vector because hopping windows insert
/// every event into several sets of up to 4096 hashes: a sorted insert
/// shifts half the vector, a probe touches one or two slots. The order of
/// the slots is an implementation detail; everything that leaves the set
/// (columns, equality) is order-free or sorted first.
///
/// A set that is only read and written out (a hopping window's union of its
/// panes, see [`DistinctSketch::union_of`]) is kept `sorted` instead: its
/// non-zero hashes ascending and dense, the storage form itself, a third of
/// the table's memory. The first insert turns it back into a table.
#[derive(Clone, Default)]
struct ExactSet {
    /// `0` marks an empty slot; the hash `0` itself is kept in `has_zero`.
    /// With `sorted`, the non-zero hashes in ascending order, no empty slot.
    slots: Vec<u64>,
    /// Non-zero hashes held.
    nonzero: usize,
    has_zero: bool,
    sorted: bool,
}

impl ExactSet {
    fn len(&self) -> usize {
        self.nonzero + usize::from(self.has_zero)
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.has_zero
            .then_some(0)
            .into_iter()
            .chain(self.slots.iter().copied().filter(|&h| h != 0))
    }

    /// The hashes in ascending order.
    ///
    /// The table is nearly sorted already: a hash's home slot is its top
    /// bits, and linear probing moves it only a few slots on, or past the
    /// end round to the start. So the slots are read in order (the
    /// wrapped-round hashes, the largest, last) and an insertion sort
    /// finishes the job in O(n + displacement), where a comparison sort
    /// costs O(n log n): this runs for every distinct state written. A
    /// table with unusually long clusters (a skewed hash) falls back to
    /// `sort_unstable` once the moves exceed a small multiple of `n`.
    fn sorted(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.sorted_into(&mut out);
        out
    }

    /// [`Self::sorted`] into `out` (cleared first; its capacity can end up
    /// larger than the set, up to the table's size: fine for columns
    /// written and dropped, which is what [`DistinctSketch::to_columns`]
    /// serves).
    fn sorted_into(&self, out: &mut Vec<u64>) {
        out.clear();
        if self.has_zero {
            out.push(0);
        }
        self.nonzero_sorted_onto(out);
    }

    /// The non-zero hashes in ascending order, appended to `out` (the hash
    /// 0, kept apart in `has_zero`, is the caller's): what a union merges
    /// and what a frozen set keeps.
    fn nonzero_sorted_onto(&self, out: &mut Vec<u64>) {
        if self.sorted {
            out.extend_from_slice(&self.slots);
            return;
        }
        // Every slot is written and only the non-empty ones are kept, with
        // no branch on emptiness: a table is a quarter to two thirds empty
        // in no predictable pattern, and that branch mispredicted a third
        // of the time.
        let base = out.len();
        out.resize(base + self.slots.len(), 0);
        let mut n = base;
        let mut wrapped = Vec::new();
        for (i, &h) in self.slots.iter().enumerate() {
            let wraps = Self::slot_of(&self.slots, h) > i;
            out[n] = h;
            n += usize::from((h != 0) & !wraps);
            if wraps {
                wrapped.push(h);
            }
        }
        out.truncate(n);
        out.extend_from_slice(&wrapped);
        let run = &mut out[base..];
        let budget = 8 * run.len() + 64;
        let mut moves = 0;
        for i in 1..run.len() {
            let x = run[i];
            let mut j = i;
            while j > 0 && run[j - 1] > x {
                run[j] = run[j - 1];
                j -= 1;
            }
            run[j] = x;
            moves += i - j;
            if moves > budget {
                run.sort_unstable();
                break;
            }
        }
    }

    /// Slots for a table holding `n` hashes: the size growing one insert at
    /// a time reaches (powers of two from 8, at most 3/4 full).
    fn slots_for(n: usize) -> usize {
        let mut slots = 8;
        while n * 4 > slots * 3 {
            slots *= 2;
        }
        slots
    }

    #[inline]
    fn slot_of(slots: &[u64], hash: u64) -> usize {
        // The hashes are already uniformly mixed: the top bits index the table.
        let bits = slots.len().trailing_zeros();
        (hash >> (64 - bits)) as usize
    }

    #[inline]
    fn contains(&self, hash: u64) -> bool {
        if hash == 0 {
            return self.has_zero;
        }
        if self.sorted {
            return self.slots.binary_search(&hash).is_ok();
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::slot_of(&self.slots, hash);
        loop {
            match self.slots[i] {
                0 => return false,
                h if h == hash => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Stores `hash` in the first slot of its probe sequence that holds it
    /// or is empty; returns whether that slot was empty (a non-zero hash is
    /// new; placing 0 changes nothing). The table must have a free slot.
    #[inline]
    fn place(slots: &mut [u64], hash: u64) -> bool {
        let mask = slots.len() - 1;
        let mut i = Self::slot_of(slots, hash);
        loop {
            let held = slots[i];
            if held == hash || held == 0 {
                slots[i] = hash;
                return held == 0;
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `hash` unless it is present, in one probe sequence. Returns
    /// `false`, changing nothing, when the hash is absent and the set
    /// already holds `limit` hashes (the sketch then turns into HLL).
    #[inline]
    fn insert_within(&mut self, hash: u64, limit: usize) -> bool {
        if hash == 0 {
            if !self.has_zero {
                if self.len() >= limit {
                    return false;
                }
                self.has_zero = true;
            }
            return true;
        }
        if self.sorted {
            // A repeat, or one past the limit, leaves a sorted set as it is
            // (no table built just before it turns into registers).
            if self.contains(hash) {
                return true;
            }
            if self.len() >= limit {
                return false;
            }
            self.thaw();
        }
        if !self.slots.is_empty() {
            if self.len() < limit && (self.nonzero + 1) * 4 <= self.slots.len() * 3 {
                // Room for one more: present or not, the hash ends up in the
                // slot the probe stops at, with no branch on which it was
                // (half the inserts of a busy set are repeats, and that
                // branch mispredicted half the time).
                self.nonzero += usize::from(Self::place(&mut self.slots, hash));
                return true;
            }
            let mask = self.slots.len() - 1;
            let mut i = Self::slot_of(&self.slots, hash);
            loop {
                match self.slots[i] {
                    0 => break,
                    h if h == hash => return true,
                    _ => i = (i + 1) & mask,
                }
            }
            if self.len() >= limit {
                return false;
            }
        } else if self.len() >= limit {
            return false;
        }
        self.insert_new(hash);
        true
    }

    /// Adds a hash known to be absent.
    #[inline]
    fn insert_new(&mut self, hash: u64) {
        if hash == 0 {
            self.has_zero = true;
            return;
        }
        self.thaw();
        if (self.nonzero + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::slot_of(&self.slots, hash);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = hash;
        self.nonzero += 1;
    }

    /// Turns a `sorted` set back into a hash table, for an insert.
    #[inline]
    fn thaw(&mut self) {
        if self.sorted {
            self.rehash(Self::slots_for(self.nonzero));
        }
    }

    fn grow(&mut self) {
        self.rehash((self.slots.len() * 2).max(8));
    }

    fn rehash(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; capacity]);
        self.sorted = false;
        let mask = capacity - 1;
        for h in old.into_iter().filter(|&h| h != 0) {
            let mut i = Self::slot_of(&self.slots, h);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = h;
        }
    }
}

impl PartialEq for ExactSet {
    /// Set equality, whatever the slot order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|h| other.contains(h))
    }
}

impl Eq for ExactSet {}

#[derive(Clone, PartialEq, Eq)]
enum DistinctRepr {
    /// The hashes themselves; at most [`DISTINCT_EXACT_LIMIT`].
    Exact(ExactSet),
    /// HyperLogLog registers, each in `0..=HLL_MAX_RANK`.
    Hll(Registers),
}

/// Mergeable distinct-count state: an exact set of 64-bit hashes while there
/// are at most [`DISTINCT_EXACT_LIMIT`] of them, a HyperLogLog
/// (`p = 12`, 4096 one-byte registers) after that.
///
/// # Canonical state
///
/// The state is a function of the *set* of hashes inserted, nothing else:
/// exact mode holding that set when it has ≤ 4096 elements, otherwise HLL
/// mode holding the registers built from that set. Inserting and merging
/// preserve this, so sketches built from the same hashes in any order and
/// any partitioning are `==` equal, and merging is associative and
/// commutative in its state as well as in its estimate.
///
/// # Storage form
///
/// [`to_columns`](Self::to_columns) gives `(hashes Array(UInt64),
/// registers Array(UInt8))`: `(sorted hashes, [])` in exact mode and
/// `([], 4096 registers)` in HLL mode.
///
/// # Estimator
///
/// See [`estimate`](Self::estimate) for the exact formula SQL must mirror.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DistinctColumns", into = "DistinctColumns")]
pub struct DistinctSketch {
    repr: DistinctRepr,
}

impl Default for DistinctSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DistinctSketch {
    /// Summarises instead of printing up to 4096 numbers, which would drown
    /// test failure messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            DistinctRepr::Exact(set) => {
                let sorted = set.sorted();
                f.debug_struct("DistinctSketch")
                    .field("mode", &"exact")
                    .field("len", &set.len())
                    .field("first_hashes", &&sorted[..sorted.len().min(8)])
                    .finish()
            }
            DistinctRepr::Hll(registers) => f
                .debug_struct("DistinctSketch")
                .field("mode", &"hll")
                .field(
                    "nonzero_registers",
                    &registers.iter().filter(|&&r| r != 0).count(),
                )
                .field("estimate", &self.estimate())
                .finish(),
        }
    }
}

impl DistinctSketch {
    /// An empty sketch (exact mode, no allocation).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            repr: DistinctRepr::Exact(ExactSet {
                slots: Vec::new(),
                nonzero: 0,
                has_zero: false,
                sorted: false,
            }),
        }
    }

    /// Adds one hashed value (see [`hash_str`], [`hash_i64`], [`hash_f64`],
    /// [`hash_bool`]).
    ///
    /// Exact mode: one probe of the hash table (at most 4096 elements). The
    /// insert that would make the set exceed [`DISTINCT_EXACT_LIMIT`] builds
    /// the registers instead and drops the set. HLL mode: O(1), no
    /// allocation.
    #[inline]
    pub fn insert_hash(&mut self, hash: u64) {
        match &mut self.repr {
            DistinctRepr::Hll(registers) => hll_update(registers, hash),
            DistinctRepr::Exact(set) => {
                if !set.insert_within(hash, DISTINCT_EXACT_LIMIT) {
                    let mut registers = registers_from(set.iter());
                    hll_update(&mut registers, hash);
                    self.repr = DistinctRepr::Hll(registers);
                }
            }
        }
    }

    /// Merges `other` into `self`, as if every hash inserted into `other`
    /// had been inserted into `self`.
    ///
    /// exact ∪ exact stays exact unless the union exceeds
    /// [`DISTINCT_EXACT_LIMIT`] (then the registers are built from the
    /// union: HLL registers do not depend on insertion order); exact into
    /// HLL inserts each hash; HLL with HLL takes the element-wise maximum of
    /// the registers.
    pub fn merge(&mut self, other: &Self) {
        match (&mut self.repr, &other.repr) {
            (_, DistinctRepr::Exact(theirs)) if theirs.len() == 0 => {}
            (DistinctRepr::Hll(mine), DistinctRepr::Hll(theirs)) => {
                for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                    *m = (*m).max(*t);
                }
            }
            (DistinctRepr::Hll(mine), DistinctRepr::Exact(theirs)) => {
                for h in theirs.iter() {
                    hll_update(mine, h);
                }
            }
            (DistinctRepr::Exact(mine), DistinctRepr::Hll(theirs)) => {
                let mut registers = theirs.clone();
                for h in mine.iter() {
                    hll_update(&mut registers, h);
                }
                self.repr = DistinctRepr::Hll(registers);
            }
            (DistinctRepr::Exact(mine), DistinctRepr::Exact(theirs)) => {
                if mine.len() == 0 {
                    mine.clone_from(theirs);
                    return;
                }
                for h in theirs.iter() {
                    self.insert_hash(h);
                }
            }
        }
    }

    /// The union of `parts`: equal to merging them one by one into an
    /// empty sketch, at a lower cost when they are exact sets, the common
    /// case of a hopping window's row built from its panes. Their hashes,
    /// sorted (a pane that is complete is kept sorted, see
    /// [`Self::freeze`]; a table is sorted here), are merged run by run
    /// without a branch on their order: no hash is hashed or probed again,
    /// and the result is sorted and dense, the form a row writes, in a third
    /// of a table's memory. (An insert into it turns it back into a table.)
    #[must_use]
    pub fn union_of(parts: &[&DistinctSketch]) -> DistinctSketch {
        if parts.iter().any(|p| matches!(p.repr, DistinctRepr::Hll(_))) {
            return Self::merged_one_by_one(parts);
        }
        // Both runs sized once for every part's hashes (at most the limit
        // plus the last part is ever held): no growth copies mid-union.
        let total: usize = parts.iter().map(|p| p.len_hint()).sum();
        let room = total.min(2 * DISTINCT_EXACT_LIMIT + 1);
        let mut has_zero = false;
        let (mut union, mut next) = (Vec::with_capacity(room), Vec::with_capacity(room));
        let mut run = Vec::new();
        for part in parts {
            let DistinctRepr::Exact(theirs) = &part.repr else {
                unreachable!("HLL parts were merged one by one above");
            };
            has_zero |= theirs.has_zero;
            let hashes: &[u64] = if theirs.sorted {
                &theirs.slots
            } else {
                run.clear();
                theirs.nonzero_sorted_onto(&mut run);
                &run
            };
            merge_sorted_unique(&union, hashes, &mut next);
            std::mem::swap(&mut union, &mut next);
            if union.len() + usize::from(has_zero) > DISTINCT_EXACT_LIMIT {
                // Past the limit: the registers of the union.
                return Self::merged_one_by_one(parts);
            }
        }
        union.shrink_to_fit();
        DistinctSketch {
            repr: DistinctRepr::Exact(ExactSet {
                nonzero: union.len(),
                slots: union,
                has_zero,
                sorted: true,
            }),
        }
    }

    /// Keeps an exact set sorted and dense from now on, as
    /// [`Self::union_of`] leaves its result: the speed layer freezes a
    /// pane's sets once the watermark has passed the pane, so the
    /// windows that share it merge its sorted hashes instead of sorting
    /// the table once per window. An insert (a late event) turns it back
    /// into a table. No-op on a sorted set or a HyperLogLog.
    pub fn freeze(&mut self) {
        if let DistinctRepr::Exact(set) = &mut self.repr
            && !set.sorted
        {
            let mut sorted = Vec::new();
            set.nonzero_sorted_onto(&mut sorted);
            sorted.shrink_to_fit();
            set.slots = sorted;
            set.sorted = true;
        }
    }

    fn merged_one_by_one(parts: &[&DistinctSketch]) -> DistinctSketch {
        let mut out = DistinctSketch::new();
        for part in parts {
            out.merge(part);
        }
        out
    }

    /// The distinct-count estimate.
    ///
    /// Exact mode: the number of hashes held (exact).
    ///
    /// HLL mode, with `m = 4096.0` and `R[i]` the register values (this is
    /// the formula the SQL side mirrors; keep both in step):
    ///
    /// ```text
    /// alpha = 0.7213 / (1.0 + 1.079 / m)
    /// sum   = Σ_{i = 0..4095, in index order} 2^(-R[i])      (f64)
    /// raw   = alpha * m * m / sum                            (left to right)
    /// zeros = number of i with R[i] == 0
    /// est   = if raw <= 2.5 * m && zeros > 0 { m * ln(m / zeros) } else { raw }
    /// result = round(est)   (half away from zero, as u64)
    /// ```
    ///
    /// There is no large-range correction: with 64-bit hashes collisions are
    /// negligible at any count this platform will see. In ClickHouse:
    /// `arraySum(arrayMap(r -> pow(2, -r), registers))` and
    /// `countEqual(registers, 0)`, then `round(...)` on the result; should
    /// ClickHouse break ties differently from Rust's half-away-from-zero,
    /// only an estimate of exactly `x.5` can differ.
    #[must_use]
    pub fn estimate(&self) -> u64 {
        match &self.repr {
            DistinctRepr::Exact(set) => set.len() as u64,
            DistinctRepr::Hll(registers) => hll_estimate(registers),
        }
    }

    /// Whether the sketch is still an exact set (its estimate is exact).
    #[must_use]
    pub fn is_exact(&self) -> bool {
        matches!(self.repr, DistinctRepr::Exact(_))
    }

    /// Whether nothing has been inserted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(&self.repr, DistinctRepr::Exact(set) if set.len() == 0)
    }

    /// Number of stored elements: hashes in exact mode, 4096 registers in
    /// HLL mode. A cheap size hint for batching and metrics, not an estimate.
    #[must_use]
    pub fn len_hint(&self) -> usize {
        match &self.repr {
            DistinctRepr::Exact(set) => set.len(),
            DistinctRepr::Hll(_) => HLL_REGISTERS,
        }
    }

    /// Approximate heap bytes held (for memory accounting of open windows).
    #[must_use]
    pub fn mem_bytes(&self) -> usize {
        match &self.repr {
            DistinctRepr::Exact(set) => set.slots.capacity() * size_of::<u64>(),
            DistinctRepr::Hll(_) => HLL_REGISTERS,
        }
    }

    /// The storage form `(hashes, registers)`: `(sorted unique hashes, [])`
    /// in exact mode, `([], 4096 registers)` in HLL mode.
    #[must_use]
    pub fn to_columns(&self) -> (Vec<u64>, Vec<u8>) {
        let (hashes, registers) = self.columns();
        (hashes.into_owned(), registers.to_vec())
    }

    /// [`to_columns`](Self::to_columns), borrowed where the sketch holds
    /// them as they are written: a window's union, kept sorted until its
    /// row is written, is not copied to be written.
    #[must_use]
    pub fn columns(&self) -> (Cow<'_, [u64]>, &[u8]) {
        match &self.repr {
            DistinctRepr::Exact(set) if set.sorted && !set.has_zero => {
                (Cow::Borrowed(&set.slots), &[])
            }
            DistinctRepr::Exact(set) => (Cow::Owned(set.sorted()), &[]),
            DistinctRepr::Hll(registers) => (Cow::Borrowed(&[]), &registers[..]),
        }
    }

    /// Like [`to_columns`](Self::to_columns), consuming the sketch.
    #[must_use]
    pub fn into_columns(self) -> (Vec<u64>, Vec<u8>) {
        self.to_columns()
    }

    /// Rebuilds a sketch from its storage form.
    ///
    /// Rejected: a registers column whose length is neither 0 nor 4096, both
    /// columns non-empty, a register above [`HLL_MAX_RANK`].
    ///
    /// Accepted and canonicalised: hashes in any order and with duplicates
    /// (`groupUniqArrayArray` returns them unordered) are deduplicated; more
    /// than [`DISTINCT_EXACT_LIMIT`] distinct hashes (an SQL union of exact
    /// states can produce that) become the HLL state of that set, exactly as
    /// a Rust merge would have made it.
    pub fn from_columns(hashes: Vec<u64>, registers: Vec<u8>) -> Result<Self, SketchError> {
        if !registers.is_empty() && registers.len() != HLL_REGISTERS {
            return Err(SketchError::RegisterCount {
                len: registers.len(),
            });
        }
        if !registers.is_empty() && !hashes.is_empty() {
            return Err(SketchError::BothModes {
                hashes: hashes.len(),
                registers: registers.len(),
            });
        }
        if registers.is_empty() {
            let mut sketch = Self::new();
            for h in hashes {
                sketch.insert_hash(h);
            }
            return Ok(sketch);
        }
        if let Some((index, &rank)) = registers
            .iter()
            .enumerate()
            .find(|&(_, &r)| r > HLL_MAX_RANK)
        {
            return Err(SketchError::RankOutOfRange { index, rank });
        }
        let len = registers.len();
        let registers: Registers = registers
            .into_boxed_slice()
            .try_into()
            // Unreachable: the length was checked to be HLL_REGISTERS above.
            .map_err(|_| SketchError::RegisterCount { len })?;
        Ok(Self {
            repr: DistinctRepr::Hll(registers),
        })
    }
}

fn hll_estimate(registers: &[u8; HLL_REGISTERS]) -> u64 {
    let m = HLL_REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0_f64;
    let mut zeros = 0_u32;
    for &r in registers.iter() {
        sum += f64::powi(2.0, -i32::from(r));
        if r == 0 {
            zeros += 1;
        }
    }
    let raw = alpha * m * m / sum;
    let estimate = if raw <= 2.5 * m && zeros > 0 {
        m * (m / f64::from(zeros)).ln()
    } else {
        raw
    };
    // `as` saturates; the estimate is finite and ≥ 0 (sum ≥ 4096 * 2^-53 > 0).
    estimate.round() as u64
}

/// The serialised form of a [`DistinctSketch`]: the same two columns as
/// ClickHouse stores, so deserialisation validates through
/// [`DistinctSketch::from_columns`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistinctColumns {
    /// Sorted unique hashes (exact mode) or empty.
    pub hashes: Vec<u64>,
    /// 4096 registers (HLL mode) or empty.
    pub registers: Vec<u8>,
}

impl TryFrom<DistinctColumns> for DistinctSketch {
    type Error = SketchError;

    fn try_from(c: DistinctColumns) -> Result<Self, SketchError> {
        Self::from_columns(c.hashes, c.registers)
    }
}

impl From<DistinctSketch> for DistinctColumns {
    fn from(s: DistinctSketch) -> Self {
        let (hashes, registers) = s.into_columns();
        Self { hashes, registers }
    }
}

// ---------------------------------------------------------------------------
// QuantileSketch
// ---------------------------------------------------------------------------

/// Relative accuracy α of [`QuantileSketch`]: every returned quantile is
/// within `α · |true value|` of the value at the requested rank (for
/// `|v| ≥` [`QUANTILE_MIN_INDEXABLE`]).
pub const QUANTILE_RELATIVE_ACCURACY: f64 = 0.01;

/// Bucket growth factor `gamma = (1 + α) / (1 - α)` = `1.02020202020202`.
pub const QUANTILE_GAMMA: f64 =
    (1.0 + QUANTILE_RELATIVE_ACCURACY) / (1.0 - QUANTILE_RELATIVE_ACCURACY);

/// `ln(gamma)`, written out because `f64::ln` is not `const` and because SQL
/// must divide by this very literal (`0.020000666706669435`) rather than
/// recompute it, so both sides bucket boundary values the same way.
pub const QUANTILE_LN_GAMMA: f64 = 0.020_000_666_706_669_435;

/// Values with `|v| <` this (`1e-9`) go to the zero bucket (key 0) and are
/// reported as `0.0`. Below it the absolute error (< 1e-9) is what matters,
/// and it keeps the key range bounded.
pub const QUANTILE_MIN_INDEXABLE: f64 = 1e-9;

/// Added to `ceil(ln(v) / ln(gamma))` so that positive keys start at 1:
/// `KEY_OFFSET = 1 - ceil(ln(1e-9) / ln(gamma)) = 1 - (-1036) = 1037`.
///
/// This keeps key 0 free for the zero bucket and makes negative values
/// (keys ≤ -1) and positive values (keys ≥ 1) never collide.
pub const QUANTILE_KEY_OFFSET: i32 = 1037;

/// The largest key a finite value maps to: the key of `f64::MAX`,
/// `ceil(709.78... / ln(gamma)) + 1037 = 35488 + 1037`. Valid keys are
/// `-QUANTILE_MAX_KEY..=QUANTILE_MAX_KEY`.
pub const QUANTILE_MAX_KEY: i32 = 36_525;

/// The bucket key of a value, or `None` for NaN (which is not counted).
///
/// ```text
/// v = clamp(v, -f64::MAX, f64::MAX)                 (±inf → ±f64::MAX)
/// |v| < 1e-9  → 0
/// v > 0       → ceil(ln(v) / 0.020000666706669435) + 1037     (≥ 1)
/// v < 0       → -(key of -v)                                  (≤ -1)
/// ```
///
/// Keys are monotone in value (`a ≤ b` ⇒ `key(a) ≤ key(b)`), so ascending
/// key order *is* ascending value order, negative keys included.
#[inline]
#[must_use]
pub fn value_to_key(v: f64) -> Option<i32> {
    if v.is_nan() {
        return None;
    }
    let v = v.clamp(-f64::MAX, f64::MAX);
    let magnitude = v.abs();
    if magnitude < QUANTILE_MIN_INDEXABLE {
        return Some(0);
    }
    // ln(magnitude) / ln(gamma) lies in -1036.1..=35487.1, so the cast is
    // exact and the sum stays in 1..=QUANTILE_MAX_KEY.
    let key = (magnitude.ln() / QUANTILE_LN_GAMMA).ceil() as i32 + QUANTILE_KEY_OFFSET;
    Some(if v < 0.0 { -key } else { key })
}

/// The value a bucket reports (what SQL must compute from a key):
///
/// ```text
/// k == 0 → 0.0
/// k > 0  → min(2 * pow(gamma, k - 1037) / (gamma + 1), f64::MAX)
/// k < 0  → -(value of -k)
/// ```
///
/// A positive bucket `k` holds the values in `(gamma^(k-1037-1),
/// gamma^(k-1037)]`; this representative is within relative error α of every
/// one of them. The clamp only matters for the top bucket, whose
/// representative would otherwise overflow to infinity.
#[must_use]
pub fn key_to_value(k: i32) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let exponent = i64::from(k).abs() - i64::from(QUANTILE_KEY_OFFSET);
    let magnitude =
        (2.0 * QUANTILE_GAMMA.powf(exponent as f64) / (QUANTILE_GAMMA + 1.0)).min(f64::MAX);
    if k < 0 { -magnitude } else { magnitude }
}

/// Mergeable quantile state: a DDSketch-style histogram of log-spaced buckets
/// with relative accuracy [`QUANTILE_RELATIVE_ACCURACY`].
///
/// The state is the sorted list of `(key, count)` pairs with non-zero counts
/// (see [`value_to_key`]); it depends only on the multiset of values
/// inserted, so merges are associative and commutative and states compare
/// `==` whatever the partitioning.
///
/// # Input rules
///
/// NaN is ignored (not counted); `±inf` is counted as `±f64::MAX`.
///
/// # Storage form
///
/// [`to_columns`](Self::to_columns) gives `(keys Array(Int32), counts
/// Array(UInt64))` sorted ascending by key, which is the order `sumMap`
/// returns; `sumMap(keys, counts)` is the SQL merge.
///
/// # Quantile algorithm
///
/// See [`quantile`](Self::quantile).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuantileColumns", into = "QuantileColumns")]
pub struct QuantileSketch {
    /// Sorted ascending by key, unique keys, counts > 0.
    buckets: Vec<(i32, u64)>,
    /// Sum of the counts (saturating).
    count: u64,
}

impl QuantileSketch {
    /// An empty sketch (no allocation).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            buckets: Vec::new(),
            count: 0,
        }
    }

    /// Counts one value. NaN is ignored; `±inf` counts as `±f64::MAX`.
    ///
    /// A binary search over the occupied buckets; allocates only when a value
    /// opens a new bucket (≈ 115 buckets per decade of magnitude, so a few
    /// hundred for typical data).
    #[inline]
    pub fn insert(&mut self, v: f64) {
        if let Some(key) = value_to_key(v) {
            self.add(key, 1);
        }
    }

    fn add(&mut self, key: i32, n: u64) {
        match self.buckets.binary_search_by_key(&key, |&(k, _)| k) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
            Err(i) => self.buckets.insert(i, (key, n)),
        }
        self.count = self.count.saturating_add(n);
    }

    /// Merges `other` into `self`: counts are summed per key (saturating at
    /// `u64::MAX`, which no real event count reaches).
    pub fn merge(&mut self, other: &Self) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.clone_from(other);
            return;
        }
        let (a, b) = (&self.buckets, &other.buckets);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        self.buckets = out;
        self.count = self.count.saturating_add(other.count);
    }

    /// The number of values counted (NaN excluded).
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no value has been counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of occupied buckets.
    #[must_use]
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Approximate heap bytes held.
    #[must_use]
    pub fn mem_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<(i32, u64)>()
    }

    /// The `q`-quantile, or `None` when the sketch is empty or `q` is not in
    /// `[0, 1]` (NaN included).
    ///
    /// The algorithm, which SQL mirrors on the `sumMap` output:
    ///
    /// ```text
    /// rank   = q * (count - 1)          (f64)
    /// target = floor(rank)              (integer)
    /// walk buckets in ascending key order, accumulating counts;
    /// answer = key_to_value(first key whose cumulative count > target)
    /// ```
    ///
    /// i.e. the bucket holding the value at 0-based position
    /// `floor(q * (n - 1))` of the sorted input, reported as its
    /// representative (so within α of that value). Ascending key order is
    /// ascending value order for negative keys too (key -900 is a more
    /// negative value than key -5), so SQL needs no special case for them:
    /// with `(k, c) = sumMap(keys, counts)`,
    /// `k[arrayFirstIndex(s -> s > floor(q * (arraySum(c) - 1)), arrayCumSum(c))]`
    /// is the key to convert with the [`key_to_value`] formula.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * (self.count - 1) as f64;
        // rank is in [0, count - 1]; `as` saturates for the (impossible)
        // out-of-range case.
        let target = rank.floor() as u64;
        let mut cumulative = 0_u64;
        for &(key, c) in &self.buckets {
            cumulative = cumulative.saturating_add(c);
            if cumulative > target {
                return Some(key_to_value(key));
            }
        }
        // Only reachable when rounding of `count - 1` to f64 (counts above
        // 2^53) pushes the target to `count`: the answer is the last bucket.
        self.buckets.last().map(|&(key, _)| key_to_value(key))
    }

    /// The storage form `(keys, counts)`, sorted ascending by key (the order
    /// `sumMap` produces), all counts non-zero.
    #[must_use]
    pub fn to_columns(&self) -> (Vec<i32>, Vec<u64>) {
        self.buckets.iter().copied().unzip()
    }

    /// Rebuilds a sketch from its storage form.
    ///
    /// Rejected: columns of different lengths, a key outside
    /// `-QUANTILE_MAX_KEY..=QUANTILE_MAX_KEY`, counts whose total overflows
    /// `u64`. Accepted and canonicalised: keys in any order, repeated keys
    /// (their counts are summed, as `sumMap` would), zero counts (dropped).
    pub fn from_columns(keys: Vec<i32>, counts: Vec<u64>) -> Result<Self, SketchError> {
        if keys.len() != counts.len() {
            return Err(SketchError::ColumnLengthMismatch {
                keys: keys.len(),
                counts: counts.len(),
            });
        }
        if let Some(&key) = keys
            .iter()
            .find(|k| k.unsigned_abs() > QUANTILE_MAX_KEY as u32)
        {
            return Err(SketchError::KeyOutOfRange { key });
        }
        let mut pairs: Vec<(i32, u64)> = keys
            .into_iter()
            .zip(counts)
            .filter(|&(_, c)| c > 0)
            .collect();
        if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            pairs.sort_unstable_by_key(|&(k, _)| k);
        }
        let mut buckets: Vec<(i32, u64)> = Vec::with_capacity(pairs.len());
        let mut count = 0_u64;
        for (key, c) in pairs {
            count = count
                .checked_add(c)
                .ok_or(SketchError::CountOverflow { key })?;
            match buckets.last_mut() {
                // The running total did not overflow, so neither can this.
                Some(last) if last.0 == key => last.1 += c,
                _ => buckets.push((key, c)),
            }
        }
        Ok(Self { buckets, count })
    }
}

/// The serialised form of a [`QuantileSketch`]: the same two columns as
/// ClickHouse stores, so deserialisation validates through
/// [`QuantileSketch::from_columns`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantileColumns {
    /// Bucket keys, ascending.
    pub keys: Vec<i32>,
    /// Count per key, same length as `keys`.
    pub counts: Vec<u64>,
}

impl TryFrom<QuantileColumns> for QuantileSketch {
    type Error = SketchError;

    fn try_from(c: QuantileColumns) -> Result<Self, SketchError> {
        Self::from_columns(c.keys, c.counts)
    }
}

impl From<QuantileSketch> for QuantileColumns {
    fn from(s: QuantileSketch) -> Self {
        let (keys, counts) = s.buckets.into_iter().unzip();
        Self { keys, counts }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic generator for test data (splitmix64), so a proptest case
    /// is a few numbers rather than a 10 000-element vector to shrink.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// `n` hashes of values drawn from a domain of `domain` integers, so
    /// there are duplicates and the distinct count is controlled.
    fn hashes(seed: u64, n: usize, domain: u64) -> Vec<u64> {
        let mut rng = SplitMix(seed);
        (0..n).map(|_| hash_i64(rng.below(domain) as i64)).collect()
    }

    fn distinct_of(hs: &[u64]) -> DistinctSketch {
        let mut s = DistinctSketch::new();
        for &h in hs {
            s.insert_hash(h);
        }
        s
    }

    fn quantile_of(vs: &[f64]) -> QuantileSketch {
        let mut s = QuantileSketch::new();
        for &v in vs {
            s.insert(v);
        }
        s
    }

    /// Splits `items` into `parts` random subsets with shuffled order.
    fn partition<T: Copy>(items: &[T], parts: usize, seed: u64) -> Vec<Vec<T>> {
        let mut rng = SplitMix(seed);
        let mut out = vec![Vec::new(); parts];
        for &x in items {
            out[rng.below(parts as u64) as usize].push(x);
        }
        for part in &mut out {
            for i in (1..part.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                part.swap(i, j);
            }
        }
        out
    }

    /// The rank formula exactly as the brief states it.
    fn spec_rank(h: u64) -> u8 {
        let w = h & ((1_u64 << 52) - 1);
        if w == 0 {
            53
        } else {
            (52 - (64 - w.leading_zeros()) + 1) as u8
        }
    }

    // ---- constants --------------------------------------------------------

    #[test]
    fn quantile_constants_match_their_definitions() {
        let ln_gamma = QUANTILE_GAMMA.ln();
        assert!((ln_gamma - QUANTILE_LN_GAMMA).abs() <= f64::EPSILON * ln_gamma);
        let offset = 1 - (QUANTILE_MIN_INDEXABLE.ln() / QUANTILE_LN_GAMMA).ceil() as i32;
        assert_eq!(offset, QUANTILE_KEY_OFFSET);
        assert_eq!(value_to_key(f64::MAX), Some(QUANTILE_MAX_KEY));
        assert_eq!(value_to_key(-f64::MAX), Some(-QUANTILE_MAX_KEY));
        assert_eq!(value_to_key(QUANTILE_MIN_INDEXABLE), Some(1));
        assert_eq!(value_to_key(-QUANTILE_MIN_INDEXABLE), Some(-1));
        assert_eq!(value_to_key(QUANTILE_MIN_INDEXABLE * 0.999_999), Some(0));
        assert!(key_to_value(QUANTILE_MAX_KEY).is_finite());
        assert_eq!(key_to_value(QUANTILE_MAX_KEY), f64::MAX);
        assert_eq!(key_to_value(-QUANTILE_MAX_KEY), -f64::MAX);
        assert_eq!(HLL_MAX_RANK, 53);
        assert_eq!(HLL_REGISTERS, 4096);
    }

    // ---- hashing ----------------------------------------------------------

    #[test]
    fn hashes_follow_the_documented_byte_layout() {
        assert_eq!(hash_str("abc"), xxh3_64(b"abc"));
        assert_eq!(hash_i64(-7), xxh3_64(&(-7_i64).to_le_bytes()));
        assert_eq!(hash_f64(1.5), xxh3_64(&1.5_f64.to_bits().to_le_bytes()));
        assert_eq!(hash_f64(-0.0), hash_f64(0.0));
        assert_eq!(hash_f64(f64::NAN), hash_f64(-f64::NAN));
        assert_eq!(hash_bool(true), xxh3_64(&[1]));
        assert_eq!(hash_bool(false), xxh3_64(&[0]));
        assert_ne!(hash_bool(true), hash_bool(false));
    }

    // ---- HLL primitives ---------------------------------------------------

    #[test]
    fn rank_and_index_edge_cases() {
        for h in [
            0,
            1,
            u64::MAX,
            1 << 51,
            (1 << 52) - 1,
            1 << 52,
            0xFFF0_0000_0000_0000,
            0xFFF0_0000_0000_0001,
        ] {
            assert_eq!(hll_rank(h), spec_rank(h), "hash {h:#x}");
        }
        assert_eq!(hll_rank(0), 53);
        assert_eq!(hll_rank(1 << 51), 1);
        assert_eq!(hll_rank(1), 52);
        assert_eq!(hll_index(u64::MAX), 4095);
        assert_eq!(hll_index(1 << 52), 1);
        assert_eq!(hll_index((1 << 52) - 1), 0);
    }

    #[test]
    fn estimate_formula_on_known_registers() {
        let m = 4096.0_f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);

        // All zero: linear counting gives m * ln(1) = 0.
        let zero = DistinctSketch::from_columns(vec![], vec![0; 4096]).unwrap();
        assert_eq!(zero.estimate(), 0);

        // All ones: sum = 2048, raw = 2 * alpha * m ≈ 5909, no zeros → raw.
        let ones = DistinctSketch::from_columns(vec![], vec![1; 4096]).unwrap();
        assert_eq!(ones.estimate(), (alpha * m * m / 2048.0).round() as u64);

        // Half zero, half 3: raw below 2.5 m, zeros → linear counting.
        let mut regs = vec![0_u8; 4096];
        for r in regs.iter_mut().skip(2048) {
            *r = 3;
        }
        let half = DistinctSketch::from_columns(vec![], regs).unwrap();
        assert_eq!(half.estimate(), (m * (m / 2048.0).ln()).round() as u64);

        // Large ranks: raw above 2.5 m even with a zero register → raw.
        let mut regs = vec![20_u8; 4096];
        regs[0] = 0;
        let big = DistinctSketch::from_columns(vec![], regs.clone()).unwrap();
        let sum: f64 = regs.iter().map(|&r| f64::powi(2.0, -i32::from(r))).sum();
        assert_eq!(big.estimate(), (alpha * m * m / sum).round() as u64);
    }

    // ---- DistinctSketch ---------------------------------------------------

    #[test]
    fn exact_set_keeps_zero_and_extreme_hashes_and_sorts_its_columns() {
        let mut s = DistinctSketch::new();
        for h in [u64::MAX, 0, 1, 0, u64::MAX, 1 << 63] {
            s.insert_hash(h);
        }
        assert_eq!(s.estimate(), 4);
        let (hashes, registers) = s.to_columns();
        assert_eq!(hashes, vec![0, 1, 1 << 63, u64::MAX]);
        assert!(registers.is_empty());
        let mut reversed = DistinctSketch::new();
        for &h in hashes.iter().rev() {
            reversed.insert_hash(h);
        }
        assert_eq!(reversed, s, "equality is set equality, not slot order");
        assert_eq!(DistinctSketch::from_columns(hashes, Vec::new()).unwrap(), s);
        let mut other = DistinctSketch::new();
        other.insert_hash(2);
        assert_ne!(other, s);
    }

    #[test]
    fn union_at_the_limit_with_and_without_zero() {
        let cases = [4094, 4095, 4096, 4097].into_iter().flat_map(|n| {
            [(false, false), (false, true), (true, false), (true, true)]
                .map(|(with_zero, frozen)| (n, with_zero, frozen))
        });
        for (n, with_zero, frozen) in cases {
            let case = format!("n {n}, zero {with_zero}, frozen parts {frozen}");
            let mut hs: Vec<u64> = (1..=n as u64).map(|i| hash_i64(i as i64)).collect();
            if with_zero {
                hs.push(0);
            }
            // Three overlapping parts, and the hash 0 only in the last.
            let parts: Vec<DistinctSketch> = [
                0..hs.len() / 2,
                hs.len() / 3..hs.len() - 1,
                hs.len() - 2..hs.len(),
            ]
            .into_iter()
            .map(|r| {
                let mut part = distinct_of(&hs[r]);
                if frozen {
                    part.freeze();
                }
                part
            })
            .collect();
            let refs: Vec<&DistinctSketch> = parts.iter().collect();
            let union = DistinctSketch::union_of(&refs);
            let all = distinct_of(&hs);
            assert_eq!(union, all, "{case}");
            assert_eq!(union.to_columns(), all.to_columns(), "{case}");
            assert_eq!(union.is_exact(), hs.len() <= DISTINCT_EXACT_LIMIT, "{case}");
            // A frozen part still takes inserts, the hash 0 included.
            let mut grown = parts[0].clone();
            let mut reference = distinct_of(&hs[..hs.len() / 2]);
            for h in [0, hs[hs.len() - 1], hs[0]] {
                grown.insert_hash(h);
                reference.insert_hash(h);
            }
            assert_eq!(grown.to_columns(), reference.to_columns(), "{case}");
        }
    }

    #[test]
    fn switches_to_hll_exactly_past_the_limit() {
        let mut s = DistinctSketch::new();
        for i in 0..DISTINCT_EXACT_LIMIT as i64 {
            s.insert_hash(hash_i64(i));
            s.insert_hash(hash_i64(i)); // duplicates never count
        }
        assert!(s.is_exact());
        assert_eq!(s.estimate(), 4096);
        assert_eq!(s.len_hint(), 4096);

        let before = s.clone();
        s.insert_hash(hash_i64(0)); // a duplicate at the limit stays exact
        assert_eq!(s, before);

        s.insert_hash(hash_i64(4096));
        assert!(!s.is_exact());
        assert_eq!(s.mem_bytes(), 4096);
        let (h, r) = s.to_columns();
        assert!(h.is_empty());
        assert_eq!(r.len(), 4096);
        let est = s.estimate() as f64;
        assert!((est - 4097.0).abs() / 4097.0 < 0.05, "estimate {est}");
    }

    #[test]
    fn merge_of_exact_sets_crossing_the_limit_builds_hll_of_the_union() {
        let a: Vec<u64> = (0..3000).map(hash_i64).collect();
        let b: Vec<u64> = (2000..5000).map(hash_i64).collect();
        let mut merged = distinct_of(&a);
        merged.merge(&distinct_of(&b));
        let all: Vec<u64> = (0..5000).map(hash_i64).collect();
        assert_eq!(merged, distinct_of(&all));
        assert!(!merged.is_exact());

        // The boundary: a union of exactly the limit stays exact, one more
        // does not.
        let mut at_limit = distinct_of(&all[..2000]);
        at_limit.merge(&distinct_of(&all[1000..4096]));
        assert!(at_limit.is_exact());
        assert_eq!(at_limit.estimate(), 4096);
        let mut past_limit = distinct_of(&all[..2000]);
        past_limit.merge(&distinct_of(&all[1000..4097]));
        assert!(!past_limit.is_exact());
        assert_eq!(past_limit, distinct_of(&all[..4097]));

        // Overlapping enough to stay exact.
        let mut small = distinct_of(&a);
        small.merge(&distinct_of(&a[..100]));
        assert!(small.is_exact());
        assert_eq!(small.estimate(), 3000);
    }

    #[test]
    fn hll_estimate_within_five_percent() {
        for (n, base) in [
            (20_000_i64, 0_i64),
            (20_000, 1 << 40),
            (50_000, 7),
            (100_000, -3_000_000),
        ] {
            let mut s = DistinctSketch::new();
            for i in 0..n {
                s.insert_hash(hash_i64(base + i));
            }
            let est = s.estimate() as f64;
            let err = (est - n as f64).abs() / n as f64;
            assert!(err < 0.05, "n={n} base={base}: estimate {est}, error {err}");
        }
    }

    #[test]
    fn distinct_from_columns_rejects_bad_input_with_clear_messages() {
        let e = DistinctSketch::from_columns(vec![], vec![0; 17]).unwrap_err();
        assert_eq!(e, SketchError::RegisterCount { len: 17 });
        assert_eq!(
            e.to_string(),
            "registers column has 17 elements; a HyperLogLog sketch needs 0 or 4096"
        );

        let e = DistinctSketch::from_columns(vec![1, 2], vec![0; 4096]).unwrap_err();
        assert_eq!(
            e,
            SketchError::BothModes {
                hashes: 2,
                registers: 4096
            }
        );
        assert!(e.to_string().contains("never both"), "{e}");

        let mut regs = vec![0; 4096];
        regs[10] = 54;
        let e = DistinctSketch::from_columns(vec![], regs).unwrap_err();
        assert_eq!(
            e,
            SketchError::RankOutOfRange {
                index: 10,
                rank: 54
            }
        );
        assert_eq!(
            e.to_string(),
            "register 10 holds rank 54; HyperLogLog ranks with precision 12 are at most 53"
        );
    }

    #[test]
    fn distinct_from_columns_canonicalises_sql_merge_output() {
        // Unordered with duplicates, as groupUniqArrayArray may return.
        let s = DistinctSketch::from_columns(vec![5, 1, 3, 1], vec![]).unwrap();
        assert_eq!(s.to_columns(), (vec![1, 3, 5], vec![]));

        // More distinct hashes than the limit: the HLL state of that set.
        let all: Vec<u64> = (0..5000).map(hash_i64).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        let s = DistinctSketch::from_columns(reversed, vec![]).unwrap();
        assert_eq!(s, distinct_of(&all));

        let empty = DistinctSketch::from_columns(vec![], vec![]).unwrap();
        assert_eq!(empty, DistinctSketch::default());
        assert!(empty.is_empty());
    }

    #[test]
    fn distinct_serde_goes_through_validation() {
        let s = distinct_of(&[3, 1, 2]);
        let cols = DistinctColumns::from(s.clone());
        assert_eq!(DistinctSketch::try_from(cols).unwrap(), s);
        let bad = DistinctColumns {
            hashes: vec![],
            registers: vec![1; 3],
        };
        assert!(DistinctSketch::try_from(bad).is_err());
    }

    // ---- QuantileSketch ---------------------------------------------------

    #[test]
    fn quantile_basics() {
        let empty = QuantileSketch::new();
        assert_eq!(empty.quantile(0.5), None);
        assert!(empty.is_empty());

        let s = quantile_of(&[1.0, 2.0, 3.0, 4.0, 100.0]);
        assert_eq!(s.count(), 5);
        assert_eq!(s.quantile(-0.1), None);
        assert_eq!(s.quantile(1.1), None);
        assert_eq!(s.quantile(f64::NAN), None);
        let close = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!(
                (got - want).abs() <= QUANTILE_RELATIVE_ACCURACY * want.abs(),
                "{got} vs {want}"
            );
        };
        close(s.quantile(0.0), 1.0);
        close(s.quantile(0.5), 3.0);
        close(s.quantile(0.74), 3.0); // floor(0.74 * 4) = 2
        close(s.quantile(0.75), 4.0);
        close(s.quantile(1.0), 100.0);
    }

    #[test]
    fn quantile_input_rules() {
        let mut s = QuantileSketch::new();
        s.insert(f64::NAN);
        assert!(s.is_empty());
        s.insert(f64::INFINITY);
        s.insert(f64::NEG_INFINITY);
        s.insert(-0.0);
        s.insert(1e-12);
        assert_eq!(s.count(), 4);
        assert_eq!(
            s.to_columns(),
            (vec![-QUANTILE_MAX_KEY, 0, QUANTILE_MAX_KEY], vec![1, 2, 1])
        );
        assert_eq!(s.quantile(0.0), Some(-f64::MAX));
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert_eq!(s.quantile(1.0), Some(f64::MAX));
    }

    #[test]
    fn negative_values_come_first_in_key_order() {
        let s = quantile_of(&[-1000.0, -5.0, 0.0, 5.0, 1000.0]);
        let (keys, counts) = s.to_columns();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(counts, vec![1; 5]);
        let values: Vec<f64> = keys.iter().map(|&k| key_to_value(k)).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert!((s.quantile(0.0).unwrap() + 1000.0).abs() <= 10.0);
        assert!((s.quantile(0.25).unwrap() + 5.0).abs() <= 0.05);
    }

    #[test]
    fn quantile_from_columns_rules() {
        let e = QuantileSketch::from_columns(vec![1, 2], vec![1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys column has 2 elements but counts column has 1; a quantile sketch needs one count per key"
        );
        let e = QuantileSketch::from_columns(vec![40_000], vec![1]).unwrap_err();
        assert_eq!(e, SketchError::KeyOutOfRange { key: 40_000 });
        assert!(e.to_string().contains("-36525..=36525"), "{e}");
        let e = QuantileSketch::from_columns(vec![i32::MIN], vec![1]).unwrap_err();
        assert_eq!(e, SketchError::KeyOutOfRange { key: i32::MIN });
        let e = QuantileSketch::from_columns(vec![1, 2], vec![u64::MAX, 1]).unwrap_err();
        assert_eq!(e, SketchError::CountOverflow { key: 2 });

        // Unordered, repeated keys and zero counts are canonicalised.
        let s = QuantileSketch::from_columns(vec![5, -3, 5, 7], vec![1, 2, 3, 0]).unwrap();
        assert_eq!(s.to_columns(), (vec![-3, 5], vec![2, 4]));
        assert_eq!(s.count(), 6);

        let cols = QuantileColumns::from(s.clone());
        assert_eq!(QuantileSketch::try_from(cols).unwrap(), s);
    }

    // ---- properties -------------------------------------------------------

    /// Sorted-vector reference: the value at position floor(q * (n - 1)).
    fn reference_quantile(sorted: &[f64], q: f64) -> f64 {
        let rank = (q * (sorted.len() - 1) as f64).floor() as usize;
        sorted[rank]
    }

    fn log_uniform_positive() -> impl Strategy<Value = f64> {
        (-9.0_f64..15.0).prop_map(|e| 10_f64.powf(e))
    }

    fn any_real() -> impl Strategy<Value = f64> {
        prop_oneof![
            log_uniform_positive(),
            log_uniform_positive().prop_map(|v| -v),
            Just(0.0),
            -1e3_f64..1e3,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn sorted_columns_equal_a_full_sort(
            seed in any::<u64>(),
            n in 0_usize..5000,
            domain in 1_u64..20_000,
            clustered in any::<bool>(),
        ) {
            let mut hs = hashes(seed, n, domain);
            if clustered {
                // Hashes sharing their top bits pile up in long clusters, and
                // some wrap round the table's end: the insertion sort's worst
                // inputs, and its fallback.
                for (i, h) in hs.iter_mut().enumerate() {
                    *h = if i % 2 == 0 { *h | (0xFFF << 52) } else { *h >> 20 };
                }
            }
            let s = distinct_of(&hs);
            let mut expected: Vec<u64> = hs.clone();
            expected.sort_unstable();
            expected.dedup();
            let (columns, registers) = s.to_columns();
            if expected.len() <= DISTINCT_EXACT_LIMIT {
                prop_assert_eq!(columns, expected);
            } else {
                prop_assert!(columns.is_empty() && registers.len() == HLL_REGISTERS);
            }
        }

        #[test]
        fn union_of_equals_merging_one_by_one(
            seed in any::<u64>(),
            sizes in prop::collection::vec(0_usize..2500, 0..7),
            domain in 1_u64..12_000,
        ) {
            // Every other part frozen: unions mix sorted parts and tables.
            let parts: Vec<DistinctSketch> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut part = distinct_of(&hashes(seed ^ i as u64, n, domain));
                    if (seed >> i) & 1 == 1 {
                        let before = part.clone();
                        part.freeze();
                        assert_eq!(part.to_columns(), before.to_columns());
                        assert_eq!(&part, &before);
                    }
                    part
                })
                .collect();
            let refs: Vec<&DistinctSketch> = parts.iter().collect();
            let union = DistinctSketch::union_of(&refs);
            let mut merged = DistinctSketch::new();
            for p in &parts {
                merged.merge(p);
            }
            prop_assert_eq!(union.to_columns(), merged.to_columns());
            prop_assert_eq!(union.estimate(), merged.estimate());
            if let (DistinctRepr::Exact(u), DistinctRepr::Exact(m)) = (&union.repr, &merged.repr) {
                // Sorted and dense: no more memory than the merge's table.
                prop_assert!(u.sorted && u.slots.len() == u.nonzero);
                prop_assert!(u.slots.len() <= m.slots.len());
                // Still a set that grows like any other.
                let mut grown = union.clone();
                let mut reference = merged.clone();
                for h in hashes(seed ^ 99, 300, domain * 2) {
                    grown.insert_hash(h);
                    reference.insert_hash(h);
                }
                prop_assert_eq!(grown.to_columns(), reference.to_columns());
                prop_assert_eq!(&grown, &reference);
            }
            prop_assert_eq!(&union, &merged);
        }

        #[test]
        fn distinct_merge_is_associative_and_commutative(
            seed in any::<u64>(),
            na in 0_usize..9000, nb in 0_usize..9000, nc in 0_usize..9000,
            domain in 1_u64..15_000,
        ) {
            let a = distinct_of(&hashes(seed, na, domain));
            let b = distinct_of(&hashes(seed ^ 1, nb, domain));
            let c = distinct_of(&hashes(seed ^ 2, nc, domain));

            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);

            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            prop_assert_eq!(ab_c.estimate(), a_bc.estimate());
        }

        #[test]
        fn distinct_partition_then_merge_equals_all_at_once(
            seed in any::<u64>(),
            n in 0_usize..25_000,
            domain in 1_u64..30_000,
            parts in 1_usize..5,
        ) {
            let all = hashes(seed, n, domain);
            let whole = distinct_of(&all);
            let mut merged = DistinctSketch::new();
            for part in partition(&all, parts, seed ^ 0xABCD) {
                merged.merge(&distinct_of(&part));
            }
            prop_assert_eq!(&merged, &whole);

            let mut distinct = all;
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(whole.is_exact(), distinct.len() <= DISTINCT_EXACT_LIMIT);
        }

        #[test]
        fn distinct_is_exact_up_to_the_limit(
            seed in any::<u64>(),
            distinct in 0_usize..=DISTINCT_EXACT_LIMIT,
        ) {
            let mut s = DistinctSketch::new();
            for i in 0..distinct {
                s.insert_hash(hash_i64(seed.wrapping_add(i as u64) as i64));
            }
            // Re-insert a prefix: duplicates must not count.
            for i in 0..distinct / 3 {
                s.insert_hash(hash_i64(seed.wrapping_add(i as u64) as i64));
            }
            prop_assert!(s.is_exact());
            prop_assert_eq!(s.estimate(), distinct as u64);
        }

        #[test]
        fn distinct_columns_round_trip(
            seed in any::<u64>(),
            n in 0_usize..9000,
            domain in 1_u64..12_000,
        ) {
            let s = distinct_of(&hashes(seed, n, domain));
            let (h, r) = s.to_columns();
            prop_assert!(h.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(r.is_empty() || r.len() == HLL_REGISTERS);
            prop_assert!(h.is_empty() || r.is_empty());
            let back = DistinctSketch::from_columns(h, r).unwrap();
            prop_assert_eq!(back.estimate(), s.estimate());
            prop_assert_eq!(back, s);
        }
    }

    proptest! {
        #[test]
        fn rank_matches_the_specified_formula(h in any::<u64>(), shift in 0_u32..64) {
            // Shifting produces many leading zeros in the low 52 bits too.
            let h = h >> shift | (h << 60);
            prop_assert_eq!(hll_rank(h), spec_rank(h));
            prop_assert!((1..=HLL_MAX_RANK).contains(&hll_rank(h)));
        }

        #[test]
        fn quantile_merge_is_associative_and_commutative(
            a in prop::collection::vec(any_real(), 0..200),
            b in prop::collection::vec(any_real(), 0..200),
            c in prop::collection::vec(any_real(), 0..200),
        ) {
            let (a, b, c) = (quantile_of(&a), quantile_of(&b), quantile_of(&c));
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);

            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
        }

        #[test]
        fn quantile_partition_then_merge_equals_all_at_once(
            values in prop::collection::vec(any_real(), 0..400),
            parts in 1_usize..6,
            seed in any::<u64>(),
        ) {
            let whole = quantile_of(&values);
            let mut merged = QuantileSketch::new();
            for part in partition(&values, parts, seed) {
                merged.merge(&quantile_of(&part));
            }
            prop_assert_eq!(&merged, &whole);
            prop_assert_eq!(merged.count(), values.len() as u64);
        }

        #[test]
        fn quantile_columns_round_trip(values in prop::collection::vec(any_real(), 0..300)) {
            let s = quantile_of(&values);
            let (keys, counts) = s.to_columns();
            prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(counts.iter().all(|&c| c > 0));
            prop_assert_eq!(QuantileSketch::from_columns(keys, counts).unwrap(), s);
        }

        #[test]
        fn quantile_relative_error_bound_for_positive_values(
            values in prop::collection::vec(
                prop_oneof![log_uniform_positive(), 1.0_f64..2.0, Just(42.0)], 1..400),
            qs in prop::collection::vec(0.0_f64..=1.0, 1..8),
        ) {
            let s = quantile_of(&values);
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in qs.into_iter().chain([0.0, 0.5, 1.0]) {
                let want = reference_quantile(&sorted, q);
                let got = s.quantile(q).unwrap();
                // A hair of slack for the f64 rounding of ln / pow.
                let bound = QUANTILE_RELATIVE_ACCURACY * want * (1.0 + 1e-9);
                prop_assert!((got - want).abs() <= bound,
                    "q={} got {} want {} (n={})", q, got, want, values.len());
            }
        }

        #[test]
        fn quantile_error_bound_for_mixed_sign_values(
            values in prop::collection::vec(any_real(), 1..400),
            q in 0.0_f64..=1.0,
        ) {
            let s = quantile_of(&values);
            let mut sorted = values;
            sorted.sort_by(f64::total_cmp);
            let want = reference_quantile(&sorted, q);
            let got = s.quantile(q).unwrap();
            let bound = QUANTILE_RELATIVE_ACCURACY * want.abs() * (1.0 + 1e-9)
                + QUANTILE_MIN_INDEXABLE;
            prop_assert!((got - want).abs() <= bound, "q={} got {} want {}", q, got, want);
        }

        #[test]
        fn keys_are_monotone_in_value(a in any_real(), b in any_real()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(value_to_key(lo) <= value_to_key(hi));
            let k = value_to_key(a).unwrap();
            prop_assert!(k.abs() <= QUANTILE_MAX_KEY);
            let rep = key_to_value(k);
            prop_assert!((rep - a).abs()
                <= QUANTILE_RELATIVE_ACCURACY * a.abs() * (1.0 + 1e-9) + QUANTILE_MIN_INDEXABLE);
        }
    }
}
