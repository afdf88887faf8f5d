//! Dead letters end to end: malformed, schema-invalid and oversized records
//! all land in `<topic>.dlq` unchanged, with their reasons in headers; every
//! valid record is counted; `strata dlq replay` brings them back.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::{TestEnv, kafka_brokers, run_ok, terminate, unique, wait_until};

/// Every record of `topic` (all partitions, from the beginning): (payload, headers).
fn read_all(
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("dlq_check"))
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_string(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).to_string(),
                    );
                }
            }
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    // Nothing more arrives.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((m.payload().unwrap_or_default().to_vec(), BTreeMap::new()));
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
