//! Batch recompute benchmark: the three reference metrics over an archive
//! of `STRATA_BENCH_EVENTS` (default 10 M) events, written in the archive's
//! own layout, read with Polars and recomputed with the shared aggregates.
//! Prints events/s per metric and the process's peak memory. With
//! `--duckdb <python>` it then runs `scripts/bench_duckdb.py` over the same
//! files and prints the ratio.
//!
//!   cargo bench -p strata-batch --bench recompute -- --duckdb .strata/venv/bin/python
//!
//! Runs only under `cargo bench` (`--bench` argument): `cargo test` skips it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use strata_batch::compute::{EventFrame, recompute};
use strata_batch::lake::{Lake, hour_of};
use strata_batch::parquet_file::{self, ArchivedEvent};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use strata_schemas::config::ObjectStoreSection;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let duckdb = args
        .iter()
        .position(|a| a == "--duckdb")
        .and_then(|i| args.get(i + 1).cloned());
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
    let source = config.sources["page_views"].clone();
    let dir = repo.join(format!(".strata/bench/archive-{events}"));
    let data_dir = dir.join("page_views");

    // 1. The archive: 4 partitions, files of up to 500k events per hour.
    let written = Instant::now();
    if !dir.join("done").exists() {
        let _ = std::fs::remove_dir_all(&dir);
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
            &repo,
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
    let mut files = Vec::new();
    let mut stack = vec![data_dir.clone()];
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
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    println!(
        "archive: {} files, {:.1} MiB, in {}",
        files.len(),
        bytes as f64 / 1048576.0,
        data_dir.display()
    );

    // 2. Strata: Polars read + shared-definition recompute, the three
    // metrics concurrently as `strata batch run` does.
    let started = Instant::now();
    let results: Vec<(String, u64, usize, f64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = config
            .metrics
            .iter()
            .map(|metric| {
                let files = &files;
                scope.spawn(move || {
                    let t = Instant::now();
                    let frames: Vec<EventFrame> = files
                        .iter()
                        .map(|f| {
                            EventFrame::read(
                                metric,
                                &f.display().to_string(),
                                bytes::Bytes::from(std::fs::read(f).unwrap()),
                            )
                            .unwrap()
                        })
                        .collect();
                    let read = t.elapsed().as_secs_f64();
                    let result = recompute(
                        metric,
                        &frames,
                        i64::MIN / 2,
                        i64::MAX / 2,
                        i64::MIN / 2,
                        i64::MAX / 2,
                    );
                    (
                        metric.name.clone(),
                        result.events_read,
                        result.windows.len(),
                        read,
                        t.elapsed().as_secs_f64(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total_secs = started.elapsed().as_secs_f64();
    let mut total_events = 0;
    for (name, events_read, windows, read, secs) in &results {
        total_events += events_read;
        println!(
            "strata  {name:<24} {events_read:>10} events  {windows:>6} windows  read {read:>5.2}s  total {secs:>6.2}s  {:>12.0} events/s",
            *events_read as f64 / secs
        );
    }
    println!(
        "strata  all three metrics (concurrently, {} cores): {total_events} event-metric rows in {total_secs:.2}s = {:.0} rows/s; peak RSS {:.0} MiB",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        total_events as f64 / total_secs,
        peak_rss_mib()
    );

    // 3. DuckDB over the same files.
    if let Some(python) = duckdb {
        let script = repo.join("scripts/bench_duckdb.py");
        let out = std::process::Command::new(python)
            .arg(&script)
            .arg(data_dir.join("**/*.parquet"))
            .output()
            .expect("run the DuckDB benchmark");
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(duck) = text
            .lines()
            .find_map(|l| l.strip_prefix("duckdb total seconds "))
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            println!(
                "ratio: Strata takes {:.2}x DuckDB's time (target <= 1.0)",
                total_secs / duck
            );
        }
    }
}
