//! Batch recompute benchmark: the three reference metrics over an archive
//! of `STRATA_BENCH_EVENTS` (default 10 M) events, written in the archive's
//! own layout, read with Polars and recomputed with the shared aggregates.
//!
//! Every figure comes from a fresh process (this binary re-run with
//! `--strata-child`, or the peers' script), so each peak memory (VmHWM) is
//! that run's own and not the archive writer's or another run's:
//! - Strata, each metric alone: read + recompute of one metric over all
//!   files, the figure comparable to a peer's single query;
//! - Strata, the three metrics concurrently (sharing the pools), as
//!   `strata batch run` recomputes them.
//!
//! With `--peers <python>` it also runs `scripts/bench_peers.py` per
//! (engine, metric) for DuckDB, Polars' lazy engine and chDB over the same
//! files, each engine held to the thread count of Strata's Polars reader,
//! and ends with a table per metric: seconds, result rows, peak RSS, CPU
//! cores used, and Strata's time over the fastest peer's. Every (engine,
//! metric) runs `STRATA_BENCH_ROUNDS` times (default 3), the engines of a
//! metric one after another in each round, and the table gives each one's
//! median run with the range of its times: on a shared or virtual machine
//! one run of a second is noise as much as figure. Row counts (and the sum
//! of each metric's first aggregate) are checked to agree across engines;
//! a difference prints a MISMATCH line and does not fail the run.
//!
//!   scripts/bench-batch.sh   (installs the peers; STRATA_BENCH_EVENTS=1000000 for a quick run)
//!   cargo bench -p strata-batch --bench recompute -- --peers .strata/tools/bench-venv/bin/python
//!
//! Runs only under `cargo bench` (`--bench` argument): `cargo test` skips it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use strata_batch::compute::{EventFrame, FixedRecompute, Recomputed, recompute};
use strata_batch::lake::{Lake, hour_of};
use strata_batch::parquet_file::{self, ArchivedEvent};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::MetricDef;
use strata_schemas::config::{Config, ObjectStoreSection};
use strata_schemas::sketch::DISTINCT_EXACT_LIMIT;

// The strata binary's allocator (src/main.rs): the figures are those of a
// batch worker, whose memory and speed depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The reference metrics of strata.toml, in the order of the table; the
/// peers' script holds the same definitions in SQL and Polars.
const REFERENCE: [&str; 3] = ["page_views_per_minute", "active_users_5m", "user_sessions"];
/// The peers, in the order of the table.
const PEERS: [&str; 3] = ["duckdb", "polars", "chdb"];

fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU seconds (user + system, all threads) this process has used: CPU
/// seconds over wall seconds is the number of cores a phase kept busy.
fn cpu_secs() -> f64 {
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14 and stime 15, in USER_HZ = 100 ticks per second
    // (fixed for user space on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Threads of Polars' pool, which decodes a file's row groups in parallel
/// (polars-io `read_parquet`): `POLARS_MAX_THREADS`, else the cores.
fn polars_threads() -> usize {
    std::env::var("POLARS_MAX_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct Bench {
    repo: PathBuf,
    config: Config,
    events: u64,
    dir: PathBuf,
}

impl Bench {
    fn load() -> Bench {
        let events: u64 = std::env::var("STRATA_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000_000);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let config =
            strata_schemas::config::load_with_env(&repo.join("strata.toml"), |_| None).unwrap();
        let dir = repo.join(format!(".strata/bench/archive-{events}"));
        Bench {
            repo,
            config,
            events,
            dir,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("page_views")
    }

    fn metric(&self, name: &str) -> Arc<MetricDef> {
        self.config
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("strata.toml has no metric {name}"))
            .clone()
    }

    /// The archive's files, sorted.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut stack = vec![self.data_dir()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    }

    /// The archive: 4 partitions, files of up to 500k events per hour.
    fn write_archive(&self) {
        let (dir, events, repo) = (&self.dir, self.events, &self.repo);
        let source = self.config.sources["page_views"].clone();
        let written = Instant::now();
        if dir.join("done").exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(dir);
        let decoder = source.decoder();
        let stream = Clickstream::new(ClickstreamConfig {
            seed: 1,
            events,
            users: 50_000,
            pages: 200,
            countries: 20,
            partitions: 4,
            step_ms: 2, // 10 M events span ~5.5 hours
            out_of_order_fraction: 0.1,
            late_fraction: 0.01,
            cohort_ms: 20 * 60_000,
            ..ClickstreamConfig::default()
        });
        let mut buffers: BTreeMap<(i32, i64), Vec<ArchivedEvent>> = BTreeMap::new();
        let mut offsets = [0i64; 4];
        let mut n = 0;
        // The archive's own names: a file per flush of one partition's hour.
        let lake = Lake::open(
            &ObjectStoreSection {
                url: format!("file://{}", dir.display()),
                endpoint: None,
                region: None,
            },
            repo,
        )
        .unwrap();
        let flush = |key: (i32, i64), rows: Vec<ArchivedEvent>, n: &mut u32| {
            let refs: Vec<&ArchivedEvent> = rows.iter().collect();
            let bytes = parquet_file::encode(&source.contract, "page_views", key.0, &refs).unwrap();
            let (first, last) = (rows[0].offset, rows[rows.len() - 1].offset);
            let name = lake.data_path(&source.name, key.1, "page_views", key.0, first, last, 0);
            let path = dir.join(name.as_ref());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
            *n += 1;
        };
        for record in stream {
            let offset = offsets[record.partition as usize];
            offsets[record.partition as usize] += 1;
            let Ok(event) = decoder.decode(&record.payload) else {
                continue;
            };
            let key = (record.partition, hour_of(event.time_ms));
            let buffer = buffers.entry(key).or_default();
            buffer.push(ArchivedEvent {
                event,
                offset,
                kafka_timestamp_ms: None,
            });
            if buffer.len() >= 500_000 {
                let rows = std::mem::take(buffer);
                flush(key, rows, &mut n);
            }
        }
        for (key, rows) in std::mem::take(&mut buffers) {
            if !rows.is_empty() {
                flush(key, rows, &mut n);
            }
        }
        std::fs::write(dir.join("done"), "").unwrap();
        println!(
            "archive: {events} events written as {n} Parquet files in {:.1}s",
            written.elapsed().as_secs_f64()
        );
    }
}

/// One metric's read and recompute over every file.
struct Run {
    recomputed: Recomputed,
    read_secs: f64,
    read_cpu: f64,
    total_secs: f64,
    total_cpu: f64,
}

/// The metric's columns of `files`, decoded concurrently as `strata batch
/// run` does (up to 8 files at once there; here on rayon's pool, in file
/// order).
fn read_files(metric: &MetricDef, files: &[PathBuf]) -> Vec<EventFrame> {
    files
        .par_iter()
        .map(|f| {
            EventFrame::read(
                metric,
                &f.display().to_string(),
                bytes::Bytes::from(std::fs::read(f).unwrap()),
            )
            .unwrap()
        })
        .collect()
}

fn run_metric(metric: &MetricDef, files: &[PathBuf]) -> Run {
    if metric.window.session_gap_ms().is_none() {
        return run_fixed_metric(metric, files);
    }
    let (t, cpu) = (Instant::now(), cpu_secs());
    let frames = read_files(metric, files);
    let (read_secs, read_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    // Unbounded ranges: every event counts and every session is closed, as
    // the peers see them (no chunk edges, no allowed lateness).
    let recomputed = recompute(
        metric,
        &frames,
        i64::MIN / 2,
        i64::MAX / 2,
        i64::MIN / 2,
        i64::MAX / 2,
    );
    Run {
        recomputed,
        read_secs,
        read_cpu,
        total_secs: t.elapsed().as_secs_f64(),
        total_cpu: cpu_secs() - cpu,
    }
}

/// A tumbling or hopping metric as a `strata batch` chunk recomputes it:
/// an hour directory's files at a time, decoded concurrently, aggregated,
/// then dropped. The read time is the decoding's share.
fn run_fixed_metric(metric: &MetricDef, files: &[PathBuf]) -> Run {
    let (t, cpu) = (Instant::now(), cpu_secs());
    let (mut read_secs, mut read_cpu) = (0.0, 0.0);
    let mut fixed = FixedRecompute::new(i64::MIN / 2, i64::MAX / 2, i64::MIN / 2, i64::MAX / 2);
    for hour in files.chunk_by(|a, b| a.parent() == b.parent()) {
        let (read_t, read_c) = (Instant::now(), cpu_secs());
        let frames = read_files(metric, hour);
        read_secs += read_t.elapsed().as_secs_f64();
        read_cpu += cpu_secs() - read_c;
        fixed.add(metric, &frames);
    }
    let recomputed = fixed.finish();
    Run {
        recomputed,
        read_secs,
        read_cpu,
        total_secs: t.elapsed().as_secs_f64(),
        total_cpu: cpu_secs() - cpu,
    }
}

/// The sum of the metric's first aggregate over all windows (the peers
/// print the same), and how many windows hold a HyperLogLog rather than an
/// exact distinct count.
fn check(metric: &MetricDef, recomputed: &Recomputed) -> (f64, usize) {
    let mut sum = 0.0;
    let mut hll = 0;
    for w in &recomputed.windows {
        sum += metric.plan.finalize(&w.acc)[0].as_f64().unwrap_or(0.0);
        hll += w.acc.distinct.iter().filter(|d| !d.is_exact()).count();
    }
    (sum, hll)
}

/// `--strata-child <metric>`: one metric alone; `--strata-child all`: the
/// reference metrics concurrently, sharing the pools, as `strata batch run`.
fn child(which: &str) {
    let bench = Bench::load();
    let files = bench.files();
    let threads = polars_threads();
    if which != "all" {
        let metric = bench.metric(which);
        let run = run_metric(&metric, &files);
        let peak = proc_status_mib("VmHWM");
        let (sum, hll) = check(&metric, &run.recomputed);
        let rows = run.recomputed.windows.len();
        let (recompute_secs, recompute_cpu) =
            (run.total_secs - run.read_secs, run.total_cpu - run.read_cpu);
        println!(
            "strata  {which:<24} {rows:>9} rows  {:>7.2}s  peak RSS {peak:>6.0} MiB  \
             read {:.2}s on {:.1} cores (pools of {threads}), \
             recompute {recompute_secs:.2}s on {:.1} cores",
            run.total_secs,
            run.read_secs,
            run.read_cpu / run.read_secs.max(1e-9),
            recompute_cpu / recompute_secs.max(1e-9),
        );
        if hll > 0 {
            println!(
                "strata  {which:<24} {hll} of {rows} windows hold more than \
                 {DISTINCT_EXACT_LIMIT} distinct values: HyperLogLog estimates, not exact counts"
            );
        }
        println!(
            "result engine=strata metric={which} rows={rows} secs={:.4} peak_mib={peak:.1} \
             check={sum} cpu={:.2} hll={hll}",
            run.total_secs, run.total_cpu
        );
        return;
    }
    let metrics: Vec<Arc<MetricDef>> = REFERENCE.iter().map(|m| bench.metric(m)).collect();
    let (started, cpu) = (Instant::now(), cpu_secs());
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = metrics
            .iter()
            .map(|metric| {
                let files = &files;
                scope.spawn(move || run_metric(metric, files))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (total_secs, total_cpu) = (started.elapsed().as_secs_f64(), cpu_secs() - cpu);
    let mut total_events = 0;
    for (metric, run) in metrics.iter().zip(&runs) {
        let (events_read, windows) = (run.recomputed.events_read, run.recomputed.windows.len());
        total_events += events_read;
        println!(
            "strata  {:<24} {events_read:>10} events  {windows:>9} rows  read {:>5.2}s  total {:>6.2}s  {:>10.0} events/s",
            metric.name,
            run.read_secs,
            run.total_secs,
            events_read as f64 / run.total_secs
        );
    }
    let peak = proc_status_mib("VmHWM");
    println!(
        "strata  all three metrics concurrently (sharing the pools, {} cores): {total_events} event-metric rows in {total_secs:.2}s = {:.0} rows/s on {:.1} cores; peak RSS {peak:.0} MiB",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        total_events as f64 / total_secs,
        total_cpu / total_secs.max(1e-9),
    );
    let rows: usize = runs.iter().map(|r| r.recomputed.windows.len()).sum();
    println!(
        "result engine=strata metric=all rows={rows} secs={total_secs:.4} peak_mib={peak:.1} \
         check=0 cpu={total_cpu:.2}"
    );
}

/// One `result key=value ...` line of a run.
#[derive(Clone, Debug, Default)]
struct Figures {
    rows: u64,
    secs: f64,
    peak_mib: f64,
    check: f64,
    cpu: Option<f64>,
    hll: usize,
}

/// Runs `command`, echoes its output, and returns the figures of its
/// `result` line (`None`, with its stderr shown, if it failed).
fn run_child(mut command: Command, what: &str) -> Option<Figures> {
    let out = match command.output() {
        Ok(out) => out,
        Err(e) => {
            println!("{what}: could not start: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = None;
    for line in text.lines() {
        let Some(fields) = line.strip_prefix("result ") else {
            println!("{line}");
            continue;
        };
        let mut f = Figures::default();
        for (key, value) in fields
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
        {
            match key {
                "rows" => f.rows = value.parse().unwrap_or(0),
                "secs" => f.secs = value.parse().unwrap_or(f64::NAN),
                "peak_mib" => f.peak_mib = value.parse().unwrap_or(f64::NAN),
                "check" => f.check = value.parse().unwrap_or(f64::NAN),
                "cpu" => f.cpu = value.parse().ok(),
                "hll" => f.hll = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        figures = Some(f);
    }
    if !out.status.success() {
        println!(
            "{what}: failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    if figures.is_none() {
        println!("{what}: printed no result line");
    }
    figures
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(which) = flag("--strata-child") {
        // The recompute's pool (rayon's global one) gets the same thread
        // count as Polars' reader and the peers.
        rayon::ThreadPoolBuilder::new()
            .num_threads(polars_threads())
            .build_global()
            .expect("rayon's global pool is built once, here");
        child(&which);
        return;
    }
    let peers = flag("--peers");
    let bench = Bench::load();
    bench.write_archive();
    let files = bench.files();
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let data_dir = bench.data_dir();
    println!(
        "archive: {} files, {:.1} MiB, in {}",
        files.len(),
        bytes as f64 / 1048576.0,
        data_dir.display()
    );
    let threads = polars_threads();
    println!(
        "threads: {threads} for every engine. Strata reads the files on rayon's pool of \
         {threads} threads (several files at once, as `strata batch run`; each file's row \
         groups on Polars' pool of {threads}) and recomputes a metric on rayon's pool (one \
         row range each, merged)"
    );

    // Each run in a fresh process: its own peak memory, no warm state.
    let exe = std::env::current_exe().unwrap();
    let strata_child = |which: &str| {
        let mut command = Command::new(&exe);
        command.args(["--bench", "--strata-child", which]);
        command
    };
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let script = bench.repo.join("scripts/bench_peers.py");
    let glob = data_dir.join("**/*.parquet");
    let mut runs: BTreeMap<(&str, &str), Vec<Figures>> = BTreeMap::new();
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        for metric in REFERENCE {
            if let Some(f) = run_child(strata_child(metric), &format!("strata {metric}")) {
                runs.entry(("strata", metric)).or_default().push(f);
            }
            let Some(python) = &peers else { continue };
            for engine in PEERS {
                let mut command = Command::new(python);
                command
                    .arg(&script)
                    .args([engine, metric])
                    .arg(&glob)
                    .arg(threads.to_string());
                if let Some(f) = run_child(command, &format!("{engine} {metric}")) {
                    runs.entry((engine, metric)).or_default().push(f);
                }
            }
        }
    }
    let concurrent = run_child(strata_child("all"), "strata, all metrics");
    let results: BTreeMap<(&str, &str), Median> = runs
        .into_iter()
        .map(|(at, figures)| (at, Median::of(figures)))
        .collect();
    table(&results, peers.is_some(), threads, rounds);
    if let Some(all) = concurrent {
        let alone: f64 = REFERENCE
            .iter()
            .filter_map(|m| results.get(&("strata", *m)).map(|f| f.median.secs))
            .sum();
        println!(
            "strata, the three metrics concurrently (sharing the pools, as `strata batch run`): \
             {:.2}s on {:.1} cores, peak RSS {:.0} MiB (each alone, one after another, \
             medians: {alone:.2}s)",
            all.secs,
            all.cpu.unwrap_or(0.0) / all.secs.max(1e-9),
            all.peak_mib
        );
    }
}

/// The runs of one (engine, metric): the median one by time, and the
/// fastest and slowest times.
struct Median {
    median: Figures,
    fastest: f64,
    slowest: f64,
    runs: usize,
}

impl Median {
    fn of(mut figures: Vec<Figures>) -> Median {
        figures.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let (fastest, slowest) = (figures[0].secs, figures[figures.len() - 1].secs);
        let runs = figures.len();
        Median {
            median: figures.swap_remove(runs / 2),
            fastest,
            slowest,
            runs,
        }
    }
}

/// The closing table, the ratios and the agreement checks.
fn table(
    results: &BTreeMap<(&str, &str), Median>,
    with_peers: bool,
    threads: usize,
    rounds: usize,
) {
    let engines: &[&str] = if with_peers {
        &["strata", "duckdb", "polars", "chdb"]
    } else {
        &["strata"]
    };
    println!();
    println!(
        "Per metric, each run alone in a fresh process, {threads} threads each, {rounds} \
         rounds; seconds = read Parquet + compute + materialise the full result, the median \
         run (its peak RSS and cores) and the range of all runs"
    );
    println!(
        "{:<24} {:<8} {:>9} {:>13} {:>10} {:>13} {:>6}",
        "metric", "engine", "seconds", "range", "rows", "peak RSS MiB", "cores"
    );
    let mut notes = Vec::new();
    for metric in REFERENCE {
        for &engine in engines {
            match results.get(&(engine, metric)) {
                Some(m) => {
                    let f = &m.median;
                    println!(
                        "{metric:<24} {engine:<8} {:>9.2} {:>13} {:>10} {:>13.0} {:>6}",
                        f.secs,
                        format!("{:.2}-{:.2} ({})", m.fastest, m.slowest, m.runs),
                        f.rows,
                        f.peak_mib,
                        f.cpu
                            .map_or_else(|| "-".to_string(), |c| format!("{:.1}", c / f.secs))
                    );
                }
                None => println!("{metric:<24} {engine:<8} {:>9}", "failed"),
            }
        }
        let strata = results.get(&("strata", metric)).map(|m| &m.median);
        let fastest = PEERS
            .iter()
            .filter_map(|&e| results.get(&(e, metric)).map(|m| (e, m.median.secs)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(s), Some((peer, secs))) = (strata, fastest) {
            println!(
                "{metric:<24} Strata / fastest peer ({peer}, {secs:.2}s): {:.2} (goal <= 1.0)",
                s.secs / secs
            );
        }
        // Agreement: the same windows (rows) and the same sum of the first
        // aggregate everywhere. Strata's distinct counts above
        // DISTINCT_EXACT_LIMIT are HyperLogLog estimates (standard error
        // 1.6 % per window) while every peer counts exactly, so there its
        // sum only has to come within 2 %.
        let present: Vec<(&str, &Figures)> = engines
            .iter()
            .filter_map(|&e| results.get(&(e, metric)).map(|m| (e, &m.median)))
            .collect();
        let Some((_, first)) = present.first() else {
            continue;
        };
        if present.iter().any(|(_, f)| f.rows != first.rows) {
            let all: Vec<String> = present
                .iter()
                .map(|(e, f)| format!("{e} {}", f.rows))
                .collect();
            println!("MISMATCH {metric}: rows differ: {}", all.join(", "));
        }
        let exact: Vec<&(&str, &Figures)> = present.iter().filter(|(_, f)| f.hll == 0).collect();
        let close = |a: f64, b: f64, tolerance: f64| (a - b).abs() <= tolerance * a.abs().max(1.0);
        if let Some((_, reference)) = exact.first() {
            if exact
                .iter()
                .any(|(_, f)| !close(f.check, reference.check, 1e-9))
            {
                let all: Vec<String> = exact
                    .iter()
                    .map(|(e, f)| format!("{e} {}", f.check))
                    .collect();
                println!(
                    "MISMATCH {metric}: sums of the first aggregate differ: {}",
                    all.join(", ")
                );
            }
            for (engine, f) in present.iter().filter(|(_, f)| f.hll > 0) {
                let off = (f.check - reference.check) / reference.check;
                let verdict = if off.abs() <= 0.02 {
                    "within the estimate's error"
                } else {
                    "MISMATCH"
                };
                let line = format!(
                    "{metric}: {engine}'s sum of distinct counts is {:+.2} % off the exact \
                     count ({} of {} windows are HyperLogLog estimates): {verdict}",
                    off * 100.0,
                    f.hll,
                    f.rows
                );
                notes.push(if verdict == "MISMATCH" {
                    format!("MISMATCH {line}")
                } else {
                    line
                });
            }
        }
    }
    let rows_agree = REFERENCE.iter().all(|m| {
        let rows: Vec<u64> = engines
            .iter()
            .filter_map(|&e| results.get(&(e, *m)).map(|r| r.median.rows))
            .collect();
        rows.windows(2).all(|w| w[0] == w[1])
    });
    for note in notes {
        println!("{note}");
    }
    if rows_agree {
        println!("rows: every engine gives the same number of windows for every metric");
    }
}
