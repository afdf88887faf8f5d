//! Property tests of the metric semantics both layers execute: accumulators
//! of the reference metrics merge associatively and commutatively, and
//! aggregating per partition then merging equals aggregating everything at
//! once, window by window and group by group.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use strata_schemas::aggregate::PreparedEvent;
use strata_schemas::config::{self, MetricDef};
use strata_schemas::value::Value;
use strata_schemas::window::{SessionSet, Window, WindowKind};
use strata_schemas::{Accumulator, Config, Event};

fn reference_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).expect("the reference config is valid")
}

/// (time offset ms, user, page, country, duration, partition)
fn events_strategy() -> impl Strategy<Value = Vec<(i64, u8, u8, u8, i64, u8)>> {
    proptest::collection::vec(
        (
            0i64..1_800_000,
            0u8..40,
            0u8..5,
            0u8..3,
            0i64..5_000,
            0u8..4,
        ),
        1..200,
    )
}

fn event(
    metric: &MetricDef,
    (t, user, page, country, duration, _): (i64, u8, u8, u8, i64, u8),
) -> Event {
    let c = &metric.source.contract;
    let mut values = vec![Value::Null; c.fields.len()];
    let time = 1_795_341_600_000 + t;
    values[c.field_index("event_time").unwrap()] = Value::Timestamp(time);
    values[c.field_index("user_id").unwrap()] = Value::String(format!("u{user}"));
    values[c.field_index("page").unwrap()] = Value::String(format!("/p{page}"));
    values[c.field_index("country").unwrap()] =
        Value::String(["DE", "FR", "US"][country as usize].into());
    values[c.field_index("duration_ms").unwrap()] = Value::Int(duration);
    Event {
        time_ms: time,
        values,
    }
}

type View = BTreeMap<(Window, Vec<String>), Accumulator>;

/// Aggregates events into (window, group key) → accumulator, using the
/// shared window assignment and session merging.
fn aggregate(metric: &MetricDef, events: &[Event]) -> View {
    let key = |e: &Event| {
        metric
            .group_key(e)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let mut view = View::new();
    match metric.window {
        WindowKind::Session { gap } => {
            let mut sessions: BTreeMap<Vec<String>, SessionSet<Acc>> = BTreeMap::new();
            for e in events {
                sessions.entry(key(e)).or_default().insert(
                    e.time_ms,
                    gap.as_i64(),
                    || Acc(metric.plan.new_accumulator()),
                    |acc| metric.plan.update(&mut acc.0, e),
                );
            }
            for (k, set) in sessions {
                for (w, acc) in set.iter() {
                    view.insert((w, k.clone()), acc.0.clone());
                }
            }
        }
        kind => {
            for e in events {
                for w in kind.assign(e.time_ms) {
                    metric.plan.update(
                        view.entry((w, key(e)))
                            .or_insert_with(|| metric.plan.new_accumulator()),
                        e,
                    );
                }
            }
        }
    }
    view
}

#[derive(Clone, Debug)]
struct Acc(Accumulator);
impl strata_schemas::window::Mergeable for Acc {
    fn merge_from(&mut self, other: Self) {
        self.0.merge(&other.0);
    }
}

fn merge_views(views: &[View]) -> View {
    let mut out = View::new();
    for v in views {
        for (k, acc) in v {
            match out.get_mut(k) {
                Some(existing) => existing.merge(acc),
                None => {
                    out.insert(k.clone(), acc.clone());
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Per-partition aggregation then merge equals aggregating everything
    /// at once (fixed windows; sessions are per key so the partitioning by
    /// user keeps sessions whole).
    #[test]
    fn partition_then_merge_equals_all_at_once(raw in events_strategy()) {
        let config = reference_config();
        for metric in &config.metrics {
            let events: Vec<Event> = raw.iter().map(|r| event(metric, *r)).collect();
            let whole = aggregate(metric, &events);
            let mut parts = Vec::new();
            for p in 0..4u8 {
                let part: Vec<Event> = raw
                    .iter()
                    .zip(&events)
                    .filter(|(r, _)| match metric.window {
                        // Sessions are computed per key; partition by user as producers do.
                        WindowKind::Session { .. } => r.1 % 4 == p,
                        _ => r.5 == p,
                    })
                    .map(|(_, e)| e.clone())
                    .collect();
                parts.push(aggregate(metric, &part));
            }
            let merged = merge_views(&parts);
            prop_assert_eq!(merged.len(), whole.len(), "metric {}", metric.name);
            for (k, acc) in &whole {
                let m = &merged[k];
                prop_assert_eq!(metric.plan.finalize(m), metric.plan.finalize(acc), "metric {} window {:?}", metric.name, k);
                prop_assert_eq!(m.events, acc.events);
            }
        }
    }

    /// Merging accumulators is associative and commutative.
    #[test]
    fn accumulator_merge_is_associative_and_commutative(raw in events_strategy(), split_a in 0usize..200, split_b in 0usize..200) {
        let config = reference_config();
        for metric in &config.metrics {
            let events: Vec<Event> = raw.iter().map(|r| event(metric, *r)).collect();
            let (i, j) = (split_a.min(events.len()), split_b.min(events.len()));
            let (lo, hi) = (i.min(j), i.max(j));
            let acc_of = |slice: &[Event]| {
                let mut acc = metric.plan.new_accumulator();
                for e in slice {
                    metric.plan.update(&mut acc, e);
                }
                acc
            };
            let (a, b, c) = (acc_of(&events[..lo]), acc_of(&events[lo..hi]), acc_of(&events[hi..]));
            let mut ab_c = a.clone();
            ab_c.merge(&b);
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            let mut cba = c.clone();
            cba.merge(&b);
            cba.merge(&a);
            let all = acc_of(&events);
            for x in [&ab_c, &a_bc, &cba] {
                prop_assert_eq!(metric.plan.finalize(x), metric.plan.finalize(&all));
                prop_assert_eq!(&x.distinct, &all.distinct);
                prop_assert_eq!(x.events, all.events);
            }
        }
    }
}

/// A prepared event adds to states exactly what the event adds, for every
/// kind of state (the batch layer prepares an event once for all of its
/// hopping windows).
#[test]
fn prepared_events_add_what_events_add() {
    let config = all_states_config();
    let metric = &config.metrics[0];
    let plan = &metric.plan;
    let (mut from_events, mut from_prepared) = (plan.new_accumulator(), plan.new_accumulator());
    let mut prepared = PreparedEvent::default();
    for i in 0..6000u32 {
        let mut e = event(
            metric,
            (
                i64::from(i),
                (i % 251) as u8,
                0,
                (i % 3) as u8,
                i64::from(i % 97),
                0,
            ),
        );
        // Past the exact limit of the distinct sketch, and some nulls.
        let user = metric.source.contract.field_index("user_id").unwrap();
        e.values[user] = Value::String(format!("user{i}"));
        if i % 10 == 0 {
            let duration = metric.source.contract.field_index("duration_ms").unwrap();
            e.values[duration] = Value::Null;
        }
        plan.update(&mut from_events, &e);
        plan.prepare(&e, &mut prepared);
        plan.update(&mut from_prepared, &prepared);
    }
    assert_eq!(from_prepared, from_events);
    assert_eq!(from_events.events, 6000);
    assert_eq!(from_events.numeric[0].count, 5400);
    assert!(!from_events.distinct[0].is_exact());
}

/// One metric with every kind of state.
fn all_states_config() -> Config {
    let text = format!(
        r#"
[contracts]
dir = {:?}
[sources.s]
topic = "t"
contract = "page_view"
event_time_field = "event_time"
[metrics.m]
source = "s"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["country"]
aggregations = [
  {{ name = "n", function = "count" }},
  {{ name = "total", function = "sum", field = "duration_ms" }},
  {{ name = "lo", function = "min", field = "duration_ms" }},
  {{ name = "users", function = "count_distinct", field = "user_id" }},
  {{ name = "lat", function = "quantiles", field = "duration_ms", quantiles = [0.5, 0.99] }},
]
"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contracts")
            .display()
            .to_string()
    );
    config::parse(&text, "all_states.toml", Path::new("."), |_| None).expect("test config")
}

#[test]
fn reference_metrics_finalize_to_expected_values() {
    let config = reference_config();
    let m = config.metric("page_views_per_minute").unwrap();
    let events: Vec<Event> = [
        (0, 1, 0, 0, 100, 0),
        (1_000, 2, 0, 0, 300, 1),
        (59_999, 1, 0, 0, 200, 2),
        (60_000, 1, 0, 0, 50, 0),
    ]
    .into_iter()
    .map(|r| event(m, r))
    .collect();
    let view = aggregate(m, &events);
    let first = view.iter().next().unwrap();
    assert_eq!(
        first.0.0,
        Window {
            start_ms: 1_795_341_600_000,
            end_ms: 1_795_341_660_000
        }
    );
    assert_eq!(
        m.plan.finalize(first.1),
        vec![
            serde_json::json!(3),
            serde_json::json!(600),
            serde_json::json!(200.0)
        ]
    );
    assert_eq!(
        view.len(),
        2,
        "the event at exactly 1m belongs to the next window"
    );
    let names: Vec<String> = m
        .plan
        .output_columns()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["views", "total_duration_ms", "avg_duration_ms"]);
}
