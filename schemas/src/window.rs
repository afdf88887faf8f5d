//! Event-time window assignment: the one implementation both layers run,
//! and every rule that depends on the window kind (which windows are
//! complete at a horizon, where a range of windows may start, which events
//! a range needs): a new kind changes this module, configuration and the
//! speed layer's operator, never the batch layer.
//!
//! Windows are half-open intervals `[start, end)` of epoch milliseconds,
//! aligned to the Unix epoch. An event at exactly a window's end belongs to
//! the next window. Session windows start as `[t, t + gap)` for every event
//! and merge while they overlap, so two events belong to one session exactly
//! when they are less than `gap` apart (an event exactly `gap` after the last
//! one starts a new session).

use smallvec::SmallVec;

use crate::duration::DurationMs;

/// How events are grouped in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length.
        size: DurationMs,
    },
    /// Windows of `size` starting every `slide` (`slide` divides `size`).
    Hopping {
        /// Window length.
        size: DurationMs,
        /// Distance between window starts.
        slide: DurationMs,
    },
    /// Per group key, activity separated by less than `gap`.
    Session {
        /// Inactivity that closes a session.
        gap: DurationMs,
    },
}

/// A half-open event-time interval `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Inclusive start, epoch ms.
    pub start_ms: i64,
    /// Exclusive end, epoch ms.
    pub end_ms: i64,
}

impl Window {
    /// Whether `t` lies in `[start, end)`.
    pub fn contains(&self, t: i64) -> bool {
        self.start_ms <= t && t < self.end_ms
    }
}

impl WindowKind {
    /// The kind's name in configuration (`tumbling`, `hopping`, `session`).
    pub fn name(&self) -> &'static str {
        match self {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Hopping { .. } => "hopping",
            WindowKind::Session { .. } => "session",
        }
    }

    /// The fixed windows containing `t`, ascending by start. For session
    /// windows this is the single proto-window `[t, t + gap)` that
    /// [`SessionSet::insert`] merges with its neighbours.
    pub fn assign(&self, t: i64) -> Windows {
        match *self {
            WindowKind::Tumbling { size } => {
                let size = size.as_i64();
                let start = boundary_at_or_before(t, size);
                Windows {
                    next_start: start,
                    size,
                    slide: size,
                    remaining: 1,
                }
            }
            WindowKind::Hopping { size, slide } => {
                let (size, slide) = (size.as_i64(), slide.as_i64());
                let last_start = boundary_at_or_before(t, slide);
                let count = size / slide;
                Windows {
                    next_start: last_start - (count - 1) * slide,
                    size,
                    slide,
                    remaining: count,
                }
            }
            WindowKind::Session { gap } => Windows {
                next_start: t,
                size: gap.as_i64(),
                slide: gap.as_i64(),
                remaining: 1,
            },
        }
    }

    /// The longest a window of this kind can be open for a given event, used
    /// to bound state: the largest `end - t` over the windows of an event.
    pub fn max_extent_ms(&self) -> i64 {
        match *self {
            WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => size.as_i64(),
            WindowKind::Session { gap } => gap.as_i64(),
        }
    }

    /// The gap of session windows, whose extents depend on the events
    /// around them ([`SessionSet`], [`sessions_of_sorted`]); `None` for
    /// fixed windows, which [`Self::assign`] places from one event's time.
    pub fn session_gap_ms(&self) -> Option<i64> {
        match *self {
            WindowKind::Session { gap } => Some(gap.as_i64()),
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => None,
        }
    }

    /// The kind's lengths as (name, epoch ms) pairs, as the API describes
    /// them: `size_ms` (tumbling), `size_ms` and `slide_ms` (hopping),
    /// `gap_ms` (session).
    pub fn lengths_ms(&self) -> Vec<(&'static str, i64)> {
        match *self {
            WindowKind::Tumbling { size } => vec![("size_ms", size.as_i64())],
            WindowKind::Hopping { size, slide } => {
                vec![("size_ms", size.as_i64()), ("slide_ms", slide.as_i64())]
            }
            WindowKind::Session { gap } => vec![("gap_ms", gap.as_i64())],
        }
    }

    /// The grid that windows can be re-aggregated on: a coarser bucket of a
    /// multiple of this length holds whole windows. Only tumbling windows
    /// have one; hopping windows overlap and sessions follow the events, so
    /// merging them into buckets would count an event more than once or
    /// cut a session.
    pub fn regrid_step_ms(&self) -> Option<i64> {
        match *self {
            WindowKind::Tumbling { size } => Some(size.as_i64()),
            WindowKind::Hopping { .. } | WindowKind::Session { .. } => None,
        }
    }

    /// The distance between consecutive window starts of fixed windows
    /// (the size of tumbling windows, the slide of hopping ones); `None`
    /// for sessions, which start at events.
    pub fn start_step_ms(&self) -> Option<i64> {
        match *self {
            WindowKind::Tumbling { size } => Some(size.as_i64()),
            WindowKind::Hopping { slide, .. } => Some(slide.as_i64()),
            WindowKind::Session { .. } => None,
        }
    }

    /// Whether windows lie on a fixed grid of the epoch (tumbling, hopping),
    /// so a window's bounds never depend on other events.
    pub fn is_fixed(&self) -> bool {
        self.session_gap_ms().is_none()
    }

    /// The latest window start at or before `t`, so a range of windows
    /// starting there never begins inside a fixed window. Session starts
    /// depend on the events, so `t` itself: a caller holding sessions must
    /// move back to the start of a session spanning `t`.
    pub fn align_start(&self, t: i64) -> i64 {
        match *self {
            WindowKind::Tumbling { size } => boundary_at_or_before(t, size.as_i64()),
            WindowKind::Hopping { slide, .. } => boundary_at_or_before(t, slide.as_i64()),
            WindowKind::Session { .. } => t,
        }
    }

    /// The largest window boundary `W` such that every window starting
    /// before `W` ends at or before `horizon` (and the window starting at
    /// `W` does not): when every event before `horizon` is known, the
    /// windows starting before `W` are complete. For sessions, which can
    /// always still grow, `horizon` itself: the caller bounds it further by
    /// the earliest session still open at `horizon`.
    pub fn complete_before(&self, horizon: i64) -> i64 {
        match *self {
            WindowKind::Tumbling { size } => boundary_at_or_before(horizon, size.as_i64()),
            WindowKind::Hopping { size, slide } => {
                let (size, slide) = (size.as_i64(), slide.as_i64());
                boundary_at_or_before(horizon - size + slide, slide)
            }
            WindowKind::Session { .. } => horizon,
        }
    }

    /// An end for the event times that can fall in a window starting before
    /// `windows_end`, given every event before `horizon` is known: one
    /// window length after `windows_end` for fixed windows (a bound for any
    /// `windows_end`, aligned or not); `horizon` for sessions, which have no
    /// length bound.
    pub fn events_end(&self, windows_end: i64, horizon: i64) -> i64 {
        match *self {
            WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => {
                windows_end + size.as_i64()
            }
            WindowKind::Session { .. } => horizon,
        }
    }
}

/// Iterator over the windows of one event.
#[derive(Clone, Debug)]
pub struct Windows {
    next_start: i64,
    size: i64,
    slide: i64,
    remaining: i64,
}

impl Iterator for Windows {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.remaining <= 0 {
            return None;
        }
        let window = Window {
            start_ms: self.next_start,
            end_ms: self.next_start + self.size,
        };
        self.next_start += self.slide;
        self.remaining -= 1;
        Some(window)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(0);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Windows {}

/// State that two sessions combine when they merge.
pub trait Mergeable {
    /// Folds `other` into `self`.
    fn merge_from(&mut self, other: Self);
}

/// What one insertion did to a key's sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionChange {
    /// The session the event now belongs to.
    pub window: Window,
    /// Sessions that no longer exist because they merged into `window`
    /// (including the event's session's own previous extent when its start
    /// moved). Their rows must be retracted downstream.
    pub replaced: Vec<Window>,
}

/// The sessions of one group key: disjoint windows sorted by start.
///
/// A sorted vector rather than a tree: a key nearly always has one open
/// session, and the speed layer holds one set per key (every user, for a
/// per-user session metric). The first session is stored inline, so reaching
/// a key's session costs one memory access instead of two: with many keys
/// that access is a cache miss, the largest cost of a session update.
#[derive(Clone, Debug)]
pub struct SessionSet<S> {
    /// `(start, end, state)`, sorted by start; disjoint, so sorted by end too.
    sessions: SmallVec<[(i64, i64, S); 1]>,
}

impl<S> Default for SessionSet<S> {
    fn default() -> Self {
        SessionSet {
            sessions: SmallVec::new(),
        }
    }
}

impl<S: Mergeable> SessionSet<S> {
    /// Adds an event at `t`: its proto-window `[t, t + gap)` absorbs every
    /// overlapping session; `apply` then updates the merged state. `empty`
    /// makes the state of a brand-new session.
    pub fn insert(
        &mut self,
        t: i64,
        gap: i64,
        empty: impl FnOnce() -> S,
        apply: impl FnOnce(&mut S),
    ) -> SessionChange {
        let mut start = t;
        let mut end = t + gap;
        // Sessions starting before `end` are `..upper`; the ones overlapping
        // `[t, t + gap)` are a contiguous run ending at `upper − 1`.
        let upper = self.sessions.partition_point(|(s, _, _)| *s < end);
        // Fast path, the common case: `t` falls inside that last session and
        // it starts at or before `t`. Sessions are disjoint, so no older one
        // can reach `t`: the session only grows at its end and keeps its
        // identity.
        if let Some((session_start, session_end, state)) =
            upper.checked_sub(1).map(|i| &mut self.sessions[i])
            && grow_session(*session_start, session_end, t, gap)
        {
            apply(state);
            return SessionChange {
                window: Window {
                    start_ms: *session_start,
                    end_ms: *session_end,
                },
                replaced: Vec::new(),
            };
        }
        let mut lower = upper;
        while lower > 0 && self.sessions[lower - 1].1 > t {
            lower -= 1;
        }
        let mut replaced = Vec::new();
        let mut state: Option<S> = None;
        // Merge oldest first so the surviving state is the earliest session's.
        for (session_start, session_end, session_state) in self.sessions.drain(lower..upper) {
            start = start.min(session_start);
            end = end.max(session_end);
            replaced.push(Window {
                start_ms: session_start,
                end_ms: session_end,
            });
            match &mut state {
                None => state = Some(session_state),
                Some(s) => s.merge_from(session_state),
            }
        }
        let mut state = state.unwrap_or_else(empty);
        apply(&mut state);
        let window = Window {
            start_ms: start,
            end_ms: end,
        };
        // A session that only grew at its end keeps its identity (its start):
        // only sessions whose start no longer exists are replaced.
        replaced.retain(|w| w.start_ms != start);
        self.sessions.insert(lower, (start, end, state));
        SessionChange { window, replaced }
    }

    /// Removes and returns every session that ends at or before `watermark`
    /// (it can no longer grow: any later event would be late).
    pub fn drain_closed(&mut self, watermark: i64) -> Vec<(Window, S)> {
        // Sorted by end too: the closed sessions are a prefix (usually
        // empty, and then nothing is allocated).
        let closed = self
            .sessions
            .partition_point(|(_, end, _)| *end <= watermark);
        if closed == 0 {
            return Vec::new();
        }
        self.sessions
            .drain(..closed)
            .map(|(start, end, s)| {
                (
                    Window {
                        start_ms: start,
                        end_ms: end,
                    },
                    s,
                )
            })
            .collect()
    }

    /// The current sessions.
    pub fn iter(&self) -> impl Iterator<Item = (Window, &S)> {
        self.sessions.iter().map(|(start, end, s)| {
            (
                Window {
                    start_ms: *start,
                    end_ms: *end,
                },
                s,
            )
        })
    }

    /// The current sessions, with mutable state.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Window, &mut S)> {
        self.sessions.iter_mut().map(|(start, end, s)| {
            (
                Window {
                    start_ms: *start,
                    end_ms: *end,
                },
                s,
            )
        })
    }

    /// The session starting at `start`.
    pub fn get_mut(&mut self, start: i64) -> Option<&mut S> {
        self.sessions
            .binary_search_by_key(&start, |(s, _, _)| *s)
            .ok()
            .map(|i| &mut self.sessions[i].2)
    }

    /// The newest session: its start, its end and its state. The end may
    /// only grow (no session follows the newest one, so the sessions stay
    /// disjoint), as [`Self::insert`] grows it for an event inside it.
    pub fn newest_mut(&mut self) -> Option<(i64, &mut i64, &mut S)> {
        self.sessions
            .last_mut()
            .map(|(start, end, state)| (*start, end, state))
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there is no open session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Adds an event at `t` to the session `[start, end)` if it falls inside
/// it: the session then grows at its end to `t + gap` (if that is later)
/// and keeps its start, its identity. `false`, and no change, otherwise.
/// The rule [`SessionSet::insert`] applies to the session an event lands
/// in, for any store of sessions that takes the same shortcut.
#[inline]
pub fn grow_session(start: i64, end: &mut i64, t: i64, gap: i64) -> bool {
    if start <= t && t < *end {
        *end = (*end).max(t + gap);
        true
    } else {
        false
    }
}

/// The last multiple of `step` at or before `t`: fixed windows start on
/// multiples of their slide (of their size, for tumbling windows), counted
/// from the epoch, so their starts and ends all lie on this grid.
pub fn boundary_at_or_before(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

/// The first multiple of `step` strictly after `t` (e.g. the end of the
/// first window not yet final when everything ending at or before `t` is).
/// Never overflows for `t = i64::MIN`.
pub fn boundary_after(t: i64, step: i64) -> i64 {
    t + (step - t.rem_euclid(step))
}

/// Sessions of a whole, time-sorted sequence of one key's event times:
/// `(window, index of first event, index one past the last event)`.
/// The batch-layer reference: two consecutive events are in one session iff
/// their distance is less than `gap`.
pub fn sessions_of_sorted(times: &[i64], gap: i64) -> Vec<(Window, usize, usize)> {
    let mut out = Vec::new();
    let mut first = 0;
    for i in 1..=times.len() {
        if i == times.len() || times[i] - times[i - 1] >= gap {
            if i > first {
                out.push((
                    Window {
                        start_ms: times[first],
                        end_ms: times[i - 1] + gap,
                    },
                    first,
                    i,
                ));
            }
            first = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grid_boundaries() {
        assert_eq!(boundary_at_or_before(125, 60), 120);
        assert_eq!(boundary_at_or_before(120, 60), 120);
        assert_eq!(boundary_at_or_before(-1, 60), -60);
        assert_eq!(boundary_after(120, 60), 180);
        assert_eq!(boundary_after(119, 60), 120);
        assert_eq!(boundary_after(-1, 60), 0);
        let after_min = boundary_after(i64::MIN, 60);
        assert!(after_min % 60 == 0 && after_min.checked_sub(60).is_none());
    }

    fn tumbling(ms: u64) -> WindowKind {
        WindowKind::Tumbling {
            size: DurationMs(ms),
        }
    }

    #[test]
    fn boundary_event_belongs_to_next_window() {
        let w: Vec<Window> = tumbling(60_000).assign(120_000).collect();
        assert_eq!(
            w,
            vec![Window {
                start_ms: 120_000,
                end_ms: 180_000
            }]
        );
        let w: Vec<Window> = tumbling(60_000).assign(119_999).collect();
        assert_eq!(
            w,
            vec![Window {
                start_ms: 60_000,
                end_ms: 120_000
            }]
        );
        let w: Vec<Window> = tumbling(60_000).assign(-1).collect();
        assert_eq!(
            w,
            vec![Window {
                start_ms: -60_000,
                end_ms: 0
            }]
        );
    }

    #[test]
    fn hopping_windows_in_order() {
        let kind = WindowKind::Hopping {
            size: DurationMs(300_000),
            slide: DurationMs(60_000),
        };
        let starts: Vec<i64> = kind.assign(600_000).map(|w| w.start_ms).collect();
        assert_eq!(starts, vec![360_000, 420_000, 480_000, 540_000, 600_000]);
        let starts: Vec<i64> = kind.assign(599_999).map(|w| w.start_ms).collect();
        assert_eq!(starts, vec![300_000, 360_000, 420_000, 480_000, 540_000]);
    }

    #[test]
    fn range_bounds_per_kind() {
        let minute = 60_000;
        let hopping = WindowKind::Hopping {
            size: DurationMs(300_000),
            slide: DurationMs(60_000),
        };
        let session = WindowKind::Session {
            gap: DurationMs(1_800_000),
        };
        // The batch layer's watermarks: the last full minute; the largest
        // boundary whose windows before it all end by the horizon.
        let horizon = 10 * minute + 59_999;
        assert_eq!(tumbling(60_000).complete_before(horizon), 10 * minute);
        assert_eq!(hopping.complete_before(horizon), 6 * minute);
        assert_eq!(session.complete_before(horizon), horizon);
        assert_eq!(tumbling(60_000).align_start(-1), -minute);
        assert_eq!(hopping.align_start(5 * minute + 1), 5 * minute);
        assert_eq!(session.align_start(5 * minute + 1), 5 * minute + 1);
        assert_eq!(hopping.events_end(6 * minute, horizon), 11 * minute);
        assert_eq!(session.events_end(6 * minute, horizon), horizon);
        assert!(tumbling(60_000).is_fixed() && hopping.is_fixed() && !session.is_fixed());
        assert_eq!(session.session_gap_ms(), Some(1_800_000));
        assert_eq!(hopping.session_gap_ms(), None);
    }

    #[derive(Debug, Default, PartialEq)]
    struct Count(u64);
    impl Mergeable for Count {
        fn merge_from(&mut self, other: Self) {
            self.0 += other.0;
        }
    }

    #[test]
    fn late_event_bridging_two_sessions_merges_them() {
        let mut set = SessionSet::<Count>::default();
        set.insert(0, 10, Count::default, |c| c.0 += 1);
        set.insert(15, 10, Count::default, |c| c.0 += 1);
        assert_eq!(set.len(), 2);
        let change = set.insert(8, 10, Count::default, |c| c.0 += 1);
        assert_eq!(
            change.window,
            Window {
                start_ms: 0,
                end_ms: 25
            }
        );
        assert_eq!(
            change.replaced,
            vec![Window {
                start_ms: 15,
                end_ms: 25
            }]
        );
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().unwrap().1, &Count(3));
    }

    #[test]
    fn event_exactly_gap_later_starts_new_session() {
        let mut set = SessionSet::<Count>::default();
        set.insert(0, 10, Count::default, |c| c.0 += 1);
        let change = set.insert(10, 10, Count::default, |c| c.0 += 1);
        assert_eq!(
            change.window,
            Window {
                start_ms: 10,
                end_ms: 20
            }
        );
        assert_eq!(set.len(), 2);
        let change = set.insert(-5, 10, Count::default, |c| c.0 += 1);
        assert_eq!(
            change.window,
            Window {
                start_ms: -5,
                end_ms: 10
            }
        );
        assert_eq!(
            change.replaced,
            vec![Window {
                start_ms: 0,
                end_ms: 10
            }]
        );
        assert_eq!(set.drain_closed(10).len(), 1);
        assert_eq!(set.len(), 1);
    }

    proptest! {
        /// Every event lands in exactly the windows that contain it.
        #[test]
        fn every_event_lands_in_exactly_its_windows(
            t in -10_000_000i64..10_000_000,
            slide_units in 1u64..10,
            multiple in 1u64..8,
        ) {
            let slide = slide_units * 1_000;
            let size = slide * multiple;
            for kind in [tumbling(size), WindowKind::Hopping { size: DurationMs(size), slide: DurationMs(slide) }] {
                let step = match kind { WindowKind::Hopping { slide, .. } => slide.as_i64(), _ => size as i64 };
                let assigned: Vec<Window> = kind.assign(t).collect();
                // Brute force: every aligned window near t that contains t.
                let mut expected = Vec::new();
                let mut start = (t - size as i64).div_euclid(step) * step - step;
                while start <= t + step {
                    let w = Window { start_ms: start, end_ms: start + size as i64 };
                    if w.contains(t) { expected.push(w); }
                    start += step;
                }
                prop_assert_eq!(assigned, expected);
            }
        }

        /// Every window starting before `complete_before(h)` ends by `h`, the
        /// window starting there does not, and no aligned range start or
        /// event bound cuts a window.
        #[test]
        fn complete_windows_end_at_the_horizon(
            horizon in -10_000_000i64..10_000_000,
            t in -10_000_000i64..10_000_000,
            slide_units in 1u64..10,
            multiple in 1u64..8,
        ) {
            let slide = slide_units * 1_000;
            let size = slide * multiple;
            for kind in [tumbling(size), WindowKind::Hopping { size: DurationMs(size), slide: DurationMs(slide) }] {
                let end = kind.complete_before(horizon);
                let last_before = kind.align_start(end - 1);
                prop_assert!(last_before < end && last_before + size as i64 <= horizon);
                prop_assert_eq!(kind.align_start(end), end);
                prop_assert!(end + size as i64 > horizon);
                let start = kind.align_start(t);
                // The latest start of a window holding `t`.
                prop_assert_eq!(kind.assign(t).last().map(|w| w.start_ms), Some(start));
                prop_assert!(kind.assign(t).all(|w| w.end_ms <= kind.events_end(t + 1, horizon)));
            }
        }

        /// Incremental session merging, in any arrival order, equals the
        /// sort-then-split reference the batch layer uses.
        #[test]
        fn sessions_are_order_independent(mut times in proptest::collection::vec(0i64..500, 1..60), gap in 1i64..40) {
            let mut set = SessionSet::<Count>::default();
            for &t in &times {
                set.insert(t, gap, Count::default, |c| c.0 += 1);
            }
            let incremental: Vec<(Window, u64)> = set.iter().map(|(w, c)| (w, c.0)).collect();
            times.sort_unstable();
            let reference: Vec<(Window, u64)> = sessions_of_sorted(&times, gap)
                .into_iter()
                .map(|(w, a, b)| (w, (b - a) as u64))
                .collect();
            prop_assert_eq!(incremental, reference);
        }
    }
}
