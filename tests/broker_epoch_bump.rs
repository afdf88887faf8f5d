//! The test broker survives an idempotent producer that bumps its own epoch.
//!
//! librdkafka's idempotent producer bumps its epoch by itself after a
//! message timeout (and after a sequence gap) and starts the new epoch at
//! sequence 0. Every Strata producer is idempotent (dead letters, the
//! generator, replay), and under the load of the full suite some of their
//! messages time out. Tansu 0.6.0 as published panics on the first batch of
//! a bumped epoch and every later request to it fails, so the suite depends
//! on the patched build (`deploy/local/tansu/build.sh`). This test forces a
//! bump on purpose and checks the broker goes on storing exactly what it
//! acknowledged.

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, Message};
use strata_schemas::config::KafkaSection;
use support::{kafka_brokers, read_from_start, unique};

/// Counts deliveries and keeps librdkafka's idempotence log lines.
#[derive(Default)]
struct Observed {
    delivered: AtomicU64,
    failed: AtomicU64,
    eos_log: Mutex<Vec<String>>,
}

impl ClientContext for Observed {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, log_message: &str) {
        self.eos_log.lock().unwrap().push(log_message.to_string());
    }
}

impl ProducerContext for Observed {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn bumped(observed: &Observed) -> bool {
    observed
        .eos_log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("bumped epoch"))
}

/// Records in partition 0 of `topic`, read until `expected` or 30 s, then
/// one more second in which nothing else may arrive.
fn count_records(topic: &str, expected: u64) -> u64 {
    let consumer = read_from_start(&kafka_brokers(), topic, 1, "epoch_bump_check");
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            assert!(m.payload().is_some());
            seen += 1;
        }
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    seen
}

#[tokio::test]
async fn an_idempotent_producer_that_bumps_its_epoch_keeps_producing() {
    let kafka = KafkaSection {
        brokers: kafka_brokers(),
        ..KafkaSection::default()
    };
    let topic = unique("epoch_bump");
    strata_kafka::ensure_topic(&kafka, &topic, 1).await.unwrap();

    // A 30 ms message timeout: a burst queues far more than one produce
    // request carries, the queued rest times out, and librdkafka drains and
    // bumps the epoch.
    let producer: BaseProducer<Observed> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30")
        .set("batch.num.messages", "100")
        .set("debug", "eos")
        .set_log_level(RDKafkaLogLevel::Debug)
        .create_with_context(Observed::default())
        .unwrap();
    let observed = producer.context();
    let payload = vec![b'x'; 200];
    let send_one = |producer: &BaseProducer<Observed>| {
        let mut record = BaseRecord::<(), _>::to(&topic)
            .partition(0)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, back)) => {
                    // Queue full: let deliveries drain.
                    producer.poll(Duration::from_millis(1));
                    record = back;
                }
            }
        }
    };
    // First a producer id: records sent before it arrives time out
    // without a bump (there is no epoch to bump yet).
    let start = Instant::now();
    while observed.delivered.load(Ordering::Relaxed) == 0
        && start.elapsed() < Duration::from_secs(30)
    {
        send_one(&producer);
        let _ = producer.flush(Duration::from_secs(5));
    }
    assert!(
        observed.delivered.load(Ordering::Relaxed) > 0,
        "the broker never acknowledged a record"
    );
    // Bursts until one bumps the epoch; flush() serves every delivery
    // report and log line in between. A burst is 500 produce requests, so
    // its tail waits far longer than 30 ms even on an idle machine's fast
    // broker (bursts of 50 requests all went through in time once, and
    // nothing was bumped).
    for _ in 0..20 {
        for _ in 0..50_000 {
            send_one(&producer);
        }
        let _ = producer.flush(Duration::from_secs(30));
        if bumped(observed) {
            break;
        }
    }
    assert!(
        bumped(observed),
        "librdkafka never bumped the epoch; the last lines of its eos log: {:?}",
        observed
            .eos_log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
    );
    let before = observed.delivered.load(Ordering::Relaxed);

    // The new epoch's first batches: one record at a time, so none waits in
    // a queue long enough to time out. The unpatched broker fails every one
    // of them (its storage task is gone).
    let mut after = 0u64;
    for _ in 0..20 {
        send_one(&producer);
        let _ = producer.flush(Duration::from_secs(5));
        after = observed.delivered.load(Ordering::Relaxed) - before;
        if after >= 5 {
            break;
        }
    }
    assert!(
        after >= 5,
        "after the epoch bump only {after} of up to 20 single records were acknowledged \
         ({} failed in all)",
        observed.failed.load(Ordering::Relaxed)
    );

    // The broker holds exactly what it acknowledged: nothing lost, nothing twice.
    let delivered = observed.delivered.load(Ordering::Relaxed);
    assert_eq!(count_records(&topic, delivered), delivered);
}
