//! Split runs at scale: peak memory of a chunk against the length of the
//! range. An archive of `STRATA_BENCH_EVENTS` (default 100 M) synthetic
//! clickstream events over `STRATA_BENCH_DAYS` (default 30) days is written
//! straight to Parquet in the archive's own layout (4 partitions, one file
//! per partition and hour, committed by a progress step), not through
//! Kafka. Then, for ranges of 1, 7 and 30 days (`STRATA_BENCH_RANGES`), a
//! fresh process recomputes the three reference metrics over the range,
//! chunk after chunk (`batch.chunk`, 6 h by default; `STRATA_BENCH_CHUNK_HOURS`),
//! with the code a chunk of `strata batch run` runs
//! ([`strata_batch::split::recompute_chunk`]: list the chunk's hours, read
//! the metric's columns with Polars, recompute with the shared definition),
//! and prints events/s per metric and the process's peak RSS. One chunk at
//! a time (`batch.parallelism = 1`): a worker's memory is its largest
//! chunk's, so it must not grow with the range. The ClickHouse insert of the
//! rows is left out (it is the same per window whatever the range).
//!
//!   scripts/bench-batch-split.sh
//!
//! Runs only under `cargo bench` (`--bench` argument).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use strata_batch::lake::{Lake, Progress, hour_of};
use strata_batch::parquet_file::{self, ArchivedEvent};
use strata_batch::run::BatchContext;
use strata_batch::split::{chunk_count_for, recompute_chunk};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};

const DAY_MS: i64 = 86_400_000;
const TOPIC: &str = "page_views";
const PARTITIONS: i32 = 4;

/// The `strata` binary's allocator, so peak RSS is what a batch worker's is.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(repo: &Path, archive: &Path) -> Arc<strata_schemas::Config> {
    let mut config =
        strata_schemas::config::load_with_env(&repo.join("strata.toml"), |_| None).unwrap();
    config.object_store.url = format!("file://{}", archive.display());
    Arc::new(config)
}

/// Writes the synthetic archive (once: kept under `.strata/bench/`).
async fn write_archive(repo: &Path, archive: &Path, events: u64, days: i64, start_ms: i64) {
    if archive.join("done").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(archive);
    std::fs::create_dir_all(archive).unwrap();
    let config = config(repo, archive);
    let source = config.sources["page_views"].clone();
    let lake = Lake::open(&config.object_store, &config.base_dir).unwrap();
    let decoder = source.decoder();
    let step_ms = ((days * DAY_MS) as u64).div_ceil(events.max(1)).max(1) as i64;
    let stream = Clickstream::new(ClickstreamConfig {
        seed: 3,
        events,
        users: 100_000,
        pages: 200,
        countries: 20,
        partitions: PARTITIONS as u32,
        start_ms,
        step_ms,
        out_of_order_fraction: 0.1,
        cohort_ms: 20 * 60_000,
        ..ClickstreamConfig::default()
    });
    let started = Instant::now();
    // One file per (partition, event hour), as the archiver writes them; an
    // hour is flushed once its partition is two hours past it (events are
    // at most seconds out of order).
    let mut buffers: BTreeMap<(i32, i64), Vec<ArchivedEvent>> = BTreeMap::new();
    let mut newest_hour = [i64::MIN; PARTITIONS as usize];
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut files = 0u64;
    let mut written = 0u64;
    let flush = |(partition, hour): (i32, i64), rows: Vec<ArchivedEvent>| {
        let refs: Vec<&ArchivedEvent> = rows.iter().collect();
        let bytes = parquet_file::encode(&source.contract, TOPIC, partition, &refs).unwrap();
        let (first, last) = (rows[0].offset, rows[rows.len() - 1].offset);
        let name = lake.data_path(&source.name, hour, TOPIC, partition, first, last, 1);
        let path = archive.join(name.as_ref());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    for record in stream {
        let p = record.partition as usize;
        let offset = offsets[p];
        offsets[p] += 1;
        let Ok(event) = decoder.decode(&record.payload) else {
            continue;
        };
        let hour = hour_of(event.time_ms);
        if hour > newest_hour[p] {
            newest_hour[p] = hour;
            let done: Vec<(i32, i64)> = buffers
                .keys()
                .filter(|(bp, bh)| *bp == record.partition && *bh < hour - 3_600_000)
                .copied()
                .collect();
            for key in done {
                let rows = buffers.remove(&key).unwrap();
                flush(key, rows);
                files += 1;
            }
        }
        buffers
            .entry((record.partition, hour))
            .or_default()
            .push(ArchivedEvent {
                event,
                offset,
                kafka_timestamp_ms: None,
            });
        written += 1;
        if written.is_multiple_of(10_000_000) {
            eprintln!(
                "archive: {written} events written ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    for (key, rows) in std::mem::take(&mut buffers) {
        flush(key, rows);
        files += 1;
    }
    // One progress step per partition commits every file (generation 1).
    for (partition, next) in offsets.iter().enumerate() {
        let mut progress = Progress {
            generation: 1,
            ..Progress::default()
        };
        progress.commit_offsets(1, 0, *next);
        lake.store_progress(&source.name, TOPIC, partition as i32, 1, &progress)
            .await
            .unwrap();
    }
    std::fs::write(archive.join("done"), "").unwrap();
    println!(
        "archive: {written} events over {days} days written as {files} Parquet files in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// One range in this (child) process: every metric, chunk after chunk.
async fn measure_range(repo: &Path, archive: &Path, start_ms: i64, days: i64, chunk_hours: i64) {
    let config = config(repo, archive);
    let ctx = BatchContext::new(config.clone()).unwrap();
    let (from, to) = (start_ms, start_ms + days * DAY_MS);
    let chunk_ms = chunk_hours * 3_600_000;
    let count = chunk_count_for(from, to, chunk_ms);
    let mut line = Vec::new();
    let started = Instant::now();
    for metric in &config.metrics {
        let t = Instant::now();
        let mut events = 0u64;
        let mut windows = 0usize;
        for index in 0..count {
            let chunk = recompute_chunk(&ctx, metric, (from, to), to, count, index)
                .await
                .unwrap();
            events += chunk.events_read;
            windows += chunk.windows.len();
        }
        let secs = t.elapsed().as_secs_f64();
        line.push(format!(
            "{}: {events} events, {windows} windows, {secs:.1} s, {:.2} M events/s",
            metric.name,
            events as f64 / secs / 1e6
        ));
    }
    println!(
        "RESULT days={days} chunks={count} seconds={:.1} peak_rss_mib={:.0} | {}",
        started.elapsed().as_secs_f64(),
        peak_rss_mib(),
        line.join(" | ")
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let events: u64 = env_or("STRATA_BENCH_EVENTS", 100_000_000);
    let days: i64 = env_or("STRATA_BENCH_DAYS", 30);
    let chunk_hours: i64 = env_or("STRATA_BENCH_CHUNK_HOURS", 6);
    // Midnight UTC, 2026-10-01.
    let start_ms: i64 = 1_790_812_800_000;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let archive = repo.join(format!(".strata/bench/split-{events}-{days}d"));

    if let Some(i) = args.iter().position(|a| a == "--range-days") {
        let range: i64 = args[i + 1].parse().unwrap();
        measure_range(&repo, &archive, start_ms, range, chunk_hours).await;
        return;
    }
    write_archive(&repo, &archive, events, days, start_ms).await;
    let bytes: u64 = walk(&archive.join("page_views"))
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "archive: {events} events, {:.0} MiB of Parquet ({:.1} bytes per event), in {}",
        bytes as f64 / 1048576.0,
        bytes as f64 / events as f64,
        archive.display()
    );
    let ranges: Vec<i64> = std::env::var("STRATA_BENCH_RANGES")
        .unwrap_or_else(|_| "1,7,30".into())
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .filter(|d| *d <= days)
        .collect();
    // A fresh process per range: its peak RSS is that range's alone.
    let exe = std::env::current_exe().unwrap();
    for range in ranges {
        let out = std::process::Command::new(&exe)
            .args(["--bench", "--range-days", &range.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.starts_with("RESULT")) {
            println!("{}", &line["RESULT ".len()..]);
        }
        assert!(out.status.success(), "range {range} days failed");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}
