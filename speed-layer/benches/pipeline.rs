//! Speed-layer benchmarks (a plain binary that prints figures; run with
//! `cargo bench -p strata-speed --bench pipeline`):
//!
//! 1. core throughput on one core: pre-encoded JSON events from memory
//!    through decode → filter → windows → aggregates for the reference
//!    pipeline, next to the decode-only rate, and per metric. Changed
//!    windows are emitted as rows every `speed.emit_interval` of wall-clock
//!    time, as `strata speed` does (the rows are built, not sent);
//!    The contract decoder's rate is printed next to the fastest general
//!    JSON decoders' (sonic-rs, simd-json, serde_json with borrowed fields)
//!    decoding the same contract in the same run (`support/json_peers.rs`),
//!    and next to Strata's Avro decoder reading the same events as
//!    Confluent-framed Avro; the full pipeline runs once more over the
//!    Avro events. Every pass decodes through `Box<dyn EventDecoder>`, as
//!    `strata speed` does;
//! 2. memory: heap bytes of state per open (window, group key) for a metric
//!    with count/sum/min/max, counted by a global allocator wrapper, with
//!    and without the key dictionary.

use std::alloc::System;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/json_peers.rs"]
mod json_peers;

/// Counts heap allocations, so state size is measured exactly rather than
/// read from the resident set (where reused freed memory hides growth).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::MetricDef;
use strata_schemas::config::{self, Config};
use strata_schemas::decode::{Event, EventDecoder};
use strata_speed::operator::{Checkpoint, PartitionState};
use strata_speed::sink::SpeedTables;

fn reference() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).expect("reference config")
}

/// The bench's events, as JSON or (`avro_schema_id`) as Avro: the same
/// events either way.
fn events(n: u64, avro_schema_id: Option<u32>) -> Vec<(i32, Vec<u8>)> {
    Clickstream::new(ClickstreamConfig {
        events: n,
        users: 10_000,
        step_ms: 5,
        avro_schema_id,
        ..ClickstreamConfig::default()
    })
    .map(|r| (r.partition, r.payload))
    .collect()
}

/// The reference source as Avro, its writer schema (the generator's) in an
/// in-memory registry: (decoders, the Avro source, the schema id). The
/// first record makes one registry lookup; every other one hits the cache.
fn avro_setup(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> (
    strata_registry::Decoders,
    strata_schemas::Source,
    u32,
    strata_registry::local::RunningRegistry,
) {
    let registry = strata_registry::LocalRegistry::new();
    let running = runtime
        .block_on(registry.start(([127, 0, 0, 1], 0).into()))
        .expect("in-memory registry");
    let id = registry
        .register(
            "bench-value",
            strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA,
        )
        .expect("register");
    let json = config.sources.values().next().unwrap();
    let source = strata_schemas::Source {
        format: strata_schemas::config::SourceFormat::Avro(
            strata_schemas::config::SchemaRegistry {
                url: running.url(),
                subject: "bench-value".into(),
                basic_auth: None,
                timeout: strata_schemas::DurationMs(2_000),
                retry_after: strata_schemas::DurationMs(5_000),
            },
        ),
        ..(**json).clone()
    };
    (
        strata_registry::Decoders::new(runtime.handle().clone()),
        source,
        id,
        running,
    )
}

struct PipelineRun {
    events_per_s: f64,
    /// With a decode-only twin: its rate, measured in slices alternating
    /// with the pipeline's.
    decode_per_s: Option<f64>,
    emits: usize,
    rows: usize,
    /// Share of the run spent building rows (emission).
    emit_share: f64,
}

/// Runs the pipeline over `input`. With `decode_twin` (a copy of the input
/// in other memory, so neither pass warms the other's cache), every slice
/// of 1,024 records is preceded by a decode-only pass over the twin's same
/// slice, timed apart: the two rates are then measured over the same
/// seconds, and the drift of this VM's speed (±20 % over a few seconds)
/// cancels out of their ratio.
fn run_pipeline(
    config: &Config,
    metrics: &[Arc<MetricDef>],
    input: &[(i32, Vec<u8>)],
    decode_twin: Option<&[(i32, Vec<u8>)]>,
    decoder: &mut dyn EventDecoder,
) -> PipelineRun {
    const SLICE: usize = 1024;
    let source = config.sources.values().next().unwrap();
    let emit_interval = Duration::from_millis(config.speed.emit_interval.0);
    // STRATA_BENCH_EMIT_EVERY=<events>: emit after that many events instead,
    // so a run under a slow profiler emits as often as a real one.
    let emit_every = std::env::var("STRATA_BENCH_EMIT_EVERY").ok().map(|v| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n >= SLICE)
            .unwrap_or_else(|| {
                panic!("STRATA_BENCH_EMIT_EVERY={v}: expected a number of events >= {SLICE}")
            })
    });
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
    let mut event = Event::default();
    let mut scratch = Event::default();
    // Pipeline time only (decode-only slices excluded), which also decides
    // when `emit_interval` has passed.
    let mut pipeline = Duration::ZERO;
    let mut decoding = Duration::ZERO;
    let mut since_emit = Duration::ZERO;
    let (mut rows, mut emits) = (0usize, 0usize);
    let mut emitting = Duration::ZERO;
    let mut emit_all = |partitions: &mut Vec<PartitionState>| {
        let emit_started = Instant::now();
        // One sink for every partition, as a flush of `strata speed` does.
        let mut tables = SpeedTables::new(1_795_406_400);
        for state in partitions.iter_mut() {
            std::hint::black_box(state.emit(&mut tables));
        }
        rows += std::hint::black_box(tables).row_count();
        emits += 1;
        let took = emit_started.elapsed();
        emitting += took;
        took
    };
    for (i, slice) in input.chunks(SLICE).enumerate() {
        if let Some(twin) = decode_twin {
            let started = Instant::now();
            for (_, payload) in &twin[i * SLICE..(i * SLICE + slice.len())] {
                decoder.decode_event(payload, &mut scratch).unwrap();
                std::hint::black_box(&scratch);
            }
            decoding += started.elapsed();
        }
        let started = Instant::now();
        for (p, payload) in slice {
            let p = *p as usize;
            // One reused event, as `strata speed` decodes.
            decoder.decode_event(payload, &mut event).unwrap();
            partitions[p].apply(offsets[p], &event);
            offsets[p] += 1;
        }
        let mut took = started.elapsed();
        since_emit += took;
        // The clock is checked between slices, as the speed layer's poll
        // loop does between batches of records.
        let due = match emit_every {
            Some(every) => (i + 1) * SLICE % every < SLICE,
            None => since_emit >= emit_interval,
        };
        if due {
            took += emit_all(&mut partitions);
            since_emit = Duration::ZERO;
        }
        pipeline += took;
    }
    // The last interval's changes are written too.
    pipeline += emit_all(&mut partitions);
    PipelineRun {
        events_per_s: input.len() as f64 / pipeline.as_secs_f64(),
        decode_per_s: decode_twin.map(|_| input.len() as f64 / decoding.as_secs_f64()),
        emits,
        rows,
        emit_share: emitting.as_secs_f64() / pipeline.as_secs_f64(),
    }
}

/// Decodes a slice of payloads; returns (events decoded, sum of their event
/// times): the sum shows every decoder read the same values.
type DecodeSlice = Box<dyn FnMut(&[(i32, Vec<u8>)]) -> (usize, i64)>;

/// One JSON decoder of the side-by-side table.
struct DecoderRun {
    name: &'static str,
    run: DecodeSlice,
    elapsed: Duration,
    decoded: usize,
    time_sum: i64,
}

/// Rates of the contract decoder and the reference decoders over the same
/// input: slices of 1,024 records go through every decoder in turn
/// (starting with a different one each slice), so all are measured over
/// the same seconds of this VM's drifting speed. Best of `rounds`.
fn decoder_rates(
    config: &Config,
    input: &[(i32, Vec<u8>)],
    avro: (
        &strata_registry::Decoders,
        &strata_schemas::Source,
        &[(i32, Vec<u8>)],
    ),
    rounds: usize,
) -> Vec<(String, f64)> {
    let decoder = config.sources.values().next().unwrap().decoder();
    let mut best: Vec<(String, f64)> = Vec::new();
    for _ in 0..rounds {
        let strata = decoder.clone();
        let mut event = Event::default();
        let mut avro_event = Event::default();
        let mut avro_decoder = avro.0.decoder(avro.1);
        // The Avro twin of each slice: slices come in order.
        let avro_input: Vec<(i32, Vec<u8>)> = avro.2.to_vec();
        let mut avro_at = 0;
        let mut simd = json_peers::SimdJson::new();
        let mut runs = vec![
            DecoderRun {
                name: "strata contract decoder (every rule checked)",
                run: Box::new(move |slice| {
                    count_decoded(slice, |payload| {
                        strata.decode_into(payload, &mut event).ok()?;
                        Some(std::hint::black_box(&event).time_ms)
                    })
                }),
                elapsed: Duration::ZERO,
                decoded: 0,
                time_sum: 0,
            },
            DecoderRun {
                name: "strata Avro decoder, same events (every rule)",
                run: Box::new(move |slice| {
                    let twin = &avro_input[avro_at..avro_at + slice.len()];
                    avro_at += slice.len();
                    count_decoded(twin, |payload| {
                        avro_decoder.decode_event(payload, &mut avro_event).ok()?;
                        Some(std::hint::black_box(&avro_event).time_ms)
                    })
                }),
                elapsed: Duration::ZERO,
                decoded: 0,
                time_sum: 0,
            },
            DecoderRun {
                name: "serde_json, borrowed &str + RawValue",
                run: Box::new(|slice| peer_pass(slice, json_peers::serde_json_raw)),
                elapsed: Duration::ZERO,
                decoded: 0,
                time_sum: 0,
            },
            DecoderRun {
                name: "sonic-rs, borrowed &str",
                run: Box::new(|slice| peer_pass(slice, json_peers::sonic_rs)),
                elapsed: Duration::ZERO,
                decoded: 0,
                time_sum: 0,
            },
            DecoderRun {
                name: "simd-json, borrowed &str (copy + parse in place)",
                run: Box::new(move |slice| {
                    count_decoded(slice, |payload| {
                        Some(std::hint::black_box(&simd.decode(payload)?).time_ms)
                    })
                }),
                elapsed: Duration::ZERO,
                decoded: 0,
                time_sum: 0,
            },
        ];
        let count = runs.len();
        for (i, slice) in input.chunks(1024).enumerate() {
            for k in 0..count {
                let run = &mut runs[(i + k) % count];
                let started = Instant::now();
                let (n, sum) = (run.run)(slice);
                run.elapsed += started.elapsed();
                run.decoded += n;
                run.time_sum = run.time_sum.wrapping_add(sum);
            }
        }
        let reference = (runs[0].decoded, runs[0].time_sum);
        for run in &runs {
            assert_eq!(
                (run.decoded, run.time_sum),
                reference,
                "{} decoded other events or times than the contract decoder",
                run.name
            );
        }
        for (i, run) in runs.iter().enumerate() {
            let rate = input.len() as f64 / run.elapsed.as_secs_f64();
            match best.get_mut(i) {
                Some(b) => b.1 = b.1.max(rate),
                None => best.push((run.name.to_string(), rate)),
            }
        }
    }
    best
}

/// Runs `decode` (payload → event time, `None` when refused) over a slice:
/// (events decoded, sum of their event times).
fn count_decoded(
    slice: &[(i32, Vec<u8>)],
    mut decode: impl FnMut(&[u8]) -> Option<i64>,
) -> (usize, i64) {
    let (mut n, mut sum) = (0, 0i64);
    for (_, payload) in slice {
        if let Some(time_ms) = decode(payload) {
            n += 1;
            sum = sum.wrapping_add(time_ms);
        }
    }
    (n, sum)
}

fn peer_pass(
    slice: &[(i32, Vec<u8>)],
    decode: for<'a> fn(&'a [u8]) -> Option<json_peers::PageView<'a>>,
) -> (usize, i64) {
    count_decoded(slice, |payload| {
        Some(std::hint::black_box(&decode(payload)?).time_ms)
    })
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
    // STRATA_BENCH_PIPELINE_EVENTS (every mode) and, in the profile modes,
    // STRATA_BENCH_PIPELINE_ROUNDS shrink a run for slow profilers such as
    // cachegrind.
    let knob = |name: &str, default: u64| {
        std::env::var(name).map_or(default, |v| {
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("{name}={v}: expected a whole number above 0"))
        })
    };
    let n = knob("STRATA_BENCH_PIPELINE_EVENTS", 500_000);
    println!("generating {n} events ...");
    let input = events(n, None);
    let bytes: usize = input.iter().map(|(_, p)| p.len()).sum();
    println!(
        "{n} events, {:.1} MB of JSON, avg {} B/event",
        bytes as f64 / 1e6,
        bytes / n as usize
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (decoders, avro_source, schema_id, _registry) = avro_setup(&config, &runtime);
    let avro_input = events(n, Some(schema_id));
    let avro_bytes: usize = avro_input.iter().map(|(_, p)| p.len()).sum();
    println!(
        "the same events as Confluent-framed Avro: {:.1} MB, avg {} B/event",
        avro_bytes as f64 / 1e6,
        avro_bytes / n as usize
    );
    let json_source = config.sources.values().next().unwrap().clone();
    // Every pass decodes as `strata speed` does: through the source's
    // `Box<dyn EventDecoder>`.
    let json_decoder = || decoders.decoder(&json_source);

    // Decode-only and full-pipeline slices alternate (see `run_pipeline`),
    // and the ratio is taken per run.
    let twin = input.clone();
    let all = config.metrics.clone();
    // STRATA_BENCH_ONLY=full runs the full pipeline alone, `decode` the
    // same loop with no metric, and a metric's name that metric alone:
    // clean profiles to subtract from each other.
    let only = std::env::var("STRATA_BENCH_ONLY");
    let metric_named = |name: &str| {
        let known: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        all.iter().find(|m| m.name == name).cloned().unwrap_or_else(|| {
            panic!(
                "STRATA_BENCH_ONLY={name}: expected full, decode, decoders, ratio, ratio:<metric> or a metric of strata.toml ({})",
                known.join(", ")
            )
        })
    };
    // STRATA_BENCH_ONLY=ratio:<metric name>: that metric's paired ratio and
    // own cost alone, for A/B runs of a change to one metric.
    if let Some(name) = only.as_deref().ok().and_then(|o| o.strip_prefix("ratio:")) {
        let metric = &metric_named(name);
        let mut runs: Vec<(f64, f64)> = (0..5)
            .map(|_| {
                let run = run_pipeline(
                    &config,
                    std::slice::from_ref(metric),
                    &input,
                    Some(&twin),
                    &mut *json_decoder(),
                );
                let decode = run.decode_per_s.expect("measured");
                (
                    run.events_per_s / decode,
                    1e6 / run.events_per_s - 1e6 / decode,
                )
            })
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, own_us) = runs[2];
        println!("{name}: {ratio:.3} x decode-only, +{own_us:.3} us/event (median of 5)");
        return;
    }
    let profiled = match only.as_deref() {
        Ok("full") => Some(all.clone()),
        Ok("decode") => Some(Vec::new()),
        Ok("ratio") | Ok("decoders") | Err(_) => None,
        Ok(name) => Some(vec![metric_named(name)]),
    };
    if let Some(metrics) = profiled {
        let mode = only.as_deref().unwrap_or_default();
        for _ in 0..knob("STRATA_BENCH_PIPELINE_ROUNDS", 5) {
            let run = run_pipeline(&config, &metrics, &input, None, &mut *json_decoder());
            println!("{mode}: {:.0} events/s", run.events_per_s);
        }
        return;
    }
    // The JSON decoders side by side (STRATA_BENCH_ONLY=decoders: this
    // table alone).
    if only.as_deref() != Ok("ratio") {
        println!(
            "JSON decoders, page_view contract, one core (best of 3 rounds, slices interleaved):"
        );
        let avro = (&decoders, &avro_source, &avro_input[..]);
        for (name, rate) in decoder_rates(&config, &input, avro, 3) {
            println!("  {name:<50} {rate:>10.0} events/s");
        }
    }
    if only.as_deref() == Ok("decoders") {
        return;
    }
    let rounds = 5;
    let mut runs: Vec<PipelineRun> = (0..rounds)
        .map(|_| run_pipeline(&config, &all, &input, Some(&twin), &mut *json_decoder()))
        .collect();
    runs.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let rates: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2}", r.events_per_s / 1e6))
        .collect();
    let full = &runs[rounds / 2];
    let decode = full.decode_per_s.expect("measured");
    println!(
        "full pipeline (3 reference metrics):  {:>10.0} events/s per core  ({} emits, {} rows, {:.0} % of the time building rows)",
        full.events_per_s,
        full.emits,
        full.rows,
        full.emit_share * 100.0
    );
    println!("  decoding alone, same seconds:       {decode:>10.0} events/s");
    println!(
        "  (median of {rounds} runs, each timing decode-only and full slices of 1,024 records alternately; full rates {} M/s)",
        rates.join(" ")
    );
    // The same pipeline over the same events as Avro.
    let avro_twin = avro_input.clone();
    let mut avro_runs: Vec<PipelineRun> = (0..rounds)
        .map(|_| {
            run_pipeline(
                &config,
                &all,
                &avro_input,
                Some(&avro_twin),
                &mut *decoders.decoder(&avro_source),
            )
        })
        .collect();
    avro_runs.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let avro_full = &avro_runs[rounds / 2];
    println!(
        "full pipeline, the same events as Avro: {:>10.0} events/s per core (decoding alone {:.0}; median of {rounds})",
        avro_full.events_per_s,
        avro_full.decode_per_s.expect("measured")
    );
    // STRATA_BENCH_ONLY=ratio stops here: quick A/B runs of a change.
    if only.as_deref() == Ok("ratio") {
        return;
    }
    // Each metric alone, best of 3 runs, next to decode-only slices of the
    // same run: its rate (compared with Flink's per-metric figures) and its
    // own cost per event on top of decoding, the part a change to that
    // metric's code moves.
    let best_of = |metrics: &[Arc<MetricDef>]| {
        (0..3)
            .map(|_| run_pipeline(&config, metrics, &input, Some(&twin), &mut *json_decoder()))
            .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))
            .unwrap()
    };
    for metric in &config.metrics {
        let one = best_of(std::slice::from_ref(metric));
        let decode = one.decode_per_s.expect("measured");
        println!(
            "  {:<35} {:>10.0} events/s  (+{:.3} us/event over decoding's {:.3}; {} rows, {:.0} % building rows)",
            format!("{} ({})", metric.name, metric.window.name()),
            one.events_per_s,
            1e6 / one.events_per_s - 1e6 / decode,
            1e6 / decode,
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
{aggregations}
[metrics.sessions]
source = "s"
window = {{ kind = "session", gap = "30m" }}
group_by = ["user_id"]
{aggregations}
"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/contracts")
            .display()
            .to_string(),
        aggregations = r#"aggregations = [
  { name = "n", function = "count" },
  { name = "s", function = "sum", field = "duration_ms" },
  { name = "lo", function = "min", field = "duration_ms" },
  { name = "hi", function = "max", field = "duration_ms" },
]"#
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
    let metric_named = |name: &str| {
        mem_config
            .metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .expect("a bench metric")
    };
    let (fixed, sessions) = (metric_named("m"), metric_named("sessions"));
    let state_of = |metric: &Arc<MetricDef>, events: &[Event]| {
        heap_bytes_of(|| {
            let mut state = PartitionState::new(
                0,
                source.allowed_lateness.as_i64(),
                std::slice::from_ref(metric),
                Checkpoint::fresh(0),
            );
            for (offset, event) in events.iter().enumerate() {
                state.apply(offset as i64, event);
            }
            state
        })
    };
    let states = 1_000_000usize;
    // (a) every state its own key (1,000,000 users in one window): the
    //     worst case, the key dictionary grows with the state;
    // (b) 1,000 users in each of 1,000 open one-minute windows: keys shared;
    // (c) a session metric with the same aggregations, one open session per
    //     user, as it holds them (the set, and the 64-byte cache line of
    //     each key's newest session).
    let dictionary = "key dictionary included";
    for (what, metric, minutes, users, included) in [
        (
            "open (window, key), count/sum/min/max, 1,000,000 keys x 1 window  ",
            &fixed,
            1i64,
            1_000_000i64,
            dictionary,
        ),
        (
            "open (window, key), count/sum/min/max, 1,000 keys x 1,000 windows",
            &fixed,
            1000,
            1000,
            dictionary,
        ),
        (
            "open session, count/sum/min/max, 1,000,000 users                  ",
            &sessions,
            1,
            1_000_000,
            "key dictionary and the 64 B newest-session cache line included",
        ),
    ] {
        let events: Vec<_> = (0..minutes)
            .flat_map(|m| (0..users).map(move |u| (m, u)))
            .map(|(m, u)| event(m, u))
            .collect();
        let (state, bytes) = state_of(metric, &events);
        assert_eq!(state.open_windows(), states);
        println!(
            "state per {what}: {:>5.1} B  ({:.1} MB for {states} states, {included})",
            bytes as f64 / states as f64,
            bytes as f64 / 1e6,
        );
        std::hint::black_box(&state);
    }
}
