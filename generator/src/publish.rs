//! `strata generate`: publishes a seeded synthetic clickstream to Kafka.
//!
//! Records go to explicit partitions (the user's partition, see
//! [`Clickstream::partition_of`]) through an idempotent producer, so each
//! partition receives its records in generation order, exactly once. A test
//! that iterates the same [`ClickstreamConfig`] knows exactly what every
//! partition holds.

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use strata_kafka::{KafkaError, client_config, ensure_topic, kafka_err};

use crate::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use strata_schemas::config::KafkaSection;

/// Counts of what was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerateReport {
    /// Records acknowledged by the broker.
    pub sent: u64,
    /// Of which valid, in-time events.
    pub valid: u64,
    /// Of which valid events beyond any allowed lateness.
    pub late: u64,
    /// Of which non-JSON payloads.
    pub malformed: u64,
    /// Of which contract violations.
    pub invalid: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Publishes the stream to `topic` (created with `config.partitions`
/// partitions if missing). `rate` limits records per second (0: unlimited).
/// `progress` is called with the number of acknowledged records.
pub async fn generate(
    kafka: &KafkaSection,
    topic: &str,
    config: ClickstreamConfig,
    rate: u64,
    mut progress: impl FnMut(u64),
) -> Result<GenerateReport, KafkaError> {
    ensure_topic(kafka, topic, config.partitions as i32).await?;
    let producer: FutureProducer = client_config(kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(kafka_err(kafka, "producer creation"))?;
    let started = Instant::now();
    let mut report = GenerateReport::default();
    let mut in_flight = FuturesUnordered::new();
    const MAX_IN_FLIGHT: usize = 10_000;
    for record in Clickstream::new(config) {
        if rate > 0 {
            // Pace against the schedule, not the previous send, so a slow
            // moment is caught up instead of lowering the average rate.
            let due = started + Duration::from_secs_f64(record.seq as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        match record.kind {
            RecordKind::Valid => report.valid += 1,
            RecordKind::Late => report.late += 1,
            RecordKind::Malformed => report.malformed += 1,
            RecordKind::Invalid => report.invalid += 1,
        }
        let producer = producer.clone();
        let target = topic.to_string();
        in_flight.push(async move {
            let message = FutureRecord::to(&target)
                .partition(record.partition)
                .key(&record.key)
                .payload(&record.payload);
            producer.send(message, Duration::from_secs(60)).await
        });
        if in_flight.len() >= MAX_IN_FLIGHT
            && let Some(result) = in_flight.next().await
        {
            result.map_err(|(e, _)| kafka_err(kafka, format!("produce to {topic}"))(e))?;
            report.sent += 1;
            if report.sent % 1_000 == 0 {
                progress(report.sent);
            }
        }
        // A send is only handed to librdkafka when its future is polled:
        // poll the set now, so a paced stream leaves at its pace instead of
        // in bursts of MAX_IN_FLIGHT.
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            result.map_err(|(e, _)| kafka_err(kafka, format!("produce to {topic}"))(e))?;
            report.sent += 1;
            if report.sent % 1_000 == 0 {
                progress(report.sent);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        result.map_err(|(e, _)| kafka_err(kafka, format!("produce to {topic}"))(e))?;
        report.sent += 1;
        if report.sent % 1_000 == 0 {
            progress(report.sent);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(kafka_err(kafka, "producer flush"))?;
    progress(report.sent);
    report.elapsed = started.elapsed();
    Ok(report)
}
