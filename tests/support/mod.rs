//! Shared helpers of the end-to-end tests: where the real servers are, and
//! how to run the `strata` binary against them.
//!
//! The servers are started by `deploy/local/up.sh` (which the README's test
//! command runs first). Their endpoints come from the environment or, when a
//! developer runs `cargo test` by hand after `up.sh`, from `.strata/stack.env`.

#![allow(dead_code)]

pub mod archive;
pub mod grafana;
pub mod views;

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An endpoint from the environment or `.strata/stack.env`; panics with the
/// fix when neither has it (a test that silently skips would prove nothing).
pub fn endpoint(name: &str) -> String {
    endpoint_in("stack.env", "deploy/local/up.sh", name)
}

/// An endpoint of the TLS listeners (`deploy/local/up.sh tls`), from the
/// environment or `$STRATA_HOME/tls.env`.
pub fn tls_endpoint(name: &str) -> String {
    endpoint_in("tls.env", "deploy/local/up.sh tls", name)
}

fn endpoint_in(file: &str, starter: &str, name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let env_file = std::env::var("STRATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".strata"))
        .join(file);
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        for line in text.lines() {
            let line = line.trim_start_matches("export ").trim();
            if let Some(value) = line.strip_prefix(&format!("{name}=")) {
                return value.trim_matches('"').trim_matches('\'').to_string();
            }
        }
    }
    panic!(
        "{name} is not set and {} does not define it: start it with {starter} \
         (scripts/test.sh does it for you)",
        env_file.display()
    );
}

/// Like [`endpoint`], but `None` when it is defined nowhere.
pub fn optional_endpoint(name: &str) -> Option<String> {
    std::panic::catch_unwind(|| endpoint(name)).ok()
}

/// Valid events among generated records.
pub fn valid(records: &[strata_generator::clickstream::GeneratedRecord]) -> u64 {
    records.iter().filter(|r| r.event.is_some()).count() as u64
}

/// ClickHouse HTTP URL.
pub fn clickhouse_url() -> String {
    endpoint("STRATA_CLICKHOUSE_URL")
}

/// Kafka bootstrap servers of the Tansu broker.
pub fn kafka_brokers() -> String {
    endpoint("STRATA_KAFKA_BROKERS")
}

/// A name unique to this test process and call site.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// A consumer of partitions `0..partitions` of `topic` at `brokers`, each
/// from its first record, in a group of its own (named after `group`):
/// how tests read back what landed in a topic.
pub fn read_from_start(
    brokers: &str,
    topic: &str,
    partitions: i32,
    group: &str,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique(group))
        .set("enable.auto.commit", "false")
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// The `strata` binary with the reference config and the local endpoints.
pub fn strata() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("--config").arg(repo().join("strata.toml"));
    cmd.env("STRATA_CLICKHOUSE_URL", clickhouse_url());
    cmd.env("STRATA_KAFKA_BROKERS", kafka_brokers());
    cmd
}

/// The `strata` binary with only ClickHouse configured.
pub fn strata_clickhouse_only() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("--config").arg(repo().join("strata.toml"));
    cmd.env("STRATA_CLICKHOUSE_URL", clickhouse_url());
    cmd
}

/// Runs a command, asserting success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("strata runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// A ClickHouse client (no schema validation: ClickHouse 18.16).
pub fn clickhouse() -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}

/// Rows of a query as JSON objects.
pub async fn rows(sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    rows_at(&clickhouse_url(), sql).await
}

/// Rows of a query on the ClickHouse at `url` (empty if it is down).
pub async fn try_rows_at(
    url: &str,
    sql: &str,
) -> Option<Vec<serde_json::Map<String, serde_json::Value>>> {
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let bytes = client
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .ok()?
        .collect()
        .await
        .ok()?;
    Some(
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect(),
    )
}

/// Runs a statement (INSERT, ALTER...) on the ClickHouse at `url`.
pub async fn execute_at(url: &str, sql: &str) {
    clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// An HTTP answer: status, lower-cased headers, body.
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: std::collections::HashMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// The rows the API answers for `metric` over the reference data's hours
/// (2026-11-22 09:00 to 13:00 UTC), in the API's order.
pub fn query_rows(port: u16, metric: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let answer = http_get(
        port,
        &format!("/v1/metrics/{metric}/query?from=2026-11-22T09:00:00Z&to=2026-11-22T13:00:00Z"),
        &[],
    );
    answer_rows(&answer)
}

/// The `rows` of a 200 answer of the query API.
pub fn answer_rows(answer: &HttpAnswer) -> Vec<serde_json::Map<String, serde_json::Value>> {
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

/// A minimal HTTP/1.1 GET (the tests need no client library): `target` is
/// sent as is, so tests can send raw, hostile request targets.
pub fn http_get(port: u16, target: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP answer to {target}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = out;
    }
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// Rows of a query on the ClickHouse at `url`.
pub async fn rows_at(url: &str, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let bytes = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// An isolated environment: its own topic, consumer group, ClickHouse
/// database and config file, so tests run in parallel on shared servers.
pub struct TestEnv {
    /// Holds the config file and logs.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Source topic.
    pub topic: String,
    /// ClickHouse database.
    pub database: String,
    /// Port of the speed layer's Prometheus endpoint.
    pub metrics_port: u16,
    /// ClickHouse this environment uses (default: the shared one).
    pub clickhouse_url: String,
    /// Kafka brokers this environment uses (default: the shared Tansu).
    pub kafka_brokers: String,
    /// The master dataset's directory (`object_store.url` is `file://` it).
    pub lake: PathBuf,
    /// When set, the `strata` processes reach ClickHouse at this URL (e.g.
    /// its https:// port) trusting this CA file; the test's own reads keep
    /// `clickhouse_url`.
    pub strata_clickhouse_https: Option<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestEnv {
    /// A fresh environment named after `name`; `extra` is appended to the
    /// generated config (e.g. `[kafka.properties]`).
    pub fn new(name: &str, extra: &str) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(name);
        let database = unique(&format!("strata_{name}"));
        let group = unique(&format!("{name}_speed"));
        let metrics_port = free_port();
        let lake = dir.path().join("lake");
        let text = std::fs::read_to_string(repo().join("strata.toml")).unwrap();
        let contracts = repo().join("schemas/contracts");
        let text = text
            .replace(
                "dir = \"schemas/contracts\"",
                &format!("dir = {:?}", contracts.display().to_string()),
            )
            .replace("topic = \"page_views\"", &format!("topic = {topic:?}"))
            .replace(
                "group_id = \"strata-speed\"",
                &format!("group_id = {group:?}"),
            )
            .replace(
                "metrics_listen = \"127.0.0.1:9464\"",
                &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
            )
            .replace(
                "url = \"file://./.strata/lake\"",
                &format!("url = \"file://{}\"", lake.display()),
            )
            .replace(
                "group_id = \"strata-archive\"",
                &format!("group_id = {:?}", unique(&format!("{name}_archive"))),
            )
            .replace("flush_interval = \"60s\"", "flush_interval = \"1s\"")
            // The fixtures' event times are fixed (November 2026) while the
            // generator's records carry the time they are sent: ten years
            // of `max_past` keeps the suite from expiring a year after them
            // (and still refuses a 1970 event).
            .replace("max_past = \"365d\"", "max_past = \"3650d\"")
            .replace(
                "metrics_listen = \"127.0.0.1:9465\"",
                &format!("metrics_listen = \"127.0.0.1:{}\"", free_port()),
            )
            .replace(
                "metrics_listen = \"127.0.0.1:9466\"",
                &format!("metrics_listen = \"127.0.0.1:{}\"", free_port()),
            )
            .replace(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"127.0.0.1:{}\"", free_port()),
            );
        let config = dir.path().join("strata.toml");
        std::fs::write(&config, format!("{text}\n{extra}\n")).unwrap();
        TestEnv {
            dir,
            config,
            topic,
            database,
            metrics_port,
            clickhouse_url: clickhouse_url(),
            kafka_brokers: kafka_brokers(),
            lake,
            strata_clickhouse_https: None,
        }
    }

    /// `strata` with this environment's config and endpoints.
    pub fn strata(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.arg("--config").arg(&self.config);
        match &self.strata_clickhouse_https {
            Some((url, ca_file)) => {
                cmd.env("STRATA_CLICKHOUSE_URL", url);
                cmd.env("STRATA_CLICKHOUSE_CA_FILE", ca_file);
            }
            None => {
                cmd.env("STRATA_CLICKHOUSE_URL", &self.clickhouse_url);
            }
        }
        cmd.env("STRATA_KAFKA_BROKERS", &self.kafka_brokers);
        cmd.env("STRATA_CLICKHOUSE_DATABASE", &self.database);
        cmd.env("RUST_LOG", "info,rdkafka=warn");
        for name in [
            "STRATA_S3_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        ] {
            if let Some(v) = optional_endpoint(name) {
                cmd.env(name, v);
            }
        }
        cmd
    }

    /// Runs `strata init`.
    pub fn init(&self) {
        run_ok(self.strata().arg("init"));
    }

    /// Starts `strata speed` in the background, logging to `speed-<n>.log`.
    /// Process 0 serves metrics on the configured port (the one
    /// [`Self::scrape`] reads); the others, members of the same group
    /// running next to it, each on a free one.
    pub fn spawn_speed(&self, n: usize) -> ChildGuard {
        let log = std::fs::File::create(self.dir.path().join(format!("speed-{n}.log"))).unwrap();
        let mut cmd = self.strata();
        cmd.arg("speed");
        if n > 0 {
            cmd.env(
                "STRATA_SPEED_METRICS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            );
        }
        ChildGuard(
            cmd.stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Starts `strata speed` in consumer group `group` (unique per test).
    pub fn spawn_speed_in_group(&self, n: usize, group: &str) -> ChildGuard {
        let log = std::fs::File::create(self.dir.path().join(format!("speed-{n}.log"))).unwrap();
        ChildGuard(
            self.strata()
                .arg("speed")
                .env("STRATA_SPEED_GROUP_ID", format!("{}-{group}", self.topic))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Starts `strata <command>` in the background, logging to `<log>.log`.
    pub fn spawn(&self, command: &[&str], log: &str) -> ChildGuard {
        let file = std::fs::File::create(self.dir.path().join(format!("{log}.log"))).unwrap();
        ChildGuard(
            self.strata()
                .args(command)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap(),
        )
    }

    /// The log written by [`Self::spawn`].
    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{log}.log"))).unwrap_or_default()
    }

    /// Events committed by the archive: the sum of `events` over the
    /// progress objects of source `page_views`.
    pub fn archived_events(&self) -> u64 {
        self.archived_events_of("page_views", &self.topic)
    }

    /// Events the archive committed for `source`'s `topic`.
    pub fn archived_events_of(&self, source: &str, topic: &str) -> u64 {
        let dir = self.lake.join("_strata/archive").join(source).join(topic);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter_map(|v| v["events"].as_u64())
            .sum()
    }

    /// The loopback port a section of this environment's config listens on
    /// (`key` is `listen` or `metrics_listen`).
    pub fn port(&self, section: &str, key: &str) -> u16 {
        std::fs::read_to_string(&self.config)
            .unwrap()
            .split(&format!("[{section}]"))
            .nth(1)
            .and_then(|s| s.split(&format!("{key} = \"127.0.0.1:")).nth(1))
            .and_then(|s| s.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no {section}.{key} in {}", self.config.display()))
    }

    /// Starts `strata serve` and waits until `/readyz` answers 200.
    pub async fn start_server(&self) -> (ChildGuard, u16) {
        let port = self.port("serving", "listen");
        let child = self.spawn(&["serve"], "serve");
        let up = wait_until(std::time::Duration::from_secs(60), || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/readyz", &[]).status == 200
        })
        .await;
        assert!(up, "serve did not become ready:\n{}", self.log("serve"));
        (child, port)
    }

    /// Runs `strata archive` until every valid event is committed, then
    /// stops it with SIGTERM and checks it exited cleanly.
    pub async fn archive_all(&self, expected_events: u64) {
        let mut archive = self.spawn(&["archive"], "archive");
        let done = wait_until(std::time::Duration::from_secs(300), || async {
            self.archived_events() == expected_events
        })
        .await;
        assert!(
            done,
            "archive stuck at {} of {expected_events} events; log:\n{}\nprogress: {:?}",
            self.archived_events(),
            self.log("archive"),
            std::fs::read_dir(
                self.lake
                    .join("_strata/archive/page_views")
                    .join(&self.topic)
            )
            .map(|d| d
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect::<Vec<_>>())
            .unwrap_or_default()
        );
        // Earlier incarnations may have archived everything already: stop
        // this one only once it runs (a SIGTERM before the signal handler
        // is installed kills instead of stopping cleanly).
        wait_until(std::time::Duration::from_secs(60), || async {
            self.log("archive").contains("archiver subscribed")
        })
        .await;
        assert_eq!(
            terminate(&mut archive.0),
            Some(0),
            "{}",
            self.log("archive")
        );
    }

    /// (run id, watermark) of the newest published batch run of `metric`.
    pub async fn published(&self, metric: &str) -> (u64, i64) {
        let rows = rows_at(
            &self.clickhouse_url,
            &format!(
                "SELECT run_id, watermark_ms FROM {}.strata_batch_runs WHERE metric = '{metric}' AND status = 'published' ORDER BY run_id DESC LIMIT 1",
                self.database
            ),
        )
        .await;
        assert_eq!(rows.len(), 1, "{metric} has a published run");
        (
            rows[0]["run_id"].as_u64().unwrap(),
            rows[0]["watermark_ms"].as_i64().unwrap(),
        )
    }

    /// Pins the checkpoint namespace (independent of the group id).
    pub fn set_checkpoint_namespace(&self, namespace: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            "[speed]\n",
            &format!(
                "[speed]\ncheckpoint_namespace = {:?}\n",
                format!("{}-{namespace}", self.topic)
            ),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// A small stream over two partitions, a fifth of it out of order by
    /// up to 10 s (none late), for the end-to-end runs over other
    /// transports ([`Self::speed_view_of_equals_expected`]).
    pub fn two_partition_stream(
        seed: u64,
        events: u64,
        users: u32,
    ) -> strata_generator::clickstream::ClickstreamConfig {
        strata_generator::clickstream::ClickstreamConfig {
            seed,
            events,
            users,
            partitions: 2,
            start_ms: 1_795_341_600_000,
            step_ms: 50,
            out_of_order_fraction: 0.2,
            max_disorder_ms: 10_000,
            ..strata_generator::clickstream::ClickstreamConfig::default()
        }
    }

    /// Generates `stream`, runs `strata speed` until its view holds every
    /// event the independent aggregates count (or `timeout`), stops it
    /// (SIGTERM, a clean exit) and checks the view equals those aggregates.
    /// `path` names the transport in failure messages.
    pub async fn speed_view_of_equals_expected(
        &self,
        stream: strata_generator::clickstream::ClickstreamConfig,
        timeout: std::time::Duration,
        path: &str,
    ) {
        self.generate(&stream);
        let records: Vec<_> = strata_generator::clickstream::Clickstream::new(stream).collect();
        let expected = expected::compute(&records, Some(30_000));
        let mut speed = self.spawn_speed(0);
        let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
        let done = wait_until(timeout, || async {
            self.speed_progress().await == (expected.counted, session_events)
        })
        .await;
        assert!(
            done,
            "speed view stuck at {:?} {path}, expected ({}, {session_events}); log:\n{}",
            self.speed_progress().await,
            expected.counted,
            self.speed_log(0)
        );
        assert_eq!(terminate(&mut speed), Some(0), "{}", self.speed_log(0));
        let view = self.speed_view().await;
        assert_eq!(view.per_minute, expected.per_minute, "{path}");
        assert_eq!(view.active_users, expected.active_users, "{path}");
        assert_eq!(view.sessions, expected.sessions, "{path}");
    }

    /// The log of speed process `n`.
    pub fn speed_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("speed-{n}.log"))).unwrap_or_default()
    }

    /// Whether speed process `n` logged a partition assignment: not the
    /// consumer group watchdog's "no partition assigned" warning, whose
    /// words a plain `contains("partition assigned")` also matched (a run
    /// once took it for an assignment and waited 400 s on a member that
    /// had none).
    pub fn speed_assigned(&self, n: usize) -> bool {
        self.speed_log(n)
            .lines()
            .any(|l| l.contains("partition assigned") && !l.contains("no partition assigned"))
    }

    /// The speed layer's Prometheus text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Sum of every sample of Prometheus counter `name` in `text`.
    pub fn counter(text: &str, name: &str) -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Generates `config` into this environment's topic.
    pub fn generate(&self, config: &strata_generator::clickstream::ClickstreamConfig) {
        run_ok(&mut self.generate_command(config));
    }

    /// The `strata generate` command for `config` (add `--rate` to pace it).
    pub fn generate_command(
        &self,
        config: &strata_generator::clickstream::ClickstreamConfig,
    ) -> Command {
        let c = config;
        let mut cmd = self.strata();
        cmd.args([
            "generate",
            "--quiet",
            "--seed",
            &c.seed.to_string(),
            "--events",
            &c.events.to_string(),
            "--users",
            &c.users.to_string(),
            "--pages",
            &c.pages.to_string(),
            "--countries",
            &c.countries.to_string(),
            "--partitions",
            &c.partitions.to_string(),
            "--start",
            &c.start_ms.to_string(),
            "--step-ms",
            &c.step_ms.to_string(),
            "--out-of-order",
            &c.out_of_order_fraction.to_string(),
            "--max-disorder-ms",
            &c.max_disorder_ms.to_string(),
            "--late",
            &c.late_fraction.to_string(),
            "--late-by-ms",
            &c.late_by_ms.to_string(),
            "--malformed",
            &c.malformed_fraction.to_string(),
            "--invalid",
            &c.invalid_fraction.to_string(),
            "--cohort-ms",
            &c.cohort_ms.to_string(),
        ]);
        cmd
    }

    /// The speed view of the three reference metrics, partitions merged.
    pub async fn speed_view(&self) -> expected::Expected {
        let db = &self.database;
        let mut view = expected::Expected::default();
        let url = &self.clickhouse_url;
        for r in rows_at(url, &format!(
            "SELECT window_start_ms, page, country, sum(agg_events) AS c, sum(agg_duration_ms_sum) AS s \
             FROM {db}.page_views_per_minute_speed FINAL WHERE retracted = 0 GROUP BY window_start_ms, page, country"
        ))
        .await
        {
            let c = r["c"].as_u64().unwrap();
            view.counted += c;
            view.per_minute.insert(
                (r["window_start_ms"].as_i64().unwrap(), r["page"].as_str().unwrap().into(), r["country"].as_str().unwrap().into()),
                (c, r["s"].as_f64().unwrap() as i64),
            );
        }
        for r in rows_at(url, &format!(
            "SELECT window_start_ms, country, length(groupUniqArrayArray(agg_user_id_distinct_hashes)) AS u \
             FROM {db}.active_users_5m_speed FINAL WHERE retracted = 0 GROUP BY window_start_ms, country"
        ))
        .await
        {
            view.active_users
                .insert((r["window_start_ms"].as_i64().unwrap(), r["country"].as_str().unwrap().into()), r["u"].as_u64().unwrap());
        }
        for r in rows_at(url, &format!(
            "SELECT user_id, window_start_ms, window_end_ms, sum(agg_events) AS c, sum(agg_duration_ms_sum) AS s \
             FROM {db}.user_sessions_speed FINAL WHERE retracted = 0 GROUP BY user_id, window_start_ms, window_end_ms"
        ))
        .await
        {
            view.sessions.insert(
                (
                    r["user_id"].as_str().unwrap().into(),
                    r["window_start_ms"].as_i64().unwrap(),
                    r["window_end_ms"].as_i64().unwrap(),
                ),
                (r["c"].as_u64().unwrap(), r["s"].as_f64().unwrap() as i64),
            );
        }
        view
    }

    /// Events counted so far in the speed view of page_views_per_minute and
    /// user_sessions (the progress probe of the speed tests).
    pub async fn speed_progress(&self) -> (u64, u64) {
        let db = &self.database;
        let url = self.clickhouse_url.clone();
        let one = |sql: String| {
            let url = url.clone();
            async move {
                try_rows_at(&url, &sql)
                    .await
                    .and_then(|rows| rows.first().and_then(|r| r["c"].as_u64()))
                    .unwrap_or(0)
            }
        };
        (
            one(format!("SELECT sum(agg_events) AS c FROM {db}.page_views_per_minute_speed FINAL WHERE retracted = 0")).await,
            one(format!("SELECT sum(agg_events) AS c FROM {db}.user_sessions_speed FINAL WHERE retracted = 0")).await,
        )
    }

    /// Drops the database.
    pub async fn drop_database(&self) {
        let _ = clickhouse()
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await;
    }
}

/// A child process that is killed when the guard drops (a failing test must
/// not leave a consumer running against the shared servers).
pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM, then waits; returns the exit code.
pub fn terminate(child: &mut std::process::Child) -> Option<i32> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    // Strata bounds its own graceful shutdown (30 s); never hang a test on a
    // process that ignores that: SIGKILL it and report no exit code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Polls `probe` every 250 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    false
}

pub mod expected;
