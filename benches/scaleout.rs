//! Speed-layer scale-out: `strata speed` as 1 process, then as 2 processes
//! in one consumer group, on the same topic, in the same run.
//!
//!   scripts/bench-scaleout.sh    (starts ClickHouse, then runs this)
//!
//! The broker is librdkafka's mock cluster, in this bench's process, with a
//! topic of `STRATA_BENCH_PARTITIONS` (default 48) partitions pre-filled with
//! `STRATA_BENCH_EVENTS` (default 3 M) lz4-compressed clickstream records
//! before any speed process starts, so the broker only serves fetches while
//! rates are measured. Each mode reads the whole topic with a fresh consumer
//! group into a fresh ClickHouse database.
//!
//! A mock partition keeps at most 5 MiB or 100,000 batches and silently
//! drops its oldest records past that (`rdkafka_mock.c`), hence many
//! partitions and compression; the bench checks every partition still
//! starts at offset 0 and holds its records before measuring.
//!
//! The rate of a mode is measured between the moments 10 % and 90 % of the
//! records were read (sum of the processes' `strata_speed_records_in_total`),
//! so start-up and the group's first rebalance are left out. With
//! `STRATA_BENCH_PIN=1` (the script's default) process `i` is pinned to CPU
//! `i` (`taskset`), so 1 process gets one core and 2 processes get one each;
//! the broker, ClickHouse and librdkafka's threads float. The CPU seconds
//! each component used in the measured interval are printed, so the limit
//! is visible: a ratio below 2 on a machine with as many cores as
//! processes is the broker's and ClickHouse's share of those cores.
//!
//! Runs only under `cargo bench` (`--bench` argument).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use support::{ChildGuard, TestEnv, terminate};

/// CPU ticks (user + system) a process used so far, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

/// (busy, total) ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    // idle + iowait
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn clickhouse_pid() -> Option<String> {
    let home = std::env::var("STRATA_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::repo().join(".strata"));
    std::fs::read_to_string(home.join("pids/clickhouse.pid"))
        .ok()
        .map(|p| p.trim().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    TestEnv::counter(&out, "strata_speed_records_in_total")
}

struct Snapshot {
    at: Instant,
    processes: Vec<u64>,
    broker: u64,
    clickhouse: u64,
    machine: (u64, u64),
}

fn snapshot(pids: &[String], clickhouse: Option<&str>) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        processes: pids.iter().map(|p| cpu_ticks(p)).collect(),
        broker: cpu_ticks("self"),
        clickhouse: clickhouse.map_or(0, cpu_ticks),
        machine: machine_ticks(),
    }
}

struct ModeResult {
    processes: usize,
    rate: f64,
    seconds: f64,
    shares: Vec<f64>,
    cpu_processes: Vec<f64>,
    cpu_broker: f64,
    cpu_clickhouse: f64,
    machine_busy: f64,
}

async fn run_mode(
    env: &TestEnv,
    brokers: &str,
    processes: usize,
    records: u64,
    pin: bool,
) -> ModeResult {
    let tag = format!("{}_{processes}p", env.database);
    // A fresh database and consumer group per mode: each mode reads the
    // whole topic and writes every window once.
    let database = tag.clone();
    support::run_ok(
        env.strata()
            .env("STRATA_CLICKHOUSE_DATABASE", &database)
            .env("STRATA_KAFKA_BROKERS", brokers)
            .arg("init"),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut children: Vec<ChildGuard> = Vec::new();
    let mut ports = Vec::new();
    for i in 0..processes {
        let port = free_port();
        ports.push(port);
        let mut base = env.strata();
        base.env("STRATA_CLICKHOUSE_DATABASE", &database)
            .env("STRATA_KAFKA_BROKERS", brokers)
            .env("STRATA_SPEED_GROUP_ID", format!("bench-{tag}"))
            .env("STRATA_SPEED_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .arg("speed");
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.arg("-c")
                .arg((i % cpus).to_string())
                .arg(base.get_program())
                .args(base.get_args());
            for (k, v) in base.get_envs() {
                if let Some(v) = v {
                    c.env(k, v);
                }
            }
            c
        } else {
            base
        };
        let log = std::fs::File::create(env.dir.path().join(format!("{tag}-{i}.log"))).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        children.push(ChildGuard(cmd.spawn().unwrap()));
    }
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    let clickhouse = clickhouse_pid();
    let started = Instant::now();
    let low = records / 10;
    let high = records * 9 / 10;
    let (mut at_low, mut at_high) = (None, None);
    let mut last_counts = vec![0u64; processes];
    loop {
        let counts: Vec<u64> = ports.iter().map(|p| scrape(*p) as u64).collect();
        let total: u64 = counts.iter().sum();
        if at_low.is_none() && total >= low {
            at_low = Some((total, snapshot(&pids, clickhouse.as_deref())));
        }
        if at_high.is_none() && total >= high {
            at_high = Some((total, snapshot(&pids, clickhouse.as_deref())));
            last_counts = counts;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{processes} process(es) read only {total} of {records} records in 10 minutes; logs in {}",
            env.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (n0, s0) = at_low.unwrap();
    let (n1, s1) = at_high.unwrap();
    let seconds = s1.at.duration_since(s0.at).as_secs_f64();
    let ticks = 100.0; // USER_HZ on Linux
    let machine_busy = (s1.machine.0 - s0.machine.0) as f64 / (s1.machine.1 - s0.machine.1) as f64;
    let total_read: u64 = last_counts.iter().sum();
    let result = ModeResult {
        processes,
        rate: (n1 - n0) as f64 / seconds,
        seconds,
        shares: last_counts
            .iter()
            .map(|c| *c as f64 / total_read.max(1) as f64)
            .collect(),
        cpu_processes: s0
            .processes
            .iter()
            .zip(&s1.processes)
            .map(|(a, b)| (b - a) as f64 / ticks)
            .collect(),
        cpu_broker: (s1.broker - s0.broker) as f64 / ticks,
        cpu_clickhouse: (s1.clickhouse - s0.clickhouse) as f64 / ticks,
        machine_busy,
    };
    for mut child in children {
        terminate(&mut child);
    }
    let _ = support::clickhouse()
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await;
    result
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let records: u64 = std::env::var("STRATA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000);
    let partitions: i32 = std::env::var("STRATA_BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let pin = std::env::var("STRATA_BENCH_PIN").is_ok_and(|v| v == "1");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let env = TestEnv::new("scaleout", "");
    mock.create_topic(&env.topic, partitions, 1).unwrap();
    mock.create_topic(&format!("{}.dlq", env.topic), partitions, 1)
        .unwrap();

    let producing = Instant::now();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let config = ClickstreamConfig {
        seed: 7,
        events: records,
        users: 100_000,
        partitions: partitions as u32,
        step_ms: 1,
        ..ClickstreamConfig::default()
    };
    for record in Clickstream::new(config) {
        let mut pending = BaseRecord::to(&env.topic)
            .partition(record.partition)
            .key(&record.key)
            .payload(&record.payload);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((_, back)) => {
                    // Queue full: let deliveries drain.
                    producer.poll(Duration::from_millis(10));
                    pending = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    // Every record must still be in the topic: a mock partition over its
    // size cap drops its oldest records without telling anyone.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut held = 0;
    for partition in 0..partitions {
        let (low, high) = watermarks
            .fetch_watermarks(&env.topic, partition, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            low, 0,
            "the mock cluster dropped the first {low} records of partition {partition} \
             (it keeps 5 MiB or 100,000 batches per partition): raise \
             STRATA_BENCH_PARTITIONS or lower STRATA_BENCH_EVENTS"
        );
        held += high;
    }
    assert_eq!(held as u64, records, "records in the topic");
    println!(
        "topic: {records} records in {partitions} partitions, produced to the mock cluster in {:.1} s; {cpus} CPUs; pinning {}",
        producing.elapsed().as_secs_f64(),
        if pin {
            "on (process i on CPU i)"
        } else {
            "off"
        }
    );

    let one = run_mode(&env, &brokers, 1, records, pin).await;
    let two = run_mode(&env, &brokers, 2, records, pin).await;
    println!(
        "\n{:>9} {:>12} {:>8} {:>16} {:>22} {:>11} {:>11} {:>13}",
        "processes",
        "records/s",
        "seconds",
        "share per proc",
        "CPU s per speed proc",
        "broker CPU",
        "ClickHouse",
        "machine busy"
    );
    for r in [&one, &two] {
        let shares: Vec<String> = r
            .shares
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect();
        let cpu: Vec<String> = r.cpu_processes.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "{:>9} {:>12.0} {:>8.1} {:>16} {:>22} {:>10.1}s {:>10.1}s {:>12.0}%",
            r.processes,
            r.rate,
            r.seconds,
            shares.join("/"),
            cpu.join("/"),
            r.cpu_broker,
            r.cpu_clickhouse,
            r.machine_busy * 100.0
        );
    }
    println!(
        "\nscale-out: 2 processes read {:.2}x the records/s of 1 (measured between 10 % and 90 % of the topic)",
        two.rate / one.rate
    );
}
