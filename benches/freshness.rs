//! Freshness: how long after an event is produced it is visible, per read
//! path, at a steady load.
//!
//!   scripts/bench-freshness.sh    (starts ClickHouse and Tansu, then runs this)
//!
//! `strata speed` and `strata serve` run as processes with the reference
//! config (`strata.toml`: its `speed.emit_interval` and
//! `serving.latest_refresh` unless `STRATA_BENCH_EMIT_INTERVAL` /
//! `STRATA_BENCH_LATEST_REFRESH` override them) on the local Tansu broker
//! and ClickHouse. A producer sends `STRATA_BENCH_RATE` (default 5,000)
//! page views a second for `STRATA_BENCH_SECONDS` (default 120), event time
//! = send time, and every 250 ms one of them is a marker: a page of its own
//! (`/fresh/<n>`). Three pollers, one per read path, each ask every 25 ms
//! which pending markers they can see:
//!
//! - `clickhouse`: the speed table, directly (what Grafana reads);
//! - `api query`: `GET /v1/metrics/page_views_per_minute/query` filtered on
//!   the pending markers' pages (batch and speed views merged);
//! - `api latest`: `GET .../latest` for one marker key (the API's cache);
//! - `kafka`: a plain consumer with the speed layer's fetch settings, the
//!   broker's share of the others.
//!
//! A marker's freshness on a path is the time from its send to the first
//! poll that saw it (±12.5 ms of polling). Printed per path: p50, p99, max,
//! and what each stage costs (the emit interval's wait, the speed layer's
//! insert latency from its own metrics, the API's query and cache).
//!
//! `STRATA_BENCH_BROKER=mock` runs the same on librdkafka's in-process mock
//! cluster, which answers a fetch as soon as it has data (as Apache Kafka
//! does): Tansu holds every fetch for `fetch.wait.max.ms` and slows as its
//! SQLite file grows, so on it the broker is most of the time.
//!
//! Runs only under `cargo bench` (`--bench` argument).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::{TestEnv, http_get};

const MARKER_EVERY: Duration = Duration::from_millis(250);
const POLL_EVERY: Duration = Duration::from_millis(25);
const METRIC: &str = "page_views_per_minute";
const MARKER_COUNTRY: &str = "FR";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name}={v}: expected a whole number above 0"))
    })
}

/// A marker: its page, when it was sent, its window's start.
#[derive(Clone)]
struct Marker {
    page: String,
    sent: Instant,
    window_ms: i64,
}

/// Markers sent and not yet seen on one path, and the latencies of those
/// seen.
#[derive(Default)]
struct PathState {
    pending: BTreeMap<u64, Marker>,
    /// Marker → its freshness on this path.
    seen: BTreeMap<u64, Duration>,
}

type Paths = Arc<Mutex<Vec<PathState>>>;

const PATHS: [&str; 4] = [
    "clickhouse (speed table)",
    "api query",
    "api latest",
    "kafka (a plain consumer)",
];

/// The broker's share: a consumer with the speed layer's fetch settings
/// (`strata_kafka::group`; librdkafka's defaults otherwise) marks markers
/// as it receives them.
fn consume_markers(paths: &Paths, stop: &AtomicBool, brokers: &str, topic: &str) {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", support::unique("freshness_probe"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "1048576")
        .set("max.partition.fetch.bytes", "262144")
        .set(
            "fetch.wait.max.ms",
            std::env::var("PROBE_WAIT").unwrap_or("500".into()),
        )
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::End)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let path = PATHS.len() - 1;
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        if let Some(at) = payload.windows(7).position(|w| w == b"/fresh/") {
            let digits: String = payload[at + 7..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            let n: u64 = digits.parse().unwrap();
            let mut guard = paths.lock().unwrap();
            if let Some(marker) = guard[path].pending.remove(&n) {
                guard[path].seen.insert(n, marker.sent.elapsed());
            }
        }
    }
}

fn percent_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Which of `pending` path `path` sees now.
fn visible(path: usize, pending: &[(u64, Marker)], api_port: u16, env: &TestEnv) -> Vec<u64> {
    match path {
        0 => {
            let pages: Vec<String> = pending
                .iter()
                .map(|(_, m)| format!("'{}'", m.page))
                .collect();
            let sql = format!(
                "SELECT DISTINCT page FROM {}.{METRIC}_speed WHERE page IN ({}) FORMAT TabSeparated",
                env.database,
                pages.join(",")
            );
            let url = &env.clickhouse_url;
            let port: u16 = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .expect("a ClickHouse URL with a port");
            let answer = http_get(port, &format!("/?query={}", percent_encode(&sql)), &[]);
            assert_eq!(answer.status, 200, "{}", answer.text());
            let text = answer.text();
            pending
                .iter()
                .filter(|(_, m)| text.lines().any(|l| l == m.page))
                .map(|(n, _)| *n)
                .collect()
        }
        1 => {
            let from = pending.iter().map(|(_, m)| m.window_ms).min().unwrap();
            let to = pending.iter().map(|(_, m)| m.window_ms).max().unwrap() + 60_000;
            // A set filter repeats the parameter.
            let pages: String = pending
                .iter()
                .map(|(_, m)| format!("&page={}", percent_encode(&m.page)))
                .collect();
            let answer = http_get(
                api_port,
                &format!(
                    "/v1/metrics/{METRIC}/query?from={from}&to={to}&country={MARKER_COUNTRY}{pages}"
                ),
                &[],
            );
            assert_eq!(answer.status, 200, "{}", answer.text());
            let text = answer.text();
            pending
                .iter()
                .filter(|(_, m)| text.contains(&format!("\"{}\"", m.page)))
                .map(|(n, _)| *n)
                .collect()
        }
        _ => {
            // `latest` answers one key per request: the oldest pending.
            let (n, marker) = &pending[0];
            let answer = http_get(
                api_port,
                &format!(
                    "/v1/metrics/{METRIC}/latest?page={}&country={MARKER_COUNTRY}",
                    percent_encode(&marker.page)
                ),
                &[],
            );
            match answer.status {
                200 => vec![*n],
                404 => Vec::new(),
                other => panic!("latest answered {other}: {}", answer.text()),
            }
        }
    }
}

fn poll_path(path: usize, paths: &Paths, stop: &AtomicBool, api_port: u16, env: &TestEnv) {
    loop {
        let started = Instant::now();
        let pending: Vec<(u64, Marker)> = {
            let guard = paths.lock().unwrap();
            guard[path]
                .pending
                .iter()
                .take(100)
                .map(|(n, m)| (*n, m.clone()))
                .collect()
        };
        if pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
        } else {
            let seen = visible(path, &pending, api_port, env);
            let at = Instant::now();
            let mut guard = paths.lock().unwrap();
            for n in seen {
                if let Some(marker) = guard[path].pending.remove(&n) {
                    guard[path].seen.insert(n, at.duration_since(marker.sent));
                }
            }
        }
        std::thread::sleep(POLL_EVERY.saturating_sub(started.elapsed()));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// (sum, count) of a Prometheus summary or histogram scraped from `text`.
fn sum_and_count(text: &str, name: &str) -> (f64, f64) {
    let total = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (total("_sum"), total("_count"))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = knob("STRATA_BENCH_SECONDS", 120);
    let rate = knob("STRATA_BENCH_RATE", 5_000);
    let mut text_overrides = Vec::new();
    if let Ok(v) = std::env::var("STRATA_BENCH_EMIT_INTERVAL") {
        text_overrides.push((
            "emit_interval = \"500ms\"".to_string(),
            format!("emit_interval = {v:?}"),
        ));
    }
    if let Ok(v) = std::env::var("STRATA_BENCH_LATEST_REFRESH") {
        text_overrides.push((
            "latest_refresh = \"250ms\"".to_string(),
            format!("latest_refresh = {v:?}"),
        ));
    }
    let mut env = TestEnv::new("freshness", "");
    // STRATA_BENCH_BROKER=mock: librdkafka's in-process mock cluster instead
    // of Tansu, whose SQLite storage is most of the end-to-end time here; a
    // broker that answers fetches as soon as data is there shows Strata's
    // own share end to end.
    let mock = match std::env::var("STRATA_BENCH_BROKER").as_deref() {
        Ok("mock") => {
            let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
            mock.create_topic(&env.topic, 4, 1).unwrap();
            mock.create_topic(&format!("{}.dlq", env.topic), 4, 1)
                .unwrap();
            env.kafka_brokers = mock.bootstrap_servers();
            Some(mock)
        }
        Ok("tansu") | Err(_) => None,
        Ok(other) => panic!("STRATA_BENCH_BROKER={other}: expected tansu or mock"),
    };
    if !text_overrides.is_empty() {
        let mut text = std::fs::read_to_string(&env.config).unwrap();
        for (from, to) in &text_overrides {
            assert!(text.contains(from.as_str()), "strata.toml has no {from}");
            text = text.replace(from.as_str(), to);
        }
        std::fs::write(&env.config, text).unwrap();
    }
    let config = strata_schemas::config::load_with_env(&env.config, |k| std::env::var(k).ok())
        .expect("bench config");
    let env_kafka = strata_schemas::config::KafkaSection {
        brokers: env.kafka_brokers.clone(),
        ..config.kafka.clone()
    };
    strata_kafka::ensure_topic(&env_kafka, &env.topic, 4)
        .await
        .expect("create the bench topic");
    env.init();
    let speed = env.spawn_speed(0);
    let (serve, api_port) = env.start_server().await;
    println!(
        "freshness on {}: {rate} events/s for {seconds} s, a marker every {} ms, each path polled every {} ms; speed.emit_interval {} ms, serving.latest_refresh {} ms",
        if mock.is_some() {
            "librdkafka's mock cluster"
        } else {
            "the local Tansu broker"
        },
        MARKER_EVERY.as_millis(),
        POLL_EVERY.as_millis(),
        config.speed.emit_interval.0,
        config.serving.latest_refresh.0,
    );

    let env = Arc::new(env);
    let paths: Paths = Arc::new(Mutex::new(
        (0..PATHS.len()).map(|_| PathState::default()).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut pollers: Vec<_> = (0..PATHS.len() - 1)
        .map(|path| {
            let (paths, stop, env) = (paths.clone(), stop.clone(), env.clone());
            std::thread::spawn(move || poll_path(path, &paths, &stop, api_port, &env))
        })
        .collect();
    {
        let (paths, stop) = (paths.clone(), stop.clone());
        let (brokers, topic) = (env.kafka_brokers.clone(), env.topic.clone());
        pollers.push(std::thread::spawn(move || {
            consume_markers(&paths, &stop, &brokers, &topic);
        }));
    }

    // The producer: a low-latency setting (linger 5 ms), as a clickstream
    // collector would use.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_brokers)
        .set("linger.ms", "5")
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    let started = Instant::now();
    let (mut sent, mut markers) = (0u64, 0u64);
    let mut next_marker = started + MARKER_EVERY;
    // Warm-up: the first 5 s carry no markers (group join, first fetches).
    let warm_up = started + Duration::from_secs(5);
    let end = warm_up + Duration::from_secs(seconds);
    let pages = 200u64;
    let countries = ["DE", "US", "GB", "IN", "BR"];
    while Instant::now() < end {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let now = Instant::now();
            let time = now_ms();
            let marker = now >= next_marker && now >= warm_up;
            let user = format!("u{:05}", sent % 20_000);
            let (page, country) = if marker {
                markers += 1;
                next_marker = now + MARKER_EVERY;
                (format!("/fresh/{markers}"), MARKER_COUNTRY)
            } else {
                (
                    format!("/page/{}", sent % pages),
                    countries[(sent % countries.len() as u64) as usize],
                )
            };
            let payload = format!(
                r#"{{"event_time":{time},"user_id":"{user}","page":"{page}","country":"{country}","duration_ms":{}}}"#,
                sent % 5000
            );
            let record = BaseRecord::to(&env.topic)
                .partition((sent % 4) as i32)
                .key(&user)
                .payload(&payload);
            if producer.send(record).is_err() {
                producer.poll(Duration::from_millis(1));
                continue;
            }
            if marker {
                let window_ms = time - time.rem_euclid(60_000);
                let mut guard = paths.lock().unwrap();
                for path in guard.iter_mut() {
                    path.pending.insert(
                        markers,
                        Marker {
                            page: page.clone(),
                            sent: now,
                            window_ms,
                        },
                    );
                }
            }
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let producing = started.elapsed();
    producer.flush(Duration::from_secs(30)).unwrap();
    // Markers still pending get 10 s to show up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && paths.lock().unwrap().iter().any(|p| !p.pending.is_empty()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let missing: Vec<usize> = {
        let mut guard = paths.lock().unwrap();
        guard
            .iter_mut()
            .map(|p| std::mem::take(&mut p.pending).len())
            .collect()
    };
    for poller in pollers {
        let _ = poller.join();
    }
    let speed_metrics = env.scrape();
    let (insert_sum, insert_count) =
        sum_and_count(&speed_metrics, "strata_speed_sink_latency_seconds");
    drop(serve);
    drop(speed);
    drop(mock);
    env.drop_database().await;

    println!(
        "{sent} events sent in {:.1} s ({:.0}/s, the first 5 s without markers), {markers} markers",
        producing.as_secs_f64(),
        sent as f64 / producing.as_secs_f64()
    );
    println!(
        "\n{:<40} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "path: sent -> visible", "markers", "p50 ms", "p99 ms", "max ms", "missing"
    );
    let guard = paths.lock().unwrap();
    let row = |name: &str, mut seen: Vec<Duration>, missing: usize| {
        seen.sort();
        println!(
            "{name:<40} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>8}",
            seen.len(),
            percentile(&seen, 0.5),
            percentile(&seen, 0.99),
            percentile(&seen, 1.0),
            missing
        );
    };
    for (i, name) in PATHS.iter().enumerate() {
        row(name, guard[i].seen.values().copied().collect(), missing[i]);
    }
    // Each stage per marker: one path's time minus the path it builds on,
    // for the markers both saw.
    let stage = |later: usize, earlier: usize| -> Vec<Duration> {
        guard[later]
            .seen
            .iter()
            .filter_map(|(n, t)| Some(t.saturating_sub(*guard[earlier].seen.get(n)?)))
            .collect()
    };
    let kafka = PATHS.len() - 1;
    println!("\nstages, per marker:");
    row(
        "  broker: sent -> consumed (kafka path)",
        guard[kafka].seen.values().copied().collect(),
        0,
    );
    row(
        "  speed layer: consumed -> in ClickHouse",
        stage(0, kafka),
        0,
    );
    row("  api query: ClickHouse -> answer", stage(1, 0), 0);
    row("  api latest: ClickHouse -> answer", stage(2, 0), 0);
    let insert_ms = if insert_count > 0.0 {
        insert_sum / insert_count * 1000.0
    } else {
        f64::NAN
    };
    println!(
        "  the speed layer's share is the wait for the next emit (0 to {} ms, speed.emit_interval) plus its insert \
         ({insert_ms:.0} ms on average over {insert_count:.0} inserts, strata_speed_sink_latency_seconds); \
         latest's is the wait for its cache's next refresh (0 to {} ms, serving.latest_refresh); \
         each path adds up to {} ms of polling",
        config.speed.emit_interval.0,
        config.serving.latest_refresh.0,
        POLL_EVERY.as_millis()
    );
}
