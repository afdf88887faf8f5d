//! The effectively-once invariant without any server: a partition processed
//! with crashes at arbitrary points, each time restarting from the last
//! checkpoint written, leaves exactly the rows an uninterrupted run leaves,
//! once both are read the way ClickHouse's `ReplacingMergeTree ... FINAL`
//! reads them (highest version per key, last write on a tie).

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::Value as Json;
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::Event;
use strata_schemas::config::{self, Config};
use strata_speed::operator::{Checkpoint, PartitionState};
use strata_speed::sink::SpeedTables;

/// The `updated_at` stamp of every emission (not part of a row's identity).
const STAMP: u32 = 1_795_406_400; // 2026-11-23 04:00:00 UTC

fn reference() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).unwrap()
}

/// ReplacingMergeTree(version) read with FINAL.
#[derive(Default, Debug, PartialEq)]
struct Table(BTreeMap<String, (u64, serde_json::Map<String, Json>)>);

impl Table {
    fn upsert(&mut self, metric: &str, row: serde_json::Map<String, Json>) {
        let mut key_row = row.clone();
        for k in [
            "version",
            "is_final",
            "retracted",
            "window_end_ms",
            "first_offset",
            "last_offset",
            "updated_at",
        ] {
            key_row.remove(k);
        }
        key_row.retain(|k, _| !k.starts_with("agg_"));
        let key = format!("{metric}:{}", Json::Object(key_row));
        let version = row["version"].as_u64().unwrap();
        match self.0.get(&key) {
            Some((v, _)) if *v > version => {}
            _ => {
                self.0.insert(key, (version, row));
            }
        }
    }

    /// Live rows (not retracted). A window still open at the end keeps the
    /// version of the last emission that changed its key, and which emission
    /// that was depends on where the crashes fell; its content does not. Final
    /// rows must match in full, version included.
    fn live(&self) -> BTreeMap<String, serde_json::Map<String, Json>> {
        self.0
            .iter()
            .filter(|(_, (_, r))| r.get("retracted").and_then(Json::as_u64) != Some(1))
            .map(|(k, (_, r))| {
                let mut r = r.clone();
                if r.get("is_final").and_then(Json::as_u64) == Some(0) {
                    r.remove("version");
                    r.remove("last_offset");
                }
                (k.clone(), r)
            })
            .collect()
    }
}

fn records(seed: u64) -> Vec<Option<Event>> {
    let config = reference();
    let decoder = config.sources.values().next().unwrap().decoder();
    Clickstream::new(ClickstreamConfig {
        seed,
        events: 3_000,
        users: 60,
        partitions: 1,
        step_ms: 2_000,
        out_of_order_fraction: 0.3,
        max_disorder_ms: 40_000,
        late_fraction: 0.03,
        invalid_fraction: 0.02,
        ..ClickstreamConfig::default()
    })
    .map(|r| decoder.decode(&r.payload).ok())
    .collect()
}

/// Emits `state`, upserting its rows into `table`; returns the checkpoint
/// the rows make valid.
fn emit(state: &mut PartitionState, table: &mut Table) -> Checkpoint {
    let mut rows = SpeedTables::new(STAMP);
    let emission = state.emit(&mut rows);
    for rows in rows.tables() {
        for row in rows.parsed() {
            table.upsert(rows.metric(), row);
        }
    }
    emission.checkpoint
}

/// Runs the partition from `checkpoint`, emitting every `every` records,
/// stopping (crashing) after `crash_after` records if given. Returns the
/// last checkpoint whose rows were all written.
fn run(
    config: &Config,
    metrics: &[std::sync::Arc<strata_schemas::MetricDef>],
    input: &[Option<Event>],
    table: &mut Table,
    checkpoint: Checkpoint,
    every: usize,
    crash_after: Option<usize>,
) -> (Checkpoint, bool) {
    let source = config.sources.values().next().unwrap();
    let mut state = PartitionState::new(0, source.allowed_lateness.as_i64(), metrics, checkpoint);
    let mut last = checkpoint;
    let mut processed = 0;
    for (offset, record) in input
        .iter()
        .enumerate()
        .skip(checkpoint.next_offset as usize)
    {
        let offset = offset as i64;
        if state.is_duplicate(offset) {
            continue;
        }
        match record {
            Some(event) => {
                state.apply(offset, event);
            }
            None => state.skip(offset),
        }
        processed += 1;
        if crash_after == Some(processed) {
            return (last, false);
        }
        if processed % every == 0 {
            last = emit(&mut state, table);
        }
    }
    (emit(&mut state, table), true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn crashes_at_any_point_leave_the_uninterrupted_result(
        seed in 0u64..1_000,
        every in 20usize..200,
        crashes in proptest::collection::vec(1usize..900, 1..6),
    ) {
        let config = reference();
        let input = records(seed);
        // Each metric alone (so fixed windows' checkpoints advance instead of
        // being held back by long sessions), then all together.
        let mut sets: Vec<Vec<_>> = config.metrics.iter().map(|m| vec![m.clone()]).collect();
        sets.push(config.metrics.clone());
        for metrics in &sets {
            let mut clean = Table::default();
            run(&config, metrics, &input, &mut clean, Checkpoint::fresh(0), every, None);

            let mut crashed = Table::default();
            let mut checkpoint = Checkpoint::fresh(0);
            let mut advanced = false;
            for crash in &crashes {
                let (ck, finished) = run(&config, metrics, &input, &mut crashed, checkpoint, every, Some(*crash));
                advanced |= ck.next_offset > 0;
                checkpoint = ck;
                if finished {
                    break;
                }
            }
            run(&config, metrics, &input, &mut crashed, checkpoint, every, None);
            prop_assert!(clean.live().len() > 20);
            prop_assert_eq!(crashed.live(), clean.live(), "metrics {:?}", metrics.iter().map(|m| &m.name).collect::<Vec<_>>());
            // The first minute is final once the partition's max event time
            // passed its end plus the 30 s lateness and the 40 s disorder:
            // after some 66 records of 2 s. An emit after 100 records must
            // have advanced the checkpoint past offset 0.
            // The crash check comes before the emit, so a crash at a multiple
            // of `every` falls before that emit.
            let last_emit_before_crash = (crashes[0] - 1) / every * every;
            if metrics.len() == 1 && metrics[0].name == "page_views_per_minute" && last_emit_before_crash >= 100 {
                prop_assert!(advanced, "checkpoints must advance for tumbling windows");
            }
        }
    }
}
