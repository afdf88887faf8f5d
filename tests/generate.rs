//! `strata generate` to the Tansu broker: exactly the records the seed
//! describes arrive, in order, in their partitions.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::{kafka_brokers, read_from_start, run_ok, strata, unique};

#[test]
fn generate_100k_events_and_consume_exactly_them_back() {
    let topic = unique("gen");
    let events: u64 = 100_000;
    let out = run_ok(strata().args([
        "generate",
        "--topic",
        &topic,
        "--events",
        &events.to_string(),
        "--partitions",
        "4",
        "--seed",
        "7",
        "--start",
        "2026-11-22T10:00:00Z",
        "--malformed",
        "0.01",
        "--invalid",
        "0.01",
        "--late",
        "0.01",
        "--quiet",
    ]));
    assert!(
        out.contains(&format!("sent {events} records to {topic}")),
        "{out}"
    );

    let expected_config = ClickstreamConfig {
        seed: 7,
        events,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 10,
        out_of_order_fraction: 0.1,
        late_fraction: 0.01,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        ..ClickstreamConfig::default()
    };
    let mut expected: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    for r in Clickstream::new(expected_config) {
        *kinds.entry(format!("{:?}", r.kind)).or_insert(0u64) += 1;
        expected.entry(r.partition).or_default().push(r.payload);
    }
    assert!(
        kinds[&format!("{:?}", RecordKind::Malformed)] > 500,
        "{kinds:?}"
    );

    let consumer = read_from_start(&kafka_brokers(), &topic, 4, "gen_check");
    let mut received: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut total = 0u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while total < events && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            received
                .entry(message.partition())
                .or_default()
                .push(message.payload().unwrap_or_default().to_vec());
            total += 1;
        }
    }
    // Nothing beyond the expected records arrives either.
    let extra_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_deadline {
        if consumer.poll(Duration::from_millis(200)).is_some() {
            total += 1;
        }
    }
    assert_eq!(total, events, "consumed {total} records, expected {events}");
    assert_eq!(received.len(), 4);
    for (p, payloads) in &expected {
        assert_eq!(received[p].len(), payloads.len(), "partition {p}");
        assert!(
            received[p] == *payloads,
            "partition {p} holds other records or another order"
        );
    }
}
