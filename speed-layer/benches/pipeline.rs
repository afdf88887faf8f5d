//! Speed-layer benchmarks (a plain binary that prints figures; run with
//! `cargo bench -p strata-speed --bench pipeline`):
//!
//! 1. core throughput on one core: pre-encoded JSON events from memory
//!    through decode → filter → windows → aggregates (and emission of the
//!    changed windows every 50,000 events) for the reference pipeline, next
//!    to the decode-only rate, and per metric;
//! 2. memory: bytes of state per open (window, group key) for a metric with
//!    count/sum/min/max, from the process's resident set size.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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

fn run_pipeline(
    config: &Config,
    metrics: &[Arc<strata_schemas::MetricDef>],
    input: &[(i32, Vec<u8>)],
) -> f64 {
    let source = config.sources.values().next().unwrap();
    let decoder = source.decoder();
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
    let mut rows = 0usize;
    for (i, (p, payload)) in input.iter().enumerate() {
        let p = *p as usize;
        let event = decoder.decode(payload).unwrap();
        partitions[p].apply(offsets[p], &event);
        offsets[p] += 1;
        if i % 50_000 == 49_999 {
            for state in &mut partitions {
                rows += state.emit().rows.len();
            }
        }
    }
    std::hint::black_box(rows);
    rate(input.len(), started)
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
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

    let decoder = config.sources.values().next().unwrap().decoder();
    let mut best_decode: f64 = 0.0;
    for _ in 0..3 {
        let started = Instant::now();
        for (_, payload) in &input {
            std::hint::black_box(decoder.decode(payload).unwrap());
        }
        best_decode = best_decode.max(rate(input.len(), started));
    }
    println!("decode only:                          {best_decode:>10.0} events/s");

    let all = config.metrics.clone();
    let mut best_all: f64 = 0.0;
    for _ in 0..3 {
        best_all = best_all.max(run_pipeline(&config, &all, &input));
    }
    println!(
        "full pipeline (3 reference metrics):  {:>10.0} events/s  = {:.2} x decode-only",
        best_all,
        best_all / best_decode
    );
    for metric in &config.metrics {
        let one = vec![metric.clone()];
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            best = best.max(run_pipeline(&config, &one, &input));
        }
        println!(
            "  {:<35} {:>10.0} events/s",
            format!("{} ({})", metric.name, metric.window.name()),
            best
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
    let states = 1_000_000i64;
    let payloads: Vec<Vec<u8>> = (0..states)
        .map(|i| {
            format!(
                r#"{{"event_time":{},"user_id":"u{i}","page":"/p","country":"DE","duration_ms":{}}}"#,
                1_795_341_600_000 + (i % 5) * 1000,
                i % 1000
            )
            .into_bytes()
        })
        .collect();
    let decoded: Vec<_> = payloads
        .iter()
        .map(|p| decoder.decode(p).unwrap())
        .collect();
    drop(payloads);
    let before = rss_bytes();
    let mut state = PartitionState::new(
        0,
        source.allowed_lateness.as_i64(),
        &mem_config.metrics,
        Checkpoint::fresh(0),
    );
    for (offset, event) in decoded.iter().enumerate() {
        state.apply(offset as i64, event);
    }
    let after = rss_bytes();
    assert_eq!(state.open_windows() as i64, states);
    println!(
        "state per open (window, key), count/sum/min/max, key = one user id: {:.0} B  ({} states, RSS +{:.1} MB; includes the interned key)",
        (after - before) as f64 / states as f64,
        states,
        (after - before) as f64 / 1e6
    );
    std::hint::black_box(&state);
}
