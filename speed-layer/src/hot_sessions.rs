//! A write-back cache of each key's newest session, for session metrics
//! whose aggregations are counts and at most one numeric field (sum, avg,
//! min, max): the common per-user session metric.
//!
//! With many keys (users), the memory an event's session update touches is
//! the cost of a session metric: a [`SessionSet`] and its accumulator span
//! three to four cache lines, each a miss. Almost every event falls inside
//! its key's newest session, and then changes only that session's end,
//! counts and last offset: those live here, in one 64-byte line per key,
//! and are written back to the set before anything else reads or changes
//! it (an event outside the newest session, an emit, a compaction). The
//! sets stay the one source of truth at those points, so rows, checkpoints
//! and merges are exactly what they were without the cache.
//!
//! An emit writes each key back, then caches the key's newest session
//! again as the emit left it: a key whose events are seconds apart (one
//! per emit interval or fewer) still finds its session here. Only a
//! compaction, which renumbers the keys, empties the cache.

use strata_schemas::aggregate::{AggPlan, NumericState};
use strata_schemas::decode::Event;
use strata_schemas::window::{SessionSet, grow_session};

use crate::state::SessionEntry;

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
pub(crate) struct HotSessions {
    /// The plan's numeric states: 0 or 1.
    numeric_width: usize,
    by_key: Vec<HotSession>,
    /// Events applied here, for tests.
    #[cfg(test)]
    pub(crate) hits: u64,
}

impl HotSessions {
    /// A cache for `plan`, or `None` when its state does not fit a line
    /// (sketches, or numeric aggregations of two or more fields).
    pub(crate) fn for_plan(plan: &AggPlan) -> Option<Self> {
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
    /// by [`AggPlan::update_states`] (`plan` is the metric's).
    /// `false` when it does not: the caller writes the key back
    /// ([`Self::write_back`]) and takes the general path.
    #[inline]
    pub(crate) fn try_apply(
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
        let numeric = &mut std::slice::from_mut(&mut hot.numeric)[..self.numeric_width];
        plan.update_states(&mut hot.events, numeric, &mut [], &mut [], event);
        hot.last_offset = offset;
        #[cfg(test)]
        {
            self.hits += 1;
        }
        true
    }

    /// Writes `key`'s cached session back into `set` (marked changed if an
    /// event was applied here), and empties the key's cache.
    pub(crate) fn write_back(&mut self, key: u32, set: &mut SessionSet<SessionEntry>) {
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
    pub(crate) fn cache(&mut self, key: u32, set: &mut SessionSet<SessionEntry>) {
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
    pub(crate) fn write_back_all(&mut self, sets: &mut [SessionSet<SessionEntry>]) {
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
