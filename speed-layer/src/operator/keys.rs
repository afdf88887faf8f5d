//! Group keys interned per metric: the dictionary every window state
//! refers to by dense key id.

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;
use strata_schemas::group_key;
use strata_schemas::{Event, MetricDef};

use crate::id_table::IdTable;

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
pub(crate) struct KeyDictionary {
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
    /// Number of keys interned (and not dropped by a compaction).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The id of `metric`'s group key of `event`, interned if new.
    #[inline]
    pub(crate) fn intern(&mut self, metric: &MetricDef, event: &Event) -> u32 {
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

    /// The encoding of key `id` ([`group_key::encode`]).
    pub(crate) fn key(&self, id: u32) -> &[u8] {
        self.entries[id as usize].key(&self.long)
    }

    /// Keeps only the keys with `live[id]`, renumbered densely in their old
    /// order; returns the old → new id map (`u32::MAX` for a dropped key).
    pub(crate) fn compact(&mut self, live: &[bool]) -> Vec<u32> {
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

#[cfg(test)]
mod tests {
    use strata_schemas::value::ValueRef;

    use super::*;
    use crate::operator::test_support::metric_grouped;

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
            let values: Vec<ValueRef<'_>> = group_key::values(keys.key(*id)).collect();
            assert_eq!(values, vec![ValueRef::String(p), ValueRef::String(c)]);
        }
        // Compaction renumbers the live keys and keeps them findable.
        let live: Vec<bool> = (0..pairs.len()).map(|i| i % 3 == 0).collect();
        let remap = keys.compact(&live);
        for (i, (p, c)) in pairs.iter().enumerate() {
            if live[i] {
                let values: Vec<ValueRef<'_>> = group_key::values(keys.key(remap[i])).collect();
                assert_eq!(values, vec![ValueRef::String(p), ValueRef::String(c)]);
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
}
