//! Dead letters end to end: malformed, schema-invalid and oversized records
//! all land in `<topic>.dlq` unchanged, with their reasons in headers; every
//! valid record is counted; `strata dlq replay` brings them back.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::{
    TestEnv, kafka_brokers, read_from_start, rows_at, run_ok, terminate, unique, wait_until,
};

/// One record read back.
#[derive(Debug)]
struct Read {
    partition: i32,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Every record of `topic` (all partitions, from the beginning): (payload, headers).
fn read_all(
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    read_at(&kafka_brokers(), topic, partitions, expected)
        .into_iter()
        .map(|r| (r.payload, r.headers))
        .collect()
}

/// Every record of `topic` at `brokers`: waits for `expected`, then one
/// more second, in which nothing else may arrive.
fn read_at(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Vec<Read> {
    let consumer = read_from_start(brokers, topic, partitions, "dlq_check");
    let mut out = Vec::new();
    let read = |m: &rdkafka::message::BorrowedMessage<'_>| {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).to_string(),
                );
            }
        }
        Read {
            partition: m.partition(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(read(&m));
        }
    }
    // Nothing more arrives.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(read(&m));
        }
    }
    out
}

#[tokio::test]
async fn bad_records_go_to_the_dlq_with_reasons_and_replay_brings_them_back() {
    let env = TestEnv::new("dlq", "");
    env.init();
    let config = ClickstreamConfig {
        seed: 21,
        events: 5_000,
        partitions: 2,
        start_ms: 1_795_341_600_000,
        malformed_fraction: 0.03,
        invalid_fraction: 0.03,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    // Two oversized records (over max_event_bytes = 64 KiB), sent directly.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("broker.address.family", "v4")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let huge = format!(
        r#"{{"event_time":"2026-11-22T10:00:01Z","user_id":"u1","page":"/p","country":"DE","duration_ms":1,"referrer":"{}"}}"#,
        "x".repeat(70_000)
    );
    for p in 0..2 {
        producer
            .send(
                BaseRecord::to(&env.topic)
                    .partition(p)
                    .key("u1")
                    .payload(huge.as_bytes()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let records: Vec<_> = Clickstream::new(config).collect();
    let malformed = records
        .iter()
        .filter(|r| r.kind == RecordKind::Malformed)
        .count();
    let invalid = records
        .iter()
        .filter(|r| r.kind == RecordKind::Invalid)
        .count();
    let valid = records.iter().filter(|r| r.event.is_some()).count() as u64;
    assert!(malformed > 50 && invalid > 50);

    let mut speed = env.spawn_speed(0);
    assert!(
        wait_until(Duration::from_secs(120), || async {
            env.speed_progress().await.0 == valid
        })
        .await,
        "valid events counted: {:?} of {valid}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    assert_eq!(
        env.speed_progress().await.0,
        valid,
        "every valid record counted, nothing else"
    );

    let dlq = format!("{}.dlq", env.topic);
    let dead = read_all(&dlq, 2, malformed + invalid + 2);
    assert_eq!(dead.len(), malformed + invalid + 2, "dead letters");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (payload, headers) in &dead {
        let kind = headers
            .get("strata.error.kind")
            .cloned()
            .unwrap_or_default();
        *kinds.entry(kind.clone()).or_default() += 1;
        let message = &headers["strata.error.message"];
        assert_eq!(headers["strata.contract"], "page_view");
        assert_eq!(headers["strata.contract.version"], "2");
        assert_eq!(headers["strata.source.topic"], env.topic);
        assert!(headers["strata.source.offset"].parse::<i64>().is_ok());
        match kind.as_str() {
            "oversized" => {
                assert_eq!(payload.len(), huge.len(), "payload unchanged");
                assert!(message.contains("over the 65536 byte limit"), "{message}");
            }
            "wrong_type" | "missing_field" | "unknown_field" => {
                assert!(headers.contains_key("strata.error.field"), "{headers:?}");
                assert!(message.contains("field \""), "{message}");
            }
            "malformed_json" | "not_an_object" => {}
            other => panic!("unexpected kind {other}: {message}"),
        }
    }
    assert_eq!(kinds["oversized"], 2);
    assert_eq!(
        kinds.get("malformed_json").copied().unwrap_or(0)
            + kinds.get("not_an_object").copied().unwrap_or(0),
        malformed
    );

    // Replay: every dead letter comes back, unchanged, to a topic of our choice.
    let target = unique("dlq_replayed");
    strata_speed_topic(&target).await;
    let out = run_ok(
        env.strata()
            .args(["dlq", "replay", "--to-topic", &target, "--quiet"]),
    );
    let total = malformed + invalid + 2;
    assert!(
        out.contains(&format!("replayed {total} of {total} scanned dead letters")),
        "{out}"
    );
    let replayed = read_all(&target, 1, total);
    assert_eq!(replayed.len(), total);
    let mut a: Vec<&Vec<u8>> = dead.iter().map(|(p, _)| p).collect();
    let mut b: Vec<&Vec<u8>> = replayed.iter().map(|(p, _)| p).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "replayed payloads are the dead letters, unchanged");
    assert!(replayed.iter().all(|(_, h)| {
        h.get("strata.replayed_from")
            .is_some_and(|v| v.starts_with(&dlq))
    }));

    // A range replay by offset only takes that range.
    let out = run_ok(env.strata().args([
        "dlq",
        "replay",
        "--to-topic",
        &target,
        "--partition",
        "0",
        "--from-offset",
        "0",
        "--to-offset",
        "3",
        "--quiet",
    ]));
    assert!(
        out.contains("replayed 3 of 3 scanned dead letters"),
        "{out}"
    );
    env.drop_database().await;
}

/// Creates a one-partition topic.
async fn strata_speed_topic(topic: &str) {
    let kafka = strata_schemas::config::KafkaSection {
        brokers: kafka_brokers(),
        ..Default::default()
    };
    strata_kafka::ensure_topic(&kafka, topic, 1).await.unwrap();
}

/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600_000;

fn page_view(time_ms: i64, user: &str, referrer_bytes: usize) -> String {
    format!(
        r#"{{"event_time":{time_ms},"user_id":"{user}","page":"/p","country":"DE","duration_ms":1,"referrer":"{}"}}"#,
        "r".repeat(referrer_bytes)
    )
}

/// Issue 18, item 2: a dead-letter topic with fewer partitions than its
/// source, a bad record larger than the producer's `message.max.bytes`,
/// and produce errors on the dead-letter topic that clear later: the speed
/// process neither dies nor loses a record; every dead letter arrives once.
/// Then `strata dlq replay` reports failed sends and exits non-zero, and
/// succeeds once the broker accepts writes again.
#[tokio::test]
async fn dead_letters_survive_a_smaller_dlq_an_oversized_record_and_produce_errors() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let mock = MockCluster::new(3).unwrap();
    let mut env = TestEnv::new("dlqmock", "");
    env.kafka_brokers = mock.bootstrap_servers();
    mock.create_topic(&env.topic, 4, 3).unwrap();
    let dlq = format!("{}.dlq", env.topic);
    mock.create_topic(&dlq, 1, 3).unwrap();
    env.init();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    // Per partition: 50 valid events, a malformed record at offsets 10 and
    // 30; partition 2 also a 1.5 MB record (oversized: over
    // max_event_bytes, and over the dead-letter producer's 1 MB limit).
    let huge = page_view(T0 + 20_000, "u2", 1_500_000);
    let mut bad = 0;
    for p in 0..4 {
        for i in 0..50 {
            if i == 10 || i == 30 {
                producer
                    .send(
                        BaseRecord::to(&env.topic)
                            .partition(p)
                            .key("k")
                            .payload("{not json"),
                    )
                    .unwrap();
                bad += 1;
            }
            if p == 2 && i == 20 {
                producer
                    .send(
                        BaseRecord::to(&env.topic)
                            .partition(p)
                            .key("k")
                            .payload(&huge),
                    )
                    .unwrap();
                bad += 1;
            }
            let event = page_view(T0 + i * 1_000, &format!("u{p}"), 0);
            producer
                .send(
                    BaseRecord::to(&env.topic)
                        .partition(p)
                        .key("k")
                        .payload(&event),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(bad, 9);

    // The first dead-letter produce requests are refused.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
    );
    let mut speed = env.spawn_speed(0);
    let done = wait_until(Duration::from_secs(90), || async {
        env.speed_progress().await == (200, 200)
    })
    .await;
    assert!(
        done,
        "valid events counted: {:?} of 200\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    let letters = read_at(&mock.bootstrap_servers(), &dlq, 1, bad);
    let metrics = env.scrape();
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    assert_eq!(
        env.speed_progress().await,
        (200, 200),
        "nothing else counted"
    );
    assert!(
        TestEnv::counter(&metrics, "strata_speed_dead_letter_failures_total") >= 1.0,
        "the refused deliveries are counted:\n{metrics}"
    );
    assert!(
        env.speed_log(0).contains("dead letter delivery failed"),
        "{}",
        env.speed_log(0)
    );
    // Each bad record exactly once, all in the DLQ's one partition.
    let mut origins: Vec<(String, String)> = letters
        .iter()
        .map(|r| {
            assert_eq!(r.partition, 0);
            (
                r.headers["strata.source.partition"].clone(),
                r.headers["strata.source.offset"].clone(),
            )
        })
        .collect();
    origins.sort();
    let want: Vec<(String, String)> = [
        ("0", "10"),
        ("0", "31"),
        ("1", "10"),
        ("1", "31"),
        ("2", "10"),
        ("2", "21"),
        ("2", "32"),
        ("3", "10"),
        ("3", "31"),
    ]
    .iter()
    .map(|(p, o)| (p.to_string(), o.to_string()))
    .collect();
    assert_eq!(origins, want, "dead letters by (source partition, offset)");
    let oversized: Vec<&Read> = letters
        .iter()
        .filter(|r| r.headers["strata.error.kind"] == "oversized")
        .collect();
    assert_eq!(oversized.len(), 1);
    let o = oversized[0];
    assert_eq!(o.payload.len(), 524_288, "payload cut to the limit");
    assert_eq!(&o.payload[..], &huge.as_bytes()[..524_288]);
    assert_eq!(o.headers["strata.payload.truncated"], "true");
    assert_eq!(o.headers["strata.payload.size"], huge.len().to_string());
    assert_eq!(o.headers["strata.payload.fnv1a64"].len(), 16);

    // Replay while the broker refuses writes: failures named, exit non-zero.
    let target = unique("dlq_mock_replayed");
    mock.create_topic(&target, 1, 3).unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1],
    );
    let out = env
        .strata()
        .args(["dlq", "replay", "--to-topic", &target, "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("8 dead letter(s) could not be replayed")
            && stderr.contains(&format!("failed: {dlq}/0/")),
        "{stderr}"
    );
    let out = run_ok(
        env.strata()
            .args(["dlq", "replay", "--to-topic", &target, "--quiet"]),
    );
    // The cut letter is not replayed (its payload would only be a new bad
    // record): the replay names it and where its original is.
    assert!(
        out.contains("replayed 8 of 9 scanned dead letters")
            && out.contains("not replayed: 1 dead letter(s) whose payload was cut")
            && out.contains(&format!(": {}/2/21", env.topic)),
        "{out}"
    );
    assert_eq!(read_at(&mock.bootstrap_servers(), &target, 1, 8).len(), 8);
    env.drop_database().await;
}

/// Issue 18, item 3: a speed process killed with SIGKILL and restarted
/// replays its open windows (sessions: everything here) without sending
/// their dead letters again, and `strata dlq replay` sends each source
/// record once even when the dead-letter topic holds it twice: after the
/// replay of the fixed records, each is counted exactly once.
#[tokio::test]
async fn a_crash_and_a_replay_count_each_fixed_record_once() {
    let env = TestEnv::new("dlqcrash", "");
    env.set_checkpoint_namespace("crash");
    env.init();
    strata_speed_topic_with(&env.topic, 2).await;
    let dlq = format!("{}.dlq", env.topic);
    // Per partition: 30 events, and three whose Kafka timestamp is two
    // hours before their event time (a producer with a broken clock):
    // dead letters now, valid once replayed (stamped with the replay time).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    for p in 0..2 {
        for i in 0..30 {
            let user = format!("u{p}");
            if i % 10 == 5 {
                let time = T0 + i * 1_000 + 500;
                producer
                    .send(
                        BaseRecord::to(&env.topic)
                            .partition(p)
                            .key(&user)
                            .timestamp(time - 2 * 3_600_000)
                            .payload(&page_view(time, &user, 0)),
                    )
                    .unwrap();
            }
            producer
                .send(
                    BaseRecord::to(&env.topic)
                        .partition(p)
                        .key(&user)
                        .payload(&page_view(T0 + i * 1_000, &user, 0)),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let mut speed = env.spawn_speed_in_group(0, "run-0");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.speed_progress().await == (60, 60)
        })
        .await,
        "{:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    let first = read_all(&dlq, 2, 6);
    assert_eq!(first.len(), 6, "dead letters of the first run");
    assert!(
        first
            .iter()
            .all(|(_, h)| h["strata.error.kind"] == "event_time_out_of_bounds")
    );
    // Two emit intervals: the checkpoints (and dead-letter marks) are stored.
    tokio::time::sleep(Duration::from_secs(3)).await;
    speed.kill().unwrap();
    speed.wait().unwrap();

    // The restart re-reads every record (the sessions are still open).
    let mut speed = env.spawn_speed_in_group(1, "run-1");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            TestEnv::counter(&env.scrape(), "strata_speed_records_in_total") >= 66.0
        })
        .await,
        "{}",
        env.speed_log(1)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = env.scrape();
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(1));
    let dead = read_all(&dlq, 2, 6);
    assert_eq!(
        dead.len(),
        6,
        "each bad record once in the dead-letter topic"
    );
    assert_eq!(
        TestEnv::counter(&metrics, "strata_speed_dead_letters_already_sent_total"),
        6.0,
        "{metrics}"
    );
    assert_eq!(env.speed_progress().await, (60, 60));

    // A copy of one dead letter (what a crash between a delivery and the
    // next checkpoint leaves): the replay sends its record once.
    let (payload, headers) = &dead[0];
    let mut copy = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers {
        copy = copy.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    producer
        .send(
            BaseRecord::<(), _>::to(&dlq)
                .partition(0)
                .payload(payload)
                .headers(copy),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut speed = env.spawn_speed_in_group(2, "run-2");
    let out = run_ok(env.strata().args(["dlq", "replay", "--quiet"]));
    assert!(
        out.contains("replayed 6 of 7 scanned dead letters")
            && out.contains("skipped 1 duplicate dead letter(s)"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.speed_progress().await == (66, 66)
        })
        .await,
        "{:?}\n{}",
        env.speed_progress().await,
        env.speed_log(2)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(2));
    assert_eq!(
        env.speed_progress().await,
        (66, 66),
        "each fixed record counted once"
    );
    assert_eq!(read_all(&dlq, 2, 7).len(), 7, "no new dead letter");
    env.drop_database().await;
}

/// Creates a topic of `partitions` partitions on the shared broker.
async fn strata_speed_topic_with(topic: &str, partitions: i32) {
    let kafka = strata_schemas::config::KafkaSection {
        brokers: kafka_brokers(),
        ..Default::default()
    };
    strata_kafka::ensure_topic(&kafka, topic, partitions)
        .await
        .unwrap();
}

/// Issue 18, item 2: while the dead-letter topic refuses writes, the main
/// flow goes on but the partition's checkpoint stays before the undelivered
/// dead letter; a SIGKILL then loses nothing: the restarted process sends
/// the dead letter once, and counts nothing twice.
#[tokio::test]
async fn an_undelivered_dead_letter_holds_the_checkpoint_through_a_crash() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let mock = MockCluster::new(1).unwrap();
    let mut env = TestEnv::new("dlqhold", "");
    env.kafka_brokers = mock.bootstrap_servers();
    env.set_checkpoint_namespace("hold");
    mock.create_topic(&env.topic, 1, 1).unwrap();
    let dlq = format!("{}.dlq", env.topic);
    mock.create_topic(&dlq, 1, 1).unwrap();
    env.init();
    // Ten events, a malformed record (offset 10), ten events two hours
    // later: every window of the first ten is final once the second ten
    // are read, so without the dead letter the checkpoint would move to 11.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    let mut payloads: Vec<String> = (0..10).map(|i| page_view(T0 + i * 1_000, "u", 0)).collect();
    payloads.push("{not json".into());
    payloads.extend((0..10).map(|i| page_view(T0 + 7_200_000 + i * 1_000, "u", 0)));
    for p in &payloads {
        producer
            .send(BaseRecord::to(&env.topic).partition(0).key("u").payload(p))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000],
    );
    let checkpoint = || async {
        rows_at(
            &env.clickhouse_url,
            &format!(
                "SELECT max(next_offset) AS n FROM {}.strata_speed_checkpoints WHERE topic = '{}' \
                 AND group_id = '{}-hold'",
                env.database, env.topic, env.topic
            ),
        )
        .await
        .first()
        .and_then(|r| r["n"].as_i64())
        .unwrap_or(0)
    };

    let mut speed = env.spawn_speed_in_group(0, "run-0");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.speed_progress().await == (20, 20)
        })
        .await,
        "{:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        TestEnv::counter(&env.scrape(), "strata_speed_dead_letters_pending") == 1.0,
        "{}",
        env.speed_log(0)
    );
    assert!(
        checkpoint().await <= 10,
        "checkpoint passed the undelivered dead letter: {}",
        checkpoint().await
    );
    speed.kill().unwrap();
    speed.wait().unwrap();
    assert!(read_at(&mock.bootstrap_servers(), &dlq, 1, 0).is_empty());

    // The broker accepts writes again; a new process resumes.
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let mut speed = env.spawn_speed_in_group(1, "run-1");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            checkpoint().await == 11
        })
        .await,
        "checkpoint {}\n{}",
        checkpoint().await,
        env.speed_log(1)
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(1));
    let letters = read_at(&mock.bootstrap_servers(), &dlq, 1, 1);
    assert_eq!(letters.len(), 1, "the dead letter, once");
    assert_eq!(letters[0].headers["strata.source.offset"], "10");
    assert_eq!(
        env.speed_progress().await,
        (20, 20),
        "nothing counted twice"
    );
    env.drop_database().await;
}
