//! API benchmark against the real ClickHouse of the local stack.
//!
//! Fills `page_views_per_minute` with 24 hours of 1-minute windows (10
//! pages × 5 countries; the batch view up to 20 h, the speed view after it,
//! two Kafka partitions), then measures, in the same run:
//! - `GET /v1/metrics/page_views_per_minute/query` for the 24 hours at
//!   1-minute granularity, top 10 per window, at 1, 16 and 64 concurrent
//!   clients: p50, p99, requests/s;
//! - the same answer fetched with one direct ClickHouse HTTP query, every
//!   client alternating the two request by request, so that both see the
//!   same load and the same drift of the machine's speed;
//! - `GET /latest` p99 at 100 concurrent clients.
//!
//! Each client keeps one HTTP/1.1 connection alive, to the API and to
//! ClickHouse alike (`STRATA_BENCH_CONNECTION=close`: a fresh connection per
//! request); the run prints which.
//!
//!   scripts/bench-api.sh     (or: deploy/local/up.sh clickhouse && cargo bench -p strata-serving --bench api)
//!
//! Runs only under `cargo bench` (`--bench` argument).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};
use strata_schemas::aggregate::NumericState;
use strata_warehouse as warehouse;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const S: i64 = 1_795_341_600_000;
const MINUTE: i64 = 60_000;
const PAGES: usize = 10;
const COUNTRIES: [&str; 5] = ["DE", "FR", "JP", "US", "BR"];

fn clickhouse_url() -> String {
    if let Ok(url) = std::env::var("STRATA_CLICKHOUSE_URL") {
        return url;
    }
    let env = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.strata/stack.env");
    std::fs::read_to_string(env)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("export STRATA_CLICKHOUSE_URL=")
                    .map(str::to_string)
            })
        })
        .expect("start the local stack first: deploy/local/up.sh clickhouse")
}

/// How the bench client connects, for the API and ClickHouse alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One persistent HTTP/1.1 connection per client task, as feature
    /// serving clients and connection pools use (the default).
    KeepAlive,
    /// A fresh TCP connection per request (`Connection: close`); set
    /// `STRATA_BENCH_CONNECTION=close` to compare with older figures.
    Close,
}

impl Mode {
    fn from_env() -> Mode {
        match std::env::var("STRATA_BENCH_CONNECTION").as_deref() {
            Ok("close") => Mode::Close,
            Ok("keep-alive") | Err(_) => Mode::KeepAlive,
            Ok(other) => panic!("STRATA_BENCH_CONNECTION={other:?}: use keep-alive or close"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::KeepAlive => {
                "keep-alive (one persistent HTTP/1.1 connection per client, API and ClickHouse alike)"
            }
            Mode::Close => "close (a fresh TCP connection per request, API and ClickHouse alike)",
        }
    }
}

/// One request the clients repeat.
struct Target {
    addr: String,
    method: &'static str,
    path: String,
    body: String,
    mode: Mode,
}

/// Reads and drops `n` bytes: the bench measures latency, not the client's
/// copying, and both answers are read the same way.
async fn skip(stream: &mut BufReader<TcpStream>, n: usize) -> std::io::Result<()> {
    let copied = tokio::io::copy_buf(&mut stream.take(n as u64), &mut tokio::io::sink()).await?;
    if copied as usize == n {
        Ok(())
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// A client's connection: reused across requests in [`Mode::KeepAlive`].
struct Conn {
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new() -> Conn {
        Conn { stream: None }
    }

    /// Sends the request; returns the answer body's size, or 0 for a failed
    /// or non-200 answer (counted as an error).
    async fn send(&mut self, t: &Target) -> usize {
        // A kept-alive connection the server closed meanwhile fails before
        // any answer: reconnect once, as HTTP clients do.
        let reused = self.stream.is_some();
        match self.try_send(t).await {
            Ok(n) => n,
            Err(_) if reused => {
                self.stream = None;
                self.try_send(t).await.unwrap_or_else(|_| {
                    self.stream = None;
                    0
                })
            }
            Err(_) => {
                self.stream = None;
                0
            }
        }
    }

    async fn try_send(&mut self, t: &Target) -> std::io::Result<usize> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&t.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::with_capacity(64 << 10, s));
        }
        let Some(stream) = self.stream.as_mut() else {
            unreachable!("connected above")
        };
        let connection = match t.mode {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
        };
        let request = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{}",
            t.method,
            t.path,
            t.addr,
            t.body.len(),
            t.body
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let ok = line.starts_with("HTTP/1.1 200");
        let (mut length, mut chunked, mut close) = (None, false, t.mode == Mode::Close);
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close |= value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut read = 0;
        if chunked {
            loop {
                line.clear();
                stream.read_line(&mut line).await?;
                let size = line.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                skip(stream, size).await?;
                read += size;
                let mut crlf = [0u8; 2];
                stream.read_exact(&mut crlf).await?;
            }
        } else if let Some(n) = length {
            skip(stream, n).await?;
            read = n;
        } else {
            read = tokio::io::copy_buf(stream, &mut tokio::io::sink()).await? as usize;
            close = true;
        }
        if close {
            self.stream = None;
        }
        Ok(if ok { read } else { 0 })
    }
}

/// Latencies and answers collected by one or more measurement phases.
#[derive(Default)]
struct Samples {
    /// Milliseconds per successful request.
    latencies: Vec<f64>,
    /// Successful requests answered before their phase's deadline.
    in_time: usize,
    /// Seconds measured (the phases' nominal lengths).
    seconds: f64,
    /// Size of an answer body.
    bytes: usize,
    errors: usize,
}

struct Figures {
    errors: usize,
    p50: f64,
    p99: f64,
    rps: f64,
    bytes: usize,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.in_time += other.in_time;
        self.seconds += other.seconds;
        self.bytes = self.bytes.max(other.bytes);
        self.errors += other.errors;
    }

    fn figures(mut self) -> Figures {
        if self.latencies.is_empty() {
            self.latencies.push(f64::NAN);
        }
        let all = &mut self.latencies;
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Figures {
            errors: self.errors,
            p50: pct(0.5),
            p99: pct(0.99),
            rps: self.in_time as f64 / self.seconds,
            bytes: self.bytes,
        }
    }
}

/// `clients` tasks repeating the request for `duration`.
async fn measure(clients: usize, duration: Duration, target: Arc<Target>) -> Samples {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new();
            let mut lat = Vec::new();
            let (mut bytes, mut errors, mut in_time) = (0, 0, 0);
            while started.elapsed() < duration {
                let t = Instant::now();
                match conn.send(&target).await {
                    0 => errors += 1,
                    n => {
                        bytes = n;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        in_time += usize::from(started.elapsed() <= duration);
                    }
                }
            }
            (lat, bytes, errors, in_time)
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        let (lat, b, e, n) = t.await.unwrap();
        samples.latencies.extend(lat);
        samples.bytes = samples.bytes.max(b);
        samples.errors += e;
        samples.in_time += n;
    }
    // Requests still running at the deadline finish and count as latency
    // samples, but not as throughput.
    samples.seconds = duration.as_secs_f64();
    samples
}

/// Measures `a` and `b` under the same load: `clients` tasks for
/// `2 × duration`, each alternating between the two request by request
/// (half the clients start with `a`, half with `b`), each target's samples
/// kept apart. Both targets thus see the same instants: this VM's speed
/// drift, a ClickHouse background merge or a stall falls on both alike,
/// where separate phases put it into whichever target ran then.
async fn measure_interleaved(
    clients: usize,
    duration: Duration,
    a: &Arc<Target>,
    b: &Arc<Target>,
) -> (Figures, Figures) {
    let total = duration * 2;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let targets = [a.clone(), b.clone()];
        tasks.push(tokio::spawn(async move {
            let mut conns = [Conn::new(), Conn::new()];
            let mut samples = [Samples::default(), Samples::default()];
            let mut turn = client % 2;
            while started.elapsed() < total {
                let t = Instant::now();
                let n = conns[turn].send(&targets[turn]).await;
                let s = &mut samples[turn];
                if n == 0 {
                    s.errors += 1;
                } else {
                    s.bytes = n;
                    s.latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    s.in_time += usize::from(started.elapsed() <= total);
                }
                turn = 1 - turn;
            }
            samples
        }));
    }
    let (mut sa, mut sb) = (Samples::default(), Samples::default());
    for task in tasks {
        let [ta, tb] = task.await.unwrap();
        sa.add(ta);
        sb.add(tb);
    }
    // Each target's throughput over the whole shared time.
    sa.seconds = total.as_secs_f64();
    sb.seconds = total.as_secs_f64();
    (sa.figures(), sb.figures())
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let url = clickhouse_url();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut config =
        strata_schemas::config::load_with_env(&repo.join("strata.toml"), |_| None).unwrap();
    let database = "strata_bench_api".to_string();
    config.clickhouse.url = url.clone();
    config.clickhouse.database = database.clone();
    // Latency under load is measured here, not admission: the 64-client
    // level must not meet the default cap of queries in flight (429).
    config.serving.max_concurrent_queries = config.serving.max_concurrent_queries.max(128);
    let client = warehouse::client(&config.clickhouse);
    warehouse::execute(&client, &format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .unwrap();
    warehouse::init(&client, &config).await.unwrap();
    let metric = config
        .metrics
        .iter()
        .find(|m| m.name == "page_views_per_minute")
        .unwrap()
        .clone();
    let watermark = S + 20 * 60 * MINUTE;

    // 24 h × 50 groups; the speed part split over two partitions.
    let now = Json::from(warehouse::now_datetime());
    let (mut batch, mut speed) = (Vec::new(), Vec::new());
    for minute in 0..1440i64 {
        let start = S + minute * MINUTE;
        for p in 0..PAGES {
            for (c, country) in COUNTRIES.iter().enumerate() {
                let n = 1 + ((minute * 31 + p as i64 * 7 + c as i64 * 3) % 97) as u64;
                let parts: Vec<u64> = if start < watermark {
                    vec![n]
                } else {
                    vec![n / 2, n - n / 2]
                };
                for (partition, count) in parts.iter().enumerate() {
                    let mut acc = metric.plan.new_accumulator();
                    acc.events = *count;
                    acc.numeric[0] = NumericState {
                        count: *count,
                        sum: *count as f64 * 1500.0,
                        min: 100.0,
                        max: 3000.0,
                    };
                    let mut row = Map::new();
                    row.insert("window_start_ms".into(), Json::from(start));
                    row.insert("window_end_ms".into(), Json::from(start + MINUTE));
                    row.insert("page".into(), Json::from(format!("/page/{p}")));
                    row.insert("country".into(), Json::from(*country));
                    warehouse::state::write_json(&metric.plan, &acc, &mut row);
                    row.insert("retracted".into(), Json::from(0));
                    row.insert("updated_at".into(), now.clone());
                    if start < watermark {
                        row.insert("run_id".into(), Json::from(1));
                        batch.push(row);
                    } else {
                        row.insert("kafka_partition".into(), Json::from(partition as i32));
                        row.insert("first_offset".into(), Json::from(0));
                        row.insert("last_offset".into(), Json::from(0));
                        row.insert("version".into(), Json::from(2));
                        row.insert("is_final".into(), Json::from(1));
                        speed.push(row);
                    }
                }
            }
        }
    }
    let t = Duration::from_secs(120);
    warehouse::insert_rows(
        &client,
        &database,
        &warehouse::batch_table(&metric.name),
        &batch,
        t,
    )
    .await
    .unwrap();
    warehouse::insert_rows(
        &client,
        &database,
        &warehouse::speed_table(&metric.name),
        &speed,
        t,
    )
    .await
    .unwrap();
    let mut run = Map::new();
    for (k, v) in [
        ("run_id", Json::from(1)),
        ("metric", Json::from(metric.name.clone())),
        ("status", Json::from("published")),
        ("from_ms", Json::from(S)),
        ("to_ms", Json::from(watermark)),
        ("watermark_ms", Json::from(watermark)),
        ("rows_read", Json::from(0)),
        ("rows_written", Json::from(0)),
        ("started_at", now.clone()),
        ("finished_at", now.clone()),
        ("message", Json::from("bench")),
    ] {
        run.insert(k.into(), v);
    }
    warehouse::insert_rows(&client, &database, warehouse::BATCH_RUNS_TABLE, &[run], t)
        .await
        .unwrap();
    println!(
        "filled {} batch rows and {} speed rows (24 h of 1-minute windows, 50 groups)",
        batch.len(),
        speed.len()
    );

    // The API, in process.
    let config = Arc::new(config);
    let cache = Arc::new(strata_serving::cache::LatestCache::default());
    tokio::spawn(
        cache
            .clone()
            .keep_fresh(config.clone(), client.clone(), Duration::from_secs(1)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let app = strata_serving::router(&config, cache);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let query = "/v1/metrics/page_views_per_minute/query?from=2026-11-22T10:00:00Z&to=2026-11-23T10:00:00Z&granularity=1m&top=10&order_by=views";
    // The state columns' names are the warehouse's.
    let events = warehouse::state::EVENTS_COLUMN;
    let [_, sum, _, _] = warehouse::state::StateField("duration_ms").numeric();
    let direct_sql = format!(
        "SELECT window_start_ms, page, country, sum(e) AS views, sum(s) AS total_duration_ms, sum(s) / sum(e) AS avg_duration_ms FROM (\
         SELECT window_start_ms, page, country, argMax({events}, run_id) AS e, argMax({sum}, run_id) AS s FROM {database}.page_views_per_minute_batch \
         WHERE window_start_ms >= {S} AND window_start_ms < {watermark} AND run_id IN (SELECT run_id FROM {database}.strata_batch_runs WHERE metric = 'page_views_per_minute' AND status = 'published') \
         GROUP BY window_start_ms, page, country \
         UNION ALL SELECT window_start_ms, page, country, argMax({events}, version) AS e, argMax({sum}, version) AS s FROM {database}.page_views_per_minute_speed \
         WHERE window_start_ms >= {watermark} AND window_start_ms < {} GROUP BY window_start_ms, page, country, kafka_partition) \
         GROUP BY window_start_ms, page, country ORDER BY window_start_ms, views DESC, page, country LIMIT 10 BY window_start_ms FORMAT JSONEachRow",
        S + 1440 * MINUTE
    );
    let ch_addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mode = Mode::from_env();
    let target = |addr: &str, method, path: &str, body: &str| {
        Arc::new(Target {
            addr: addr.to_string(),
            method,
            path: path.to_string(),
            body: body.to_string(),
            mode,
        })
    };
    let api_query = target(&api, "GET", query, "");
    let direct_query = target(&ch_addr, "POST", "/", &direct_sql);
    let rows = Conn::new().send(&api_query).await;
    println!("API answer: {rows} bytes; 14,400 rows (1,440 windows × top 10)");
    println!("connection mode: {}", mode.describe());
    // p99 needs samples: at 64 clients a 24-hour query runs ~17 times a
    // second on 2 cores, so 30 s gives ~500 samples per target.
    let duration = Duration::from_secs(
        std::env::var("STRATA_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    println!(
        "{} s per client count; every client alternates API and direct requests, so both share the same load and instants (req/s: each target's share)",
        2 * duration.as_secs()
    );
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "target", "clients", "p50 ms", "p99 ms", "req/s", "errors"
    );
    for clients in [1usize, 16, 64] {
        let (f, d) = measure_interleaved(clients, duration, &api_query, &direct_query).await;
        println!(
            "{:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            "API query (24h, 1m, top 10)", clients, f.p50, f.p99, f.rps, f.errors
        );
        println!(
            "{:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            "direct ClickHouse query", clients, d.p50, d.p99, d.rps, d.errors
        );
        println!(
            "{:<34} {:>8} {:>9} {:>9.2}x {:>9}   (answer bodies: API {} B, ClickHouse {} B)",
            "ratio API/direct p99",
            clients,
            "",
            f.p99 / d.p99,
            "",
            f.bytes,
            d.bytes
        );
    }
    let latest = target(
        &api,
        "GET",
        "/v1/metrics/page_views_per_minute/latest?page=%2Fpage%2F3&country=DE",
        "",
    );
    let l = measure(100, duration, latest).await.figures();
    println!(
        "{:<34} {:>8} {:>9.2} {:>9.2} {:>9.1} {:>7}",
        "API latest (cache)", 100, l.p50, l.p99, l.rps, l.errors
    );
    warehouse::execute(&client, &format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .unwrap();
}
