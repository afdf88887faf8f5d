//! Dead letters: records that fail decoding or validation go, unchanged, to
//! `<topic>.dlq` with headers saying why; `strata dlq replay` sends a range of
//! them back once the producer or the contract is fixed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strata_schemas::DecodeError;
use strata_schemas::config::{KafkaSection, Source};

use crate::SpeedError;
use strata_kafka::{client_config, kafka_err};

/// Header names of a dead letter.
pub mod headers {
    /// `malformed_json`, `missing_field`, ... ([`strata_schemas::DecodeErrorKind`]).
    pub const ERROR_KIND: &str = "strata.error.kind";
    /// Human-readable reason naming the field.
    pub const ERROR_MESSAGE: &str = "strata.error.message";
    /// The field at fault, when there is one.
    pub const ERROR_FIELD: &str = "strata.error.field";
    /// Contract name.
    pub const CONTRACT: &str = "strata.contract";
    /// Contract version.
    pub const CONTRACT_VERSION: &str = "strata.contract.version";
    /// Topic the record came from.
    pub const SOURCE_TOPIC: &str = "strata.source.topic";
    /// Partition it came from.
    pub const SOURCE_PARTITION: &str = "strata.source.partition";
    /// Offset it had.
    pub const SOURCE_OFFSET: &str = "strata.source.offset";
    /// Its Kafka timestamp, epoch ms.
    pub const SOURCE_TIMESTAMP: &str = "strata.source.timestamp";
    /// On a replayed record: the dead letter it came from (`topic/partition/offset`).
    pub const REPLAYED_FROM: &str = "strata.replayed_from";
}

/// Counts failed deliveries so the speed layer never checkpoints past a dead
/// letter that did not reach the broker.
#[derive(Clone, Default)]
pub struct DeliveryTracker {
    failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "dead letter delivery failed");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Producer of dead letters.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryTracker>,
    tracker: DeliveryTracker,
    kafka: KafkaSection,
}

/// Where a dead letter came from.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, epoch ms.
    pub timestamp: Option<i64>,
    /// Message key.
    pub key: Option<&'a [u8]>,
}

impl DeadLetters {
    /// An idempotent producer for dead letters.
    pub fn new(kafka: &KafkaSection) -> Result<Self, SpeedError> {
        let tracker = DeliveryTracker::default();
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create_with_context(tracker.clone())
            .map_err(kafka_err(kafka, "dead-letter producer creation"))?;
        Ok(DeadLetters {
            producer,
            tracker,
            kafka: kafka.clone(),
        })
    }

    /// Queues one dead letter (payload unchanged, key kept, reasons in headers).
    pub fn send(
        &self,
        source: &Source,
        origin: Origin<'_>,
        payload: &[u8],
        error: &DecodeError,
    ) -> Result<(), SpeedError> {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let timestamp = origin.timestamp.map(|t| t.to_string()).unwrap_or_default();
        let version = source.contract.version.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::ERROR_KIND,
                value: Some(error.kind.as_str()),
            })
            .insert(Header {
                key: headers::ERROR_MESSAGE,
                value: Some(error.message.as_str()),
            })
            .insert(Header {
                key: headers::CONTRACT,
                value: Some(source.contract.name.as_str()),
            })
            .insert(Header {
                key: headers::CONTRACT_VERSION,
                value: Some(version.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_TOPIC,
                value: Some(origin.topic),
            })
            .insert(Header {
                key: headers::SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_TIMESTAMP,
                value: Some(timestamp.as_str()),
            });
        if let Some(field) = &error.field {
            headers = headers.insert(Header {
                key: headers::ERROR_FIELD,
                value: Some(field.as_str()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&source.dead_letter_topic)
            .payload(payload)
            .partition(origin.partition)
            .headers(headers);
        if let Some(key) = origin.key {
            record = record.key(key);
        }
        Ok(send_waiting(&self.producer, record).map_err(kafka_err(
            &self.kafka,
            format!("dead letter to {}", source.dead_letter_topic),
        ))?)
    }

    /// Waits up to `timeout` for every queued dead letter to be
    /// acknowledged: `Ok(true)` when all are, `Ok(false)` when some are still
    /// in flight (call again), an error if any delivery failed, so the caller
    /// does not checkpoint past it.
    pub fn flush(&self, timeout: Duration) -> Result<bool, SpeedError> {
        match self.producer.flush(timeout) {
            Ok(()) => {}
            Err(rdkafka::error::KafkaError::Flush(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            )) => {
                return Ok(false);
            }
            Err(e) => return Err(kafka_err(&self.kafka, "dead-letter flush")(e).into()),
        }
        let failed = self.tracker.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(SpeedError::Usage(format!(
                "{failed} dead letter(s) could not be delivered; not checkpointing past them (check the dead-letter topic exists and the broker accepts writes)"
            )));
        }
        Ok(true)
    }
}

/// Which dead letters to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayRange {
    /// Only this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// First dead-letter offset (inclusive).
    pub from_offset: Option<i64>,
    /// Last dead-letter offset (exclusive).
    pub to_offset: Option<i64>,
    /// Earliest dead-letter timestamp, epoch ms (inclusive).
    pub from_time_ms: Option<i64>,
    /// Latest dead-letter timestamp, epoch ms (exclusive).
    pub to_time_ms: Option<i64>,
}

impl ReplayRange {
    fn contains(&self, partition: i32, offset: i64, timestamp: Option<i64>) -> bool {
        self.partition.is_none_or(|p| p == partition)
            && self.from_offset.is_none_or(|o| offset >= o)
            && self.to_offset.is_none_or(|o| offset < o)
            && self
                .from_time_ms
                .is_none_or(|t| timestamp.is_some_and(|ts| ts >= t))
            && self
                .to_time_ms
                .is_none_or(|t| timestamp.is_some_and(|ts| ts < t))
    }
}

/// Counts of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read.
    pub scanned: u64,
    /// Dead letters re-published.
    pub replayed: u64,
}

/// Re-publishes the dead letters of `dlq_topic` within `range` to `target`,
/// payload and key unchanged, with a `strata.replayed_from` header.
/// `progress(scanned, total)` is called as it goes.
pub fn replay(
    kafka: &KafkaSection,
    dlq_topic: &str,
    target: &str,
    range: &ReplayRange,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, SpeedError> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "strata-dlq-replay")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka_err(kafka, "dead-letter consumer creation"))?;
    let metadata = consumer
        .fetch_metadata(Some(dlq_topic), Duration::from_secs(10))
        .map_err(kafka_err(kafka, format!("metadata of {dlq_topic}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| range.partition.is_none_or(|x| x == *p))
        .collect();
    if partitions.is_empty() {
        return Err(SpeedError::Usage(format!(
            "dead-letter topic {dlq_topic} has no partitions (does it exist?)"
        )));
    }
    let mut ends = std::collections::HashMap::new();
    let mut total = 0u64;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(dlq_topic, *p, Duration::from_secs(10))
            .map_err(kafka_err(kafka, format!("watermarks of {dlq_topic}/{p}")))?;
        let start = range.from_offset.map_or(low, |o| o.max(low));
        let end = range.to_offset.map_or(high, |o| o.min(high));
        if end > start {
            total += (end - start) as u64;
            ends.insert(*p, end);
            assignment
                .add_partition_offset(dlq_topic, *p, Offset::Offset(start))
                .map_err(kafka_err(kafka, "assignment"))?;
        }
    }
    let producer: ThreadedProducer<DeliveryTracker> = client_config(kafka)
        .set("enable.idempotence", "true")
        .create_with_context(DeliveryTracker::default())
        .map_err(kafka_err(kafka, "replay producer creation"))?;
    let mut report = ReplayReport::default();
    if ends.is_empty() {
        return Ok(report);
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err(kafka, "assign"))?;
    let mut remaining = ends.clone();
    let mut idle = 0;
    while !remaining.is_empty() && idle < 100 {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            idle += 1;
            continue;
        };
        idle = 0;
        let message = message.map_err(kafka_err(kafka, format!("read {dlq_topic}")))?;
        let (p, offset) = (message.partition(), message.offset());
        let Some(end) = remaining.get(&p).copied() else {
            continue;
        };
        if offset >= end {
            remaining.remove(&p);
            continue;
        }
        if offset + 1 >= end {
            remaining.remove(&p);
        }
        report.scanned += 1;
        if range.contains(p, offset, message.timestamp().to_millis()) {
            let from = format!("{dlq_topic}/{p}/{offset}");
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(target)
                .payload(message.payload().unwrap_or_default())
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::REPLAYED_FROM,
                    value: Some(from.as_str()),
                }));
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            send_waiting(&producer, record)
                .map_err(kafka_err(kafka, format!("replay to {target}")))?;
            report.replayed += 1;
        }
        if report.scanned % 100 == 0 {
            progress(report.scanned, total);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(kafka_err(kafka, "replay flush"))?;
    progress(report.scanned, total);
    Ok(report)
}

/// Sends one record; when the local queue is full, waits for the
/// background thread to drain it instead of failing.
fn send_waiting(
    producer: &ThreadedProducer<DeliveryTracker>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), rdkafka::error::KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Reads the string value of header `name`.
pub fn header<'a>(headers: &'a rdkafka::message::BorrowedHeaders, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
