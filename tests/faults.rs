//! Faults: ClickHouse stopped for 30 s while events keep arriving, and broker
//! request errors injected with librdkafka's mock cluster. Nothing is lost or
//! double counted, and consumption resumes by itself.

mod support;

use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use support::expected;
use support::{ChildGuard, TestEnv, repo, terminate, wait_until};

const LATENESS_MS: i64 = 30_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private ClickHouse (its own STRATA_HOME and ports), so stopping it does
/// not disturb tests running in parallel.
struct PrivateClickHouse {
    home: tempfile::TempDir,
    ports: [u16; 4],
}

impl PrivateClickHouse {
    fn stack(&self, script: &str) {
        let status = Command::new(repo().join("deploy/local").join(script))
            .arg("clickhouse")
            .env("STRATA_HOME", self.home.path())
            .env("STRATA_CLICKHOUSE_HTTP_PORT", self.ports[0].to_string())
            .env("STRATA_CLICKHOUSE_TCP_PORT", self.ports[1].to_string())
            .env(
                "STRATA_CLICKHOUSE_INTERSERVER_PORT",
                self.ports[2].to_string(),
            )
            .env("STRATA_CLICKHOUSE_HTTPS_PORT", self.ports[3].to_string())
            .status()
            .unwrap();
        assert!(status.success(), "{script} clickhouse failed");
    }

    fn start() -> PrivateClickHouse {
        let ch = PrivateClickHouse {
            home: tempfile::tempdir().unwrap(),
            ports: [free_port(), free_port(), free_port(), free_port()],
        };
        ch.stack("up.sh");
        ch
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.stack("down.sh");
    }
}

#[tokio::test]
async fn clickhouse_down_for_30s_loses_nothing_and_consumption_resumes() {
    let clickhouse = PrivateClickHouse::start();
    let mut env = TestEnv::new("chdown", "");
    env.clickhouse_url = clickhouse.url();
    env.init();
    let config = ClickstreamConfig {
        seed: 31,
        events: 40_000,
        partitions: 2,
        start_ms: 1_795_341_600_000,
        step_ms: 20,
        ..ClickstreamConfig::default()
    };
    let records: Vec<_> = Clickstream::new(config.clone()).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));

    let mut speed = env.spawn_speed(0);
    // Events keep arriving during the outage: 40,000 at 800/s ≈ 50 s.
    let mut generator = ChildGuard(
        env.generate_command(&config)
            .args(["--rate", "800"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.speed_progress().await.0 > 2_000
        })
        .await,
        "{}",
        env.speed_log(0)
    );
    clickhouse.stack("down.sh");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = env.scrape();
    clickhouse.stack("up.sh");
    assert!(generator.wait().unwrap().success());

    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(120), || async {
            env.speed_progress().await == (expected.counted, session_events)
        })
        .await,
        "stuck at {:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert!(
        TestEnv::counter(&during, "strata_speed_backpressure_pauses_total") >= 1.0,
        "{during}"
    );
    assert!(
        TestEnv::counter(&during, "strata_speed_sink_retries_total") >= 1.0,
        "{during}"
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    let view = env.speed_view().await;
    assert_eq!(view, expected);
}

#[tokio::test]
async fn broker_request_errors_from_the_mock_cluster_lose_nothing() {
    let mock = MockCluster::new(3).unwrap();
    let mut env = TestEnv::new("mock", "");
    env.kafka_brokers = mock.bootstrap_servers();
    mock.create_topic(&env.topic, 3, 3).unwrap();
    // The mock cluster does not serve CreateTopics; Strata finds it existing.
    mock.create_topic(&format!("{}.dlq", env.topic), 3, 3)
        .unwrap();
    env.init();
    let config = ClickstreamConfig {
        seed: 41,
        events: 20_000,
        partitions: 3,
        start_ms: 1_795_341_600_000,
        step_ms: 20,
        ..ClickstreamConfig::default()
    };
    let records: Vec<_> = Clickstream::new(config.clone()).collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // All sent before any delivery is awaited: one round trip per record
    // took most of this test's two minutes on a 2-core CI machine.
    let deliveries: Vec<_> = records
        .iter()
        .map(|r| {
            producer
                .send_result(
                    FutureRecord::to(&env.topic)
                        .partition(r.partition)
                        .key(&r.key)
                        .payload(&r.payload),
                )
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let expected = expected::compute(&records, Some(LATENESS_MS));

    // Transient errors on fetches, offset commits, heartbeats and joins.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5],
    );
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
    );
    mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 2],
    );
    mock.request_errors(
        RDKafkaApiKey::JoinGroup,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 2],
    );

    let mut speed = env.spawn_speed(0);
    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(120), || async {
            env.speed_progress().await.0 > 5_000
        })
        .await,
        "{}",
        env.speed_log(0)
    );
    // More errors mid-run.
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART; 5],
    );
    mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 2],
    );
    assert!(
        wait_until(Duration::from_secs(180), || async {
            env.speed_progress().await == (expected.counted, session_events)
        })
        .await,
        "stuck at {:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    assert_eq!(env.speed_view().await, expected);
    env.drop_database().await;
}

/// A flush whose windows span more months than ClickHouse takes in one
/// INSERT (100 partitions; code 252, which retrying cannot fix) was retried
/// forever: 200 events a month apart, replayed at once (their record
/// timestamps are their event times, so they are within the source's
/// bounds), must all reach every speed table.
#[tokio::test]
async fn a_flush_spanning_200_months_is_written_whole() {
    let mock = MockCluster::new(1).unwrap();
    let mut env = TestEnv::new("months", "");
    env.kafka_brokers = mock.bootstrap_servers();
    mock.create_topic(&env.topic, 1, 1).unwrap();
    mock.create_topic(&format!("{}.dlq", env.topic), 1, 1)
        .unwrap();
    env.init();
    const MONTHS: i64 = 200;
    const FIRST_MS: i64 = 1_199_145_600_000; // 2008-01-01
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    for month in 0..MONTHS {
        let time_ms = FIRST_MS + month * 31 * 24 * 3_600_000;
        let payload = serde_json::json!({
            "event_time": time_ms, "user_id": format!("u{month}"), "page": "/p",
            "country": "de", "duration_ms": 5,
        })
        .to_string();
        producer
            .send(
                FutureRecord::to(&env.topic)
                    .partition(0)
                    .key("k")
                    .payload(&payload)
                    .timestamp(time_ms),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let mut speed = env.spawn_speed(0);
    let db = env.database.clone();
    let counts = || async {
        let mut out = Vec::new();
        for table in ["page_views_per_minute_speed", "user_sessions_speed"] {
            let rows = support::try_rows_at(
                &env.clickhouse_url,
                &format!(
                    "SELECT count() AS windows, sum(agg_events) AS events, \
                     uniqExact(toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))) AS months \
                     FROM {db}.{table} FINAL WHERE retracted = 0"
                ),
            )
            .await
            .unwrap_or_default();
            out.push(rows.first().map_or((0, 0, 0), |r| {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                (n("windows"), n("events"), n("months"))
            }));
        }
        out
    };
    let whole = (MONTHS as u64, MONTHS as u64, MONTHS as u64);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            counts().await == [whole, whole]
        })
        .await,
        "(windows, events, months) of the per-minute and session tables: {:?}, expected {whole:?} each\n{}",
        counts().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    env.drop_database().await;
}
