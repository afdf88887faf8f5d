//! The recompute reads rows from Arrow arrays, keys by 16-byte words and
//! takes fixed windows in time order; the speed layer's path builds an
//! event per row. This checks them against each other: every metric shape
//! the word lookup distinguishes (one column, two, three or four, more than
//! four), strings shorter and longer than an Arrow view holds inline, ints,
//! floats (-0.0 and 0.0 are two keys), bools, a filter on an optional field,
//! tumbling, hopping and session windows, events out of order across files,
//! in 1, 2 and 3 row ranges. The reference aggregates events one by one with
//! the shared definitions (`WindowKind::assign`, `sessions_of_sorted`,
//! `AggPlan::update`) and orders windows by start and key encoding.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use strata_schemas::window::sessions_of_sorted;
use strata_schemas::{Accumulator, Event, MetricDef, Value, Window, config, group_key};

use super::*;
use crate::parquet_file::{self, ArchivedEvent};

const T0: i64 = 1_795_341_600_000;

const LABELS: [&str; 6] = [
    "a",
    "twelve bytes",
    "thirteen byte",
    "a label far longer than any view holds inline",
    "ü€ long enough to leave the view",
    "",
];

fn config(dir: &Path) -> config::Config {
    let contract = json!({
        "name": "reading",
        "version": 1,
        "description": "A reading.",
        "unknown_fields": "reject",
        "fields": [
            {"name": "event_time", "type": "timestamp", "required": true, "formats": ["epoch_ms"]},
            {"name": "label", "type": "string", "required": true},
            {"name": "level", "type": "int", "required": true},
            {"name": "ok", "type": "bool", "required": true},
            {"name": "ratio", "type": "float", "required": true},
            {"name": "tag", "type": "string", "required": true},
            {"name": "user", "type": "string", "required": false},
            {"name": "amount", "type": "int", "required": false}
        ]
    });
    let folder = dir.join("contracts/reading");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("v1.json"), contract.to_string()).unwrap();
    let aggregations = r#"aggregations = [
  { name = "n", function = "count" },
  { name = "amount", function = "sum", field = "amount" },
  { name = "users", function = "count_distinct", field = "user" },
]"#;
    let toml = format!(
        r#"
[contracts]
dir = "contracts"

[sources.readings]
topic = "readings"
contract = "reading"
contract_version = 1
event_time_field = "event_time"

[metrics.one_column]
source = "readings"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["label"]
filter = [{{ field = "amount", op = "ge", value = 2 }}]
{aggregations}

[metrics.two_columns]
source = "readings"
window = {{ kind = "tumbling", size = "2m" }}
group_by = ["label", "ratio"]
{aggregations}

[metrics.three_columns]
source = "readings"
window = {{ kind = "hopping", size = "3m", slide = "1m" }}
group_by = ["label", "level", "ok"]
{aggregations}

[metrics.five_columns]
source = "readings"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["label", "level", "ok", "ratio", "tag"]
{aggregations}

[metrics.sessions]
source = "readings"
window = {{ kind = "session", gap = "90s" }}
group_by = ["label", "tag"]
{aggregations}
"#
    );
    std::fs::write(dir.join("strata.toml"), toml).unwrap();
    config::load_with_env(&dir.join("strata.toml"), |_| None).unwrap()
}

/// Deterministic events over about 40 minutes, a tenth of them up to 5
/// minutes late, written as three files of uneven sizes.
fn events() -> Vec<Event> {
    let mut state: u64 = 0x5eed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    (0..150_000i64)
        .map(|i| {
            let mut time_ms = T0 + i * 16;
            if next(10) == 0 {
                time_ms -= next(300_000) as i64;
            }
            let ratio = [0.0, -0.0, 1.5, f64::from(u32::MAX)][next(4) as usize];
            Event {
                time_ms,
                values: vec![
                    Value::Timestamp(time_ms),
                    Value::String(LABELS[next(LABELS.len() as u64) as usize].to_string()),
                    Value::Int(next(3) as i64 - 1),
                    Value::Bool(next(2) == 0),
                    Value::Float(ratio),
                    Value::String(format!("t{}", next(40))),
                    match next(5) {
                        0 => Value::Null,
                        u => Value::String(format!("user-{}-{u}", next(500))),
                    },
                    match next(6) {
                        0 => Value::Null,
                        a => Value::Int(a as i64),
                    },
                ],
            }
        })
        .collect()
}

/// (window, key values, state) ordered by window start and key encoding.
type Expected = BTreeMap<(i64, Vec<u8>), (Window, Vec<Value>, Accumulator)>;

fn by_events(metric: &MetricDef, events: &[Event]) -> Expected {
    let mut out = Expected::new();
    let kept = events.iter().filter(|e| metric.filter.matches(e));
    let key = |e: &Event| {
        let mut encoding = Vec::new();
        group_key::encode(&mut encoding, metric, e);
        encoding
    };
    match metric.window.session_gap_ms() {
        None => {
            for e in kept {
                for window in metric.window.assign(e.time_ms) {
                    let (_, _, acc) = out.entry((window.start_ms, key(e))).or_insert_with(|| {
                        (window, metric.group_key(e), metric.plan.new_accumulator())
                    });
                    metric.plan.update(acc, e);
                }
            }
        }
        Some(gap) => {
            let mut by_key: BTreeMap<Vec<u8>, Vec<&Event>> = BTreeMap::new();
            for e in kept {
                by_key.entry(key(e)).or_default().push(e);
            }
            for (encoding, mut events) in by_key {
                events.sort_by_key(|e| e.time_ms);
                let times: Vec<i64> = events.iter().map(|e| e.time_ms).collect();
                for (window, a, b) in sessions_of_sorted(&times, gap) {
                    let mut acc = metric.plan.new_accumulator();
                    for e in &events[a..b] {
                        metric.plan.update(&mut acc, *e);
                    }
                    let values = metric.group_key(events[a]);
                    out.insert((window.start_ms, encoding.clone()), (window, values, acc));
                }
            }
        }
    }
    out
}

#[test]
fn rows_read_from_the_arrays_aggregate_as_events_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let events = events();
    let contract = &config.sources["readings"].contract;
    let archived: Vec<ArchivedEvent> = events
        .iter()
        .enumerate()
        .map(|(offset, event)| ArchivedEvent {
            event: event.clone(),
            offset: offset as i64,
            kafka_timestamp_ms: None,
        })
        .collect();
    let refs: Vec<&ArchivedEvent> = archived.iter().collect();
    let files: Vec<Vec<u8>> = [0, 20_000, 20_001, 90_000, refs.len()]
        .windows(2)
        .map(|w| parquet_file::encode(contract, "readings", 0, &refs[w[0]..w[1]]).unwrap())
        .collect();
    for metric in &config.metrics {
        let frames: Vec<EventFrame> = files
            .iter()
            .map(|f| EventFrame::read(metric, "test.parquet", bytes::Bytes::from(f.clone())))
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(Window, Vec<Value>, Accumulator)> =
            by_events(metric, &events).into_values().collect();
        assert!(
            expected.len() > 200,
            "{}: {} windows",
            metric.name,
            expected.len()
        );
        let all = (i64::MIN / 2, i64::MAX / 2);
        for ranges in [1, 2, 3] {
            let recomputed = recompute_in_ranges(metric, &frames, ranges, all, all);
            let got: Vec<(Window, Vec<Value>, Accumulator)> = recomputed
                .windows
                .into_iter()
                .map(|w| (w.window, w.key.to_vec(), w.acc))
                .collect();
            assert_eq!(got.len(), expected.len(), "{} in {ranges}", metric.name);
            for (got, expected) in got.iter().zip(&expected) {
                assert_eq!(got, expected, "{} in {ranges} ranges", metric.name);
            }
        }
    }
}
