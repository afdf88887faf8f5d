//! The reference metrics computed independently of Strata's code, straight
//! from the generated events and the rules in docs/ARCHITECTURE.md:
//! per Kafka partition in offset order, watermark = max event time seen
//! before the event − allowed lateness; a fixed window is too late when its
//! end ≤ watermark, a session event when its time < watermark.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use strata_generator::clickstream::GeneratedRecord;

/// (window_start, page, country) → (views, total duration).
pub type PerMinute = BTreeMap<(i64, String, String), (u64, i64)>;
/// (window_start, country) → distinct users.
pub type ActiveUsers = BTreeMap<(i64, String), u64>;
/// (user, session start, session end) → (page views, total duration).
pub type Sessions = BTreeMap<(String, i64, i64), (u64, i64)>;

/// The three reference metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Expected {
    /// page_views_per_minute.
    pub per_minute: PerMinute,
    /// active_users_5m.
    pub active_users: ActiveUsers,
    /// user_sessions.
    pub sessions: Sessions,
    /// Events counted in page_views_per_minute.
    pub counted: u64,
}

const MINUTE: i64 = 60_000;
const GAP: i64 = 30 * MINUTE;

/// What the speed layer must show (`lateness_ms`: the source's allowed
/// lateness), or, with `lateness_ms = None`, what the batch layer must show
/// (every valid event counts).
pub fn compute(records: &[GeneratedRecord], lateness_ms: Option<i64>) -> Expected {
    let mut max_seen: HashMap<i32, i64> = HashMap::new();
    let mut per_minute = PerMinute::new();
    let mut users: BTreeMap<(i64, String), BTreeSet<String>> = BTreeMap::new();
    let mut session_events: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let mut counted = 0;
    for r in records {
        let Some(e) = &r.event else { continue };
        let t = e.event_time_ms;
        let watermark = match (lateness_ms, max_seen.get(&r.partition)) {
            (Some(l), Some(max)) => max - l,
            _ => i64::MIN,
        };
        let minute = t.div_euclid(MINUTE) * MINUTE;
        if minute + MINUTE > watermark {
            let entry = per_minute
                .entry((minute, e.page.clone(), e.country.clone()))
                .or_default();
            entry.0 += 1;
            entry.1 += e.duration_ms;
            counted += 1;
        }
        for k in 0..5 {
            let start = minute - k * MINUTE;
            if start + 5 * MINUTE > watermark {
                users
                    .entry((start, e.country.clone()))
                    .or_default()
                    .insert(e.user_id.clone());
            }
        }
        if t >= watermark {
            session_events
                .entry(e.user_id.clone())
                .or_default()
                .push((t, e.duration_ms));
        }
        let max = max_seen.entry(r.partition).or_insert(t);
        *max = (*max).max(t);
    }
    let mut sessions = Sessions::new();
    for (user, mut events) in session_events {
        events.sort_unstable();
        let mut start = events[0].0;
        let mut last = start;
        let mut count = 0;
        let mut total = 0;
        for (t, d) in events {
            if t - last >= GAP {
                sessions.insert((user.clone(), start, last + GAP), (count, total));
                start = t;
                count = 0;
                total = 0;
            }
            last = t;
            count += 1;
            total += d;
        }
        sessions.insert((user, start, last + GAP), (count, total));
    }
    Expected {
        per_minute,
        active_users: users
            .into_iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect(),
        sessions,
        counted,
    }
}
