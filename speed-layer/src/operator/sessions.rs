//! The operator of session windows: per group key, sessions of events less
//! than `gap` apart, merged by [`strata_schemas::window::SessionSet`] (a late event bridging two
//! sessions merges them, and the merged-away one is retracted).

mod session_sets;

use strata_schemas::window::{Mergeable, Window};
use strata_schemas::{Accumulator, AggPlan, Event, MetricDef};

use self::session_sets::SessionSets;
use super::keys::KeyDictionary;
use super::rows::{MetricEmit, RowOffsets, RowSink};
use super::{EventContext, ReplayStart, WindowOperator};

/// Bookkeeping of one open session.
#[derive(Clone, Copy, Debug)]
struct SessionMeta {
    /// Where a replay of the session starts.
    replay: ReplayStart,
    /// Offset of the last event applied (the row version's base).
    last_offset: i64,
    /// Changed since last written.
    dirty: bool,
}

impl SessionMeta {
    fn new(at: EventContext) -> Self {
        SessionMeta {
            replay: ReplayStart {
                offset: at.offset,
                max_event_before: at.max_before,
            },
            last_offset: at.offset,
            dirty: true,
        }
    }

    fn offsets(&self) -> RowOffsets {
        RowOffsets {
            first: self.replay.offset,
            last: self.last_offset,
        }
    }
}

/// One open session: its bookkeeping and its state.
struct SessionEntry {
    meta: SessionMeta,
    acc: Accumulator,
}

impl SessionEntry {
    /// Adds an event (at `offset`) to the session.
    #[inline]
    fn apply(&mut self, plan: &AggPlan, offset: i64, event: &Event) {
        plan.update(&mut self.acc, event);
        self.meta.last_offset = offset;
        self.meta.dirty = true;
    }
}

impl Mergeable for SessionEntry {
    fn merge_from(&mut self, other: Self) {
        self.acc.merge(&other.acc);
        if other.meta.replay.offset < self.meta.replay.offset {
            self.meta.replay = other.meta.replay;
        }
        self.meta.last_offset = self.meta.last_offset.max(other.meta.last_offset);
        self.meta.dirty = true;
    }
}

/// Session windows of one metric in one partition.
pub(super) struct SessionWindows {
    gap_ms: i64,
    /// Sessions by key id.
    sets: SessionSets,
    /// Sessions merged away since the last emit: (window, key, offset of
    /// the event that merged them).
    retracted: Vec<(Window, u32, i64)>,
}

impl SessionWindows {
    /// Sessions closing after `gap_ms` without an event, of states of
    /// `plan`.
    pub(super) fn new(gap_ms: i64, plan: &AggPlan) -> Self {
        SessionWindows {
            gap_ms,
            sets: SessionSets::new(plan),
            retracted: Vec::new(),
        }
    }

    /// The same operator without the cache of each key's newest session,
    /// as a reference.
    #[cfg(test)]
    pub(super) fn without_cache(&mut self) {
        self.sets.drop_cache();
    }

    /// Events applied through the cache of each key's newest session.
    #[cfg(test)]
    pub(super) fn cache_hits(&self) -> u64 {
        self.sets.cache_hits()
    }
}

impl WindowOperator for SessionWindows {
    #[inline]
    fn apply(
        &mut self,
        metric: &MetricDef,
        keys: &mut KeyDictionary,
        event: &Event,
        at: EventContext,
    ) -> bool {
        // A session event older than the watermark could overlap a session
        // that is already final; it is late.
        if event.time_ms < at.watermark {
            return true;
        }
        let key = keys.intern(metric, event);
        let merged_away = self.sets.insert(&metric.plan, key, self.gap_ms, event, at);
        // Rare: a late event bridging two sessions.
        if !merged_away.is_empty() {
            self.retracted
                .extend(merged_away.into_iter().map(|w| (w, key, at.offset)));
        }
        false
    }

    fn advance_watermark(&mut self, _plan: &AggPlan, _watermark: i64, _floor: i64) -> u64 {
        // Sessions are closed at emits: nothing can reach a closed session
        // in between (an event older than the watermark is late).
        0
    }

    fn emit<S: RowSink + ?Sized>(&mut self, out: &mut MetricEmit<'_, S>) -> u64 {
        let (watermark, floor) = (out.watermark, out.floor);
        for (window, key, offset) in self.retracted.drain(..) {
            // A session inside the final floor is a partial replay of a
            // session already final: never touch its row.
            if window.end_ms > floor {
                out.retraction(window, key, offset);
            }
        }
        let mut finalized = 0;
        self.sets.for_each_mut(|key, set| {
            for (window, entry) in set.drain_closed(watermark) {
                finalized += 1;
                if window.end_ms > floor {
                    out.row(window, key, entry.meta.offsets(), &entry.acc, true);
                }
            }
            for (window, entry) in set.iter_mut() {
                out.note_open(entry.meta.replay);
                if entry.meta.dirty {
                    entry.meta.dirty = false;
                    if window.end_ms > floor {
                        out.row(window, key, entry.meta.offsets(), &entry.acc, false);
                    }
                }
            }
        });
        finalized
    }

    fn open_states(&self) -> usize {
        self.sets.open_sessions()
    }

    fn mark_live_keys(&self, live: &mut [bool]) {
        self.sets.mark_live_keys(live);
    }

    fn remap_keys(&mut self, remap: &[u32], keys: usize) {
        self.sets.remap_keys(remap, keys);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use strata_schemas::MetricDef;

    use crate::operator::test_support::{self as support, event, metric};
    use crate::operator::{Checkpoint, PartitionState};

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
                    support::emit(&mut cached),
                    support::emit(&mut plain),
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
                    support::emit(cached),
                    support::emit(plain),
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
            states[0].interned_keys(0),
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
            let emission = support::emit(cached);
            assert_eq!(emission, support::emit(plain));
            emission
        };
        both(&mut states, 0, t0);
        both(&mut states, 1, t0 + 30_000);
        emit(&mut states);
        // Into the older session: the newest is cached as it is, unchanged.
        both(&mut states, 2, t0 + 5_000);
        // Into the newest session, through the cache.
        both(&mut states, 3, t0 + 35_000);
        let rows = support::parsed(&emit(&mut states).1);
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
}
