//! The speed layer's operator without any server: the reference pipeline's
//! partition states, fed a seeded stream with out-of-order and late events
//! and emitting every few hundred records, leave (read the way ClickHouse's
//! `FINAL` reads them) exactly the aggregates computed independently in
//! `support::expected`. This pins the window semantics (hopping windows
//! kept as panes, late events, sessions merging) on every `cargo test`,
//! before the slower end-to-end tests run them through Kafka and ClickHouse.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value as Json};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::config;
use strata_speed::operator::{Checkpoint, PartitionState};
use strata_speed::sink::SpeedTables;
use support::expected::{self, Expected};

const PARTITIONS: i32 = 3;

/// ReplacingMergeTree(version) FINAL: the highest version per row key.
#[derive(Default)]
struct Table(BTreeMap<String, (u64, Map<String, Json>)>);

impl Table {
    fn upsert(&mut self, metric: &str, row: Map<String, Json>) {
        let key_fields: Vec<String> = row
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("agg_")
                    && ![
                        "version",
                        "is_final",
                        "retracted",
                        "window_end_ms",
                        "first_offset",
                        "last_offset",
                        "updated_at",
                    ]
                    .contains(&k.as_str())
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key = format!("{metric}|{}", key_fields.join("|"));
        let version = row["version"].as_u64().unwrap();
        if self.0.get(&key).is_none_or(|(v, _)| *v <= version) {
            self.0.insert(key, (version, row));
        }
    }

    fn live(&self, metric: &str) -> impl Iterator<Item = &Map<String, Json>> {
        let prefix = format!("{metric}|");
        self.0
            .iter()
            .filter(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, (_, r))| r)
            .filter(|r| r["retracted"] == 0)
    }
}

fn view(table: &Table) -> Expected {
    let mut out = Expected::default();
    for r in table.live("page_views_per_minute") {
        let entry = out
            .per_minute
            .entry((
                r["window_start_ms"].as_i64().unwrap(),
                r["page"].as_str().unwrap().to_string(),
                r["country"].as_str().unwrap().to_string(),
            ))
            .or_default();
        let events = r["agg_events"].as_u64().unwrap();
        entry.0 += events;
        entry.1 += r["agg_duration_ms_sum"].as_f64().unwrap() as i64;
        out.counted += events;
    }
    let mut users: BTreeMap<(i64, String), BTreeSet<u64>> = BTreeMap::new();
    for r in table.live("active_users_5m") {
        let hashes = r["agg_user_id_distinct_hashes"].as_array().unwrap();
        assert!(r["agg_user_id_distinct_hll"].as_array().unwrap().is_empty());
        users
            .entry((
                r["window_start_ms"].as_i64().unwrap(),
                r["country"].as_str().unwrap().to_string(),
            ))
            .or_default()
            .extend(hashes.iter().map(|h| h.as_u64().unwrap()));
    }
    out.active_users = users
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    for r in table.live("user_sessions") {
        let entry = out
            .sessions
            .entry((
                r["user_id"].as_str().unwrap().to_string(),
                r["window_start_ms"].as_i64().unwrap(),
                r["window_end_ms"].as_i64().unwrap(),
            ))
            .or_default();
        entry.0 += r["agg_events"].as_u64().unwrap();
        entry.1 += r["agg_duration_ms_sum"].as_f64().unwrap() as i64;
    }
    out
}

fn run(seed: u64, emit_every: usize) -> (Expected, Expected, u64) {
    let config = config::load_with_env(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("strata.toml"),
        |_| None,
    )
    .unwrap();
    let source = config.sources.values().next().unwrap();
    let lateness = source.allowed_lateness.as_i64();
    let decoder = source.decoder();
    let stream = ClickstreamConfig {
        seed,
        events: 12_000,
        users: 300,
        partitions: PARTITIONS as u32,
        start_ms: 1_795_341_600_000,
        step_ms: 250,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 20_000,
        late_fraction: 0.05,
        late_by_ms: 4 * 60_000,
        ..ClickstreamConfig::default()
    };
    let records: Vec<_> = Clickstream::new(stream).collect();
    let expected = expected::compute(&records, Some(lateness));
    let mut states: Vec<PartitionState> = (0..PARTITIONS)
        .map(|p| PartitionState::new(p, lateness, &config.metrics, Checkpoint::fresh(0)))
        .collect();
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let mut table = Table::default();
    let mut late = 0u64;
    let emit = |state: &mut PartitionState, table: &mut Table| {
        let mut rows = SpeedTables::new(1_795_406_400);
        state.emit(&mut rows);
        for rows in rows.tables() {
            for row in rows.parsed() {
                table.upsert(rows.metric(), row);
            }
        }
    };
    for (i, r) in records.iter().enumerate() {
        let p = r.partition as usize;
        let offset = offsets[p];
        offsets[p] += 1;
        match decoder.decode(&r.payload) {
            Ok(event) => late += u64::from(states[p].apply(offset, &event).late),
            Err(_) => states[p].skip(offset),
        }
        if i % emit_every == emit_every - 1 {
            emit(&mut states[p], &mut table);
        }
    }
    for state in &mut states {
        emit(state, &mut table);
    }
    (view(&table), expected, late)
}

fn assert_same(actual: &Expected, expected: &Expected, what: &str) {
    assert_eq!(actual.counted, expected.counted, "{what}: events counted");
    assert_eq!(
        actual.per_minute, expected.per_minute,
        "{what}: page_views_per_minute"
    );
    assert_eq!(
        actual.active_users, expected.active_users,
        "{what}: active_users_5m"
    );
    assert_eq!(actual.sessions, expected.sessions, "{what}: user_sessions");
}

#[test]
fn operator_equals_independent_aggregates_with_late_events() {
    for (seed, emit_every) in [(1, 97), (2, 500), (3, 3_001)] {
        let (actual, expected, late) = run(seed, emit_every);
        assert!(late > 100, "the stream must exercise lateness: {late} late");
        assert!(expected.active_users.len() > 100);
        assert!(expected.sessions.len() > 100);
        assert_same(
            &actual,
            &expected,
            &format!("seed {seed}, emit every {emit_every}"),
        );
    }
}
