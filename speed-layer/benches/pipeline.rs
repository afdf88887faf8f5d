//! Speed-layer benchmarks (a plain binary that prints figures; run with
//! `cargo bench -p strata-speed --bench pipeline`):
//!
//! 1. core throughput on one core: pre-encoded JSON events from memory
//!    through decode → filter → windows → aggregates for the reference
//!    pipeline, next to the decode-only rate, and per metric. Changed
//!    windows are emitted as rows every `speed.emit_interval` of wall-clock
//!    time, as `strata speed` does (the rows are built, not sent);
//! 2. memory: heap bytes of state per open (window, group key) for a metric
//!    with count/sum/min/max, counted by a global allocator wrapper, with
//!    and without the key dictionary.

use std::alloc::System;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts heap allocations, so state size is measured exactly rather than
/// read from the resident set (where reused freed memory hides growth).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

use strata_schemas::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::config::{self, Config};
use strata_speed::state::{Checkpoint, PartitionState};

fn reference() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).expect("reference config")
}

fn events(n: u64) -> Vec<(i32, Vec<u8>)> {
    Clickstream::new(ClickstreamConfig {
        events: n,
        users: 10_000,
        step_ms: 5,
        ..ClickstreamConfig::default()
    })
    .map(|r| (r.partition, r.payload))
    .collect()
}

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

struct PipelineRun {
    events_per_s: f64,
    emits: usize,
    rows: usize,
    /// Share of the run spent building rows (emission).
    emit_share: f64,
}

fn run_pipeline(
    config: &Config,
    metrics: &[Arc<strata_schemas::MetricDef>],
    input: &[(i32, Vec<u8>)],
) -> PipelineRun {
    let source = config.sources.values().next().unwrap();
    let decoder = source.decoder();
    let emit_interval = Duration::from_millis(config.speed.emit_interval.0);
    let mut partitions: Vec<PartitionState> = (0..4)
        .map(|p| {
            PartitionState::new(
                p,
                source.allowed_lateness.as_i64(),
                metrics,
                Checkpoint::fresh(0),
            )
        })
        .collect();
    let mut offsets = [0i64; 4];
    let started = Instant::now();
    let mut last_emit = started;
    let (mut rows, mut emits) = (0usize, 0usize);
    let mut emitting = Duration::ZERO;
    let mut emit_all = |partitions: &mut Vec<PartitionState>| {
        let emit_started = Instant::now();
        for state in partitions.iter_mut() {
            rows += std::hint::black_box(state.emit("2026-11-23 04:00:00")).row_count();
        }
        emits += 1;
        emitting += emit_started.elapsed();
    };
    for (i, (p, payload)) in input.iter().enumerate() {
        let p = *p as usize;
        let event = decoder.decode(payload).unwrap();
        partitions[p].apply(offsets[p], &event);
        offsets[p] += 1;
        // Checking the clock every 1024 events, as the speed layer's poll
        // loop does between batches of records.
        if i % 1024 == 1023 && last_emit.elapsed() >= emit_interval {
            emit_all(&mut partitions);
            last_emit = Instant::now();
        }
    }
    // The last interval's changes are written too.
    emit_all(&mut partitions);
    let elapsed = started.elapsed();
    PipelineRun {
        events_per_s: input.len() as f64 / elapsed.as_secs_f64(),
        emits,
        rows,
        emit_share: emitting.as_secs_f64() / elapsed.as_secs_f64(),
    }
}

/// Heap bytes held by what `build` returns (allocations minus frees while
/// it ran; its inputs are built beforehand).
fn heap_bytes_of<T>(build: impl FnOnce() -> T) -> (T, i64) {
    let region = Region::new(ALLOCATOR);
    let value = build();
    let change = region.change();
    // `bytes_allocated`/`bytes_deallocated` already include the growth and
    // shrinkage of reallocations.
    let bytes = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    (value, bytes)
}

fn main() {
    // `cargo bench` passes --bench; test runners that list or smoke-run
    // every target (cargo test --all-targets, nextest) do not.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let config = reference();
    let n = 500_000;
    println!("generating {n} events ...");
    let input = events(n);
    let bytes: usize = input.iter().map(|(_, p)| p.len()).sum();
    println!(
        "{n} events, {:.1} MB of JSON, avg {} B/event",
        bytes as f64 / 1e6,
        bytes / n as usize
    );

    // Decode-only and full-pipeline passes alternate, and the ratio is taken
    // per pair: this VM's speed drifts by ±20 % over seconds, which would
    // skew a ratio of figures measured far apart.
    let decoder = config.sources.values().next().unwrap().decoder();
    let decode_pass = || {
        let started = Instant::now();
        for (_, payload) in &input {
            std::hint::black_box(decoder.decode(payload).unwrap());
        }
        rate(input.len(), started)
    };
    let all = config.metrics.clone();
    // STRATA_BENCH_ONLY=full runs the full pipeline alone: a clean profile.
    if std::env::var("STRATA_BENCH_ONLY").as_deref() == Ok("full") {
        for _ in 0..5 {
            let full = run_pipeline(&config, &all, &input);
            println!("full pipeline: {:.0} events/s", full.events_per_s);
        }
        return;
    }
    let rounds = 5;
    let mut pairs: Vec<(f64, PipelineRun)> = (0..rounds)
        .map(|_| (decode_pass(), run_pipeline(&config, &all, &input)))
        .collect();
    pairs.sort_by(|a, b| (a.1.events_per_s / a.0).total_cmp(&(b.1.events_per_s / b.0)));
    let ratios: Vec<String> = pairs
        .iter()
        .map(|(d, f)| format!("{:.2}", f.events_per_s / d))
        .collect();
    let (decode, full) = &pairs[rounds / 2];
    println!("decode only:                          {decode:>10.0} events/s");
    println!(
        "full pipeline (3 reference metrics):  {:>10.0} events/s  = {:.2} x decode-only  ({} emits, {} rows, {:.0} % of the time building rows)",
        full.events_per_s,
        full.events_per_s / decode,
        full.emits,
        full.rows,
        full.emit_share * 100.0
    );
    println!(
        "  (median of {rounds} alternating decode/full pairs; ratios {})",
        ratios.join(" ")
    );
    let best_of = |metrics: &[Arc<strata_schemas::MetricDef>]| {
        (0..3)
            .map(|_| run_pipeline(&config, metrics, &input))
            .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))
            .unwrap()
    };
    for metric in &config.metrics {
        let one = best_of(std::slice::from_ref(metric));
        println!(
            "  {:<35} {:>10.0} events/s  ({} rows, {:.0} % building rows)",
            format!("{} ({})", metric.name, metric.window.name()),
            one.events_per_s,
            one.rows,
            one.emit_share * 100.0
        );
    }

    // Memory per open (window, key) with count/sum/min/max.
    let text = format!(
        r#"
[contracts]
dir = {:?}
[sources.s]
topic = "t"
contract = "page_view"
event_time_field = "event_time"
allowed_lateness = "1d"
[metrics.m]
source = "s"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["user_id"]
aggregations = [
  {{ name = "n", function = "count" }},
  {{ name = "s", function = "sum", field = "duration_ms" }},
  {{ name = "lo", function = "min", field = "duration_ms" }},
  {{ name = "hi", function = "max", field = "duration_ms" }},
]
"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/contracts")
            .display()
            .to_string()
    );
    let mem_config =
        config::parse(&text, "bench.toml", Path::new("."), |_| None).expect("bench config");
    let source = mem_config.sources.values().next().unwrap();
    let decoder = source.decoder();
    let event = |minute: i64, user: i64| {
        let payload = format!(
            r#"{{"event_time":{},"user_id":"u{user}","page":"/p","country":"DE","duration_ms":{}}}"#,
            1_795_341_600_000 + minute * 60_000,
            user % 1000
        );
        decoder.decode(payload.as_bytes()).unwrap()
    };
    let states = 1_000_000usize;
    // (a) every state its own key (1,000,000 users in one window): the
    //     worst case, the key dictionary grows with the state;
    // (b) 1,000 users in each of 1,000 open one-minute windows: keys shared.
    for (label, minutes, users) in [
        ("1,000,000 keys x 1 window  ", 1i64, 1_000_000i64),
        ("1,000 keys x 1,000 windows", 1000, 1000),
    ] {
        let events: Vec<_> = (0..minutes)
            .flat_map(|m| (0..users).map(move |u| (m, u)))
            .map(|(m, u)| event(m, u))
            .collect();
        let (state, bytes) = heap_bytes_of(|| {
            let mut state = PartitionState::new(
                0,
                source.allowed_lateness.as_i64(),
                &mem_config.metrics,
                Checkpoint::fresh(0),
            );
            for (offset, event) in events.iter().enumerate() {
                state.apply(offset as i64, event);
            }
            state
        });
        assert_eq!(state.open_windows(), states);
        println!(
            "state per open (window, key), count/sum/min/max, {label}: {:>5.1} B  ({:.1} MB for {states} states, key dictionary included)",
            bytes as f64 / states as f64,
            bytes as f64 / 1e6,
        );
        std::hint::black_box(&state);
    }
}
