//! A hash table of dense ids with one memory read per lookup, for the
//! group-key dictionary of the [`crate::operator`].
//!
//! A lookup of a group key is on the path of every event and every metric,
//! and with many keys (user sessions) each read of the table is a cache
//! miss. `hashbrown`'s table reads a control byte, then the slot beside it
//! in another cache line, then the key's entry: three misses, one after the
//! other. Here a bucket packs a tag (8 bits of the hash) with the id
//! itself, so a lookup reads its bucket (linear probing: usually the same
//! line) and then the entry, which the caller compares; a mismatching tag
//! skips the entry 255 times in 256.
//!
//! Buckets are 4 bytes (tag and a 24-bit id) until there are 2^24 ids, then
//! 8 bytes (tag and a 32-bit id): 4 bytes per bucket where `hashbrown`
//! needs 5, for the same load.

/// A bucket: empty, or a tag and an id. Two widths, see the module docs.
trait Bucket: Copy + Default + Eq {
    /// Largest id the bucket holds.
    const MAX_ID: u32;
    fn pack(tag: u8, id: u32) -> Self;
    /// The tag, `0` when empty (tags are never 0).
    fn tag(self) -> u8;
    fn id(self) -> u32;
}

impl Bucket for u32 {
    const MAX_ID: u32 = (1 << 24) - 1;
    #[inline]
    fn pack(tag: u8, id: u32) -> Self {
        (u32::from(tag) << 24) | id
    }
    #[inline]
    fn tag(self) -> u8 {
        (self >> 24) as u8
    }
    #[inline]
    fn id(self) -> u32 {
        self & Self::MAX_ID
    }
}

impl Bucket for u64 {
    const MAX_ID: u32 = u32::MAX;
    #[inline]
    fn pack(tag: u8, id: u32) -> Self {
        (u64::from(tag) << 32) | u64::from(id)
    }
    #[inline]
    fn tag(self) -> u8 {
        (self >> 32) as u8
    }
    #[inline]
    fn id(self) -> u32 {
        self as u32
    }
}

/// The bucket's tag for `hash`: its top byte, never 0 (0 marks an empty
/// bucket; the index comes from the low bits).
#[inline]
fn tag_of(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

/// Open addressing with linear probing over a power-of-two number of
/// buckets, at most 3/4 full.
#[derive(Clone, Debug)]
struct Buckets<B> {
    buckets: Vec<B>,
    len: usize,
}

impl<B: Bucket> Buckets<B> {
    /// Empty, with `size` buckets (a power of two).
    fn with_buckets(size: usize) -> Self {
        debug_assert!(size.is_power_of_two());
        Buckets {
            buckets: vec![B::default(); size],
            len: 0,
        }
    }

    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.buckets.len() - 1;
        let tag = tag_of(hash);
        let mut i = hash as usize & mask;
        loop {
            let bucket = self.buckets[i];
            match bucket.tag() {
                0 => return None,
                t if t == tag && eq(bucket.id()) => return Some(bucket.id()),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `id` (absent, and at most `B::MAX_ID`), with room for it.
    fn insert(&mut self, hash: u64, id: u32) {
        debug_assert!(id <= B::MAX_ID && (self.len + 1) * 4 <= self.buckets.len() * 3);
        let mask = self.buckets.len() - 1;
        let mut i = hash as usize & mask;
        while self.buckets[i].tag() != 0 {
            i = (i + 1) & mask;
        }
        self.buckets[i] = B::pack(tag_of(hash), id);
        self.len += 1;
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets.iter().filter(|b| b.tag() != 0).map(|b| b.id())
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<B>()
    }
}

#[derive(Clone, Debug)]
enum Table {
    Narrow(Buckets<u32>),
    Wide(Buckets<u64>),
}

/// Ids looked up by hash, the caller comparing candidates: the dictionary
/// keeps the keys, this table only where each id is.
#[derive(Clone, Debug)]
pub(crate) struct IdTable {
    table: Table,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable {
            table: Table::Narrow(Buckets::with_buckets(8)),
        }
    }
}

impl IdTable {
    /// Empty, with room for `n` ids without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut size = 8;
        while n * 4 > size * 3 {
            size *= 2;
        }
        IdTable {
            table: if n > <u32 as Bucket>::MAX_ID as usize {
                Table::Wide(Buckets::with_buckets(size))
            } else {
                Table::Narrow(Buckets::with_buckets(size))
            },
        }
    }

    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        match &self.table {
            Table::Narrow(t) => t.len,
            Table::Wide(t) => t.len,
        }
    }

    /// The id with `hash` for which `eq` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        match &self.table {
            Table::Narrow(t) => t.find(hash, eq),
            Table::Wide(t) => t.find(hash, eq),
        }
    }

    /// Adds `id`, known to be absent. Growing rehashes every id with
    /// `rehash(id)`, which must give the hash `id` was inserted with.
    pub(crate) fn insert(&mut self, hash: u64, id: u32, rehash: impl Fn(u32) -> u64) {
        let was_wide = matches!(self.table, Table::Wide(_));
        let wide = was_wide || id > <u32 as Bucket>::MAX_ID;
        let size = match &self.table {
            Table::Narrow(t) => t.buckets.len(),
            Table::Wide(t) => t.buckets.len(),
        };
        let full = (self.len() + 1) * 4 > size * 3;
        if full || wide != was_wide {
            let ids: Vec<u32> = match &self.table {
                Table::Narrow(t) => t.ids().collect(),
                Table::Wide(t) => t.ids().collect(),
            };
            // Doubling when full; the same size when only widening.
            let size = if full { size * 2 } else { size };
            self.table = if wide {
                let mut t = Buckets::with_buckets(size);
                ids.into_iter().for_each(|id| t.insert(rehash(id), id));
                Table::Wide(t)
            } else {
                let mut t = Buckets::with_buckets(size);
                ids.into_iter().for_each(|id| t.insert(rehash(id), id));
                Table::Narrow(t)
            };
        }
        match &mut self.table {
            Table::Narrow(t) => t.insert(hash, id),
            Table::Wide(t) => t.insert(hash, id),
        }
    }

    /// Heap bytes held.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.table {
            Table::Narrow(t) => t.heap_bytes(),
            Table::Wide(t) => t.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weak hash on purpose: long probe runs, equal tags, wrap-around.
    fn weak_hash(key: u64) -> u64 {
        (key % 97) | ((key % 3) << 56)
    }

    #[test]
    fn finds_every_id_and_nothing_else_through_growth() {
        let mut table = IdTable::default();
        let keys: Vec<u64> = (0..5_000).map(|i| i * 7919).collect();
        for (id, &key) in keys.iter().enumerate() {
            let hash = weak_hash(key);
            assert_eq!(table.find(hash, |c| keys[c as usize] == key), None);
            table.insert(hash, id as u32, |c| weak_hash(keys[c as usize]));
            assert_eq!(table.len(), id + 1);
        }
        for (id, &key) in keys.iter().enumerate() {
            let found = table.find(weak_hash(key), |c| keys[c as usize] == key);
            assert_eq!(found, Some(id as u32), "key {key}");
        }
        assert_eq!(table.find(weak_hash(1), |c| keys[c as usize] == 1), None);
        // 5,000 ids at most 3/4 full: 8,192 buckets of 4 bytes.
        assert_eq!(table.heap_bytes(), 8_192 * 4);
    }

    #[test]
    fn buckets_pack_tag_and_id_at_both_widths() {
        for tag in [1_u8, 0x80, 0xFF] {
            for id in [0, 1, <u32 as Bucket>::MAX_ID] {
                let b = <u32 as Bucket>::pack(tag, id);
                assert_eq!((b.tag(), b.id()), (tag, id));
            }
            for id in [0, 1 << 24, u32::MAX] {
                let b = <u64 as Bucket>::pack(tag, id);
                assert_eq!((b.tag(), b.id()), (tag, id));
            }
        }
        assert_eq!(
            tag_of(0),
            1,
            "a hash with a zero top byte still marks its bucket used"
        );
        assert_eq!(tag_of(u64::MAX), 0xFF);
    }

    #[test]
    fn growing_and_widening_in_one_insert_keeps_every_id() {
        // Narrow and exactly 3/4 full, then an id past 24 bits.
        let mut table = IdTable::default();
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for id in 0..6 {
            table.insert(hash(id), id, hash);
        }
        assert!(matches!(&table.table, Table::Narrow(t) if t.buckets.len() == 8));
        let far = 1 << 24;
        table.insert(hash(far), far, hash);
        assert!(matches!(&table.table, Table::Wide(t) if t.buckets.len() == 16));
        for id in (0..6).chain([far]) {
            assert_eq!(table.find(hash(id), |c| c == id), Some(id));
        }
        // Sized up front: no growth for as many ids as asked for.
        let mut sized = IdTable::with_capacity(1_000);
        let size = sized.heap_bytes();
        for id in 0..1_000 {
            sized.insert(hash(id), id, hash);
        }
        assert_eq!(sized.heap_bytes(), size);
    }

    #[test]
    fn an_id_past_24_bits_widens_the_buckets_and_keeps_the_others() {
        let mut table = IdTable::default();
        let ids = [0_u32, 5, 1 << 24, u32::MAX - 1];
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (n, &id) in ids.iter().enumerate() {
            table.insert(hash(id), id, hash);
            assert_eq!(matches!(table.table, Table::Wide(_)), id >= 1 << 24);
            for &known in &ids[..=n] {
                assert_eq!(table.find(hash(known), |c| c == known), Some(known));
            }
        }
    }
}
