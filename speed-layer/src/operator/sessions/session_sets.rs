//! The sessions of a session metric by key id, with a write-back cache of
//! each key's newest session for metrics whose aggregations are counts and
//! at most one numeric field (sum, avg, min, max): the common per-user
//! session metric.
//!
//! With many keys (users), the memory an event's session update touches is
//! the cost of a session metric: a [`SessionSet`] and its accumulator span
//! three to four cache lines, each a miss. Almost every event falls inside
//! its key's newest session, and then changes only that session's end,
//! counts and last offset: those live here, in one 64-byte line per key,
//! and are written back to the set before anything else reads or changes
//! it (an event outside the newest session, an emit, a compaction). The
//! sets stay the one source of truth at those points, so rows, checkpoints
//! and merges are exactly what they were without the cache. The sets are
//! reachable only through [`SessionSets`], whose every path that reads or
//! changes a session writes the cache back first, so no caller can forget
//! to (counting sessions needs none: the cache never adds or removes one).
//!
//! An emit writes each key back, then caches the key's newest session
//! again as the emit left it: a key whose events are seconds apart (one
//! per emit interval or fewer) still finds its session here. Only a
//! compaction, which renumbers the keys, empties the cache.

use strata_schemas::aggregate::{AggPlan, NumericState, StatesMut};
use strata_schemas::decode::Event;
use strata_schemas::window::{SessionSet, Window, grow_session};

use super::{SessionEntry, SessionMeta};
use crate::operator::EventContext;

/// The sessions of one session metric in one partition, by key id (ids are
/// dense: the dictionary is compacted), and the cache of each key's newest
/// session where the plan's state fits a cache line.
pub(super) struct SessionSets {
    sets: Vec<SessionSet<SessionEntry>>,
    /// Written back to `sets` before `sets` is read or changed.
    hot: Option<HotSessions>,
}

impl SessionSets {
    /// No session yet, of states of `plan`.
    pub(super) fn new(plan: &AggPlan) -> Self {
        SessionSets {
            sets: Vec::new(),
            hot: HotSessions::for_plan(plan),
        }
    }

    /// Applies an event of `key` (at `at.offset`): through the cache if it
    /// falls inside the key's cached newest session, else by
    /// [`SessionSet::insert`] after writing the cache back, caching the
    /// key's newest session again after. Returns the sessions the event
    /// merged away (a late event bridging two).
    #[inline]
    pub(super) fn insert(
        &mut self,
        plan: &AggPlan,
        key: u32,
        gap: i64,
        event: &Event,
        at: EventContext,
    ) -> Vec<Window> {
        let t = event.time_ms;
        if let Some(hot) = self.hot.as_mut()
            && hot.try_apply(plan, key, t, gap, at.offset, event)
        {
            return Vec::new();
        }
        if self.sets.len() <= key as usize {
            self.sets.resize_with(key as usize + 1, SessionSet::default);
        }
        let set = &mut self.sets[key as usize];
        if let Some(hot) = self.hot.as_mut() {
            hot.write_back(key, set);
        }
        let change = set.insert(
            t,
            gap,
            || SessionEntry {
                meta: SessionMeta::new(at),
                acc: plan.new_accumulator(),
            },
            |s| s.apply(plan, at.offset, event),
        );
        if let Some(hot) = self.hot.as_mut() {
            hot.cache(key, set);
        }
        change.replaced
    }

    /// Calls `f` with every key's sessions, each written back from the
    /// cache before and cached again (as `f` leaves it) after, so a key
    /// with one event per emit still finds its session in the cache.
    pub(super) fn for_each_mut(&mut self, mut f: impl FnMut(u32, &mut SessionSet<SessionEntry>)) {
        for (key, set) in self.sets.iter_mut().enumerate() {
            let key = key as u32;
            if let Some(hot) = self.hot.as_mut() {
                hot.write_back(key, set);
            }
            f(key, set);
            if let Some(hot) = self.hot.as_mut() {
                hot.cache(key, set);
            }
        }
    }

    /// Number of open sessions. (The cache never adds or removes one:
    /// nothing needs writing back to count them.)
    pub(super) fn open_sessions(&self) -> usize {
        self.sets.iter().map(SessionSet::len).sum()
    }

    /// Marks `live[key]` for every key with an open session (as counting
    /// them, reading only whether a set is empty needs no write-back).
    pub(super) fn mark_live_keys(&self, live: &mut [bool]) {
        for (key, set) in self.sets.iter().enumerate() {
            live[key] = !set.is_empty();
        }
    }

    /// Renumbers the keys (`remap[old]` is the new id, `u32::MAX` for a key
    /// without sessions; `keys` new ids in all). The cache is written back
    /// and emptied first: it is kept by old id.
    pub(super) fn remap_keys(&mut self, remap: &[u32], keys: usize) {
        if let Some(hot) = self.hot.as_mut() {
            hot.write_back_all(&mut self.sets);
        }
        let mut kept = Vec::new();
        kept.resize_with(keys, SessionSet::default);
        for (key, set) in std::mem::take(&mut self.sets).into_iter().enumerate() {
            if let Some(slot) = kept.get_mut(remap[key] as usize) {
                *slot = set;
            }
        }
        self.sets = kept;
    }

    /// Writes the cache back and drops it: the reference the cache is
    /// tested against.
    #[cfg(test)]
    pub(super) fn drop_cache(&mut self) {
        if let Some(mut hot) = self.hot.take() {
            hot.write_back_all(&mut self.sets);
        }
    }

    /// Events applied through the cache.
    #[cfg(test)]
    pub(super) fn cache_hits(&self) -> u64 {
        self.hot.as_ref().map_or(0, |hot| hot.hits)
    }
}

/// A key's newest session as cached: one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct HotSession {
    /// Start of the cached session; [`HotSession::EMPTY`] when nothing is
    /// cached (no event time is that large, so no event is inside it).
    start: i64,
    end: i64,
    /// Offset of the last event applied.
    last_offset: i64,
    events: u64,
    numeric: NumericState,
}

impl HotSession {
    const EMPTY: i64 = i64::MAX;

    const fn empty() -> Self {
        HotSession {
            start: Self::EMPTY,
            end: i64::MIN,
            last_offset: i64::MIN,
            events: 0,
            numeric: NumericState {
                count: 0,
                sum: 0.0,
                min: 0.0,
                max: 0.0,
            },
        }
    }
}

/// The cache of one session metric in one partition, by key id.
struct HotSessions {
    /// The plan's numeric states: 0 or 1.
    numeric_width: usize,
    by_key: Vec<HotSession>,
    /// Events applied here, for tests.
    #[cfg(test)]
    hits: u64,
}

impl HotSessions {
    /// A cache for `plan`, or `None` when its state does not fit a line
    /// (sketches, or numeric aggregations of two or more fields).
    fn for_plan(plan: &AggPlan) -> Option<Self> {
        if plan.has_sketches() || plan.numeric_fields().len() > 1 {
            return None;
        }
        Some(HotSessions {
            numeric_width: plan.numeric_fields().len(),
            by_key: Vec::new(),
            #[cfg(test)]
            hits: 0,
        })
    }

    /// Applies an event at `t` (and `offset`) of `key` if it falls inside
    /// the key's cached newest session, as [`SessionSet::insert`] would:
    /// the session grows by [`grow_session`] and its states take the event
    /// by [`AggPlan::update`] (`plan` is the metric's).
    /// `false` when it does not: the caller writes the key back
    /// ([`Self::write_back`]) and takes the general path.
    #[inline]
    fn try_apply(
        &mut self,
        plan: &AggPlan,
        key: u32,
        t: i64,
        gap: i64,
        offset: i64,
        event: &Event,
    ) -> bool {
        let Some(hot) = self.by_key.get_mut(key as usize) else {
            return false;
        };
        if !grow_session(hot.start, &mut hot.end, t, gap) {
            return false;
        }
        let states = StatesMut {
            events: &mut hot.events,
            numeric: &mut std::slice::from_mut(&mut hot.numeric)[..self.numeric_width],
            distinct: &mut [],
            quantiles: &mut [],
        };
        plan.update(states, event);
        hot.last_offset = offset;
        #[cfg(test)]
        {
            self.hits += 1;
        }
        true
    }

    /// Writes `key`'s cached session back into `set` (marked changed if an
    /// event was applied here), and empties the key's cache.
    fn write_back(&mut self, key: u32, set: &mut SessionSet<SessionEntry>) {
        let Some(hot) = self.by_key.get_mut(key as usize) else {
            return;
        };
        if hot.start == HotSession::EMPTY {
            return;
        }
        let (start, end, entry) = set
            .newest_mut()
            .expect("a cached session is still in its set");
        debug_assert_eq!(start, hot.start, "the cache holds the newest session");
        // Offsets only grow: a later last offset means events were applied
        // here since the session was cached. (It may have been cached
        // unchanged: an event into an older session of the key caches the
        // newest one as it is.)
        if hot.last_offset > entry.meta.last_offset {
            *end = hot.end;
            entry.acc.events = hot.events;
            if let Some(state) = entry.acc.numeric.first_mut() {
                *state = hot.numeric;
            }
            entry.meta.last_offset = hot.last_offset;
            entry.meta.dirty = true;
        }
        *hot = HotSession::empty();
    }

    /// Caches `set`'s newest session for `key` (after the general path has
    /// applied an event to the set).
    fn cache(&mut self, key: u32, set: &mut SessionSet<SessionEntry>) {
        let Some((start, end, entry)) = set.newest_mut() else {
            return;
        };
        if self.by_key.len() <= key as usize {
            self.by_key.resize(key as usize + 1, HotSession::empty());
        }
        self.by_key[key as usize] = HotSession {
            start,
            end: *end,
            last_offset: entry.meta.last_offset,
            events: entry.acc.events,
            numeric: entry.acc.numeric.first().copied().unwrap_or_default(),
        };
    }

    /// Writes every cached session back and empties the cache, releasing
    /// its memory: the key ids are about to be renumbered (a compaction),
    /// and the keys still live are cached again at their next event.
    fn write_back_all(&mut self, sets: &mut [SessionSet<SessionEntry>]) {
        for key in 0..self.by_key.len().min(sets.len()) {
            self.write_back(key as u32, &mut sets[key]);
        }
        self.by_key = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<HotSession>(), 64);
        assert_eq!(std::mem::align_of::<HotSession>(), 64);
    }
}
