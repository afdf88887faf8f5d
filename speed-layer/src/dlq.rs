//! Dead letters: records that fail decoding or validation go, unchanged, to
//! `<topic>.dlq` with headers saying why; `strata dlq replay` sends a range of
//! them back once the producer or the contract is fixed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strata_schemas::DecodeError;
use strata_schemas::config::{KafkaSection, Source};

use crate::SpeedError;
use crate::metrics as m;
use crate::sink::Backoff;
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
    /// On a replayed record: the dead letter's `strata.error.kind`.
    pub const REPLAYED_KIND: &str = strata_kafka::REPLAYED_KIND_HEADER;
    /// `true` when the payload was cut to `speed.dead_letter_max_payload_bytes`.
    pub const PAYLOAD_TRUNCATED: &str = "strata.payload.truncated";
    /// Size in bytes of the original payload of a truncated dead letter.
    pub const PAYLOAD_SIZE: &str = "strata.payload.size";
    /// FNV-1a 64 (hex) of the original payload of a truncated dead letter.
    pub const PAYLOAD_FNV1A64: &str = "strata.payload.fnv1a64";
}

/// Delivery outcomes reported by the producer's background thread, by the
/// id the letter was sent with.
#[derive(Default)]
struct Outcomes {
    acked: Vec<usize>,
    failed: Vec<(usize, String)>,
}

/// Collects delivery reports, so the speed layer resends a dead letter
/// that failed and never checkpoints past one that is not acknowledged.
#[derive(Clone, Default)]
pub struct DeliveryTracker {
    outcomes: Arc<Mutex<Outcomes>>,
}

impl DeliveryTracker {
    fn take(&self) -> Outcomes {
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => outcomes.acked.push(id),
            Err((e, _)) => outcomes.failed.push((id, e.to_string())),
        }
    }
}

/// How dead letters are produced.
#[derive(Clone, Debug)]
pub struct DeadLetterSettings {
    /// Longest payload kept; a longer one is cut to this many bytes, with
    /// its size and hash in headers.
    pub max_payload_bytes: usize,
    /// How long librdkafka tries one delivery before reporting it failed
    /// (then Strata backs off and resends it).
    pub delivery_timeout: Duration,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        DeadLetterSettings {
            max_payload_bytes: 512 * 1024,
            delivery_timeout: Duration::from_secs(10),
        }
    }
}

/// One dead letter, kept until the broker acknowledges it.
struct Letter {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    in_flight: bool,
}

/// Producer of dead letters.
///
/// Every letter stays in memory until the broker acknowledges it; a failed
/// delivery (topic missing, broker refusing writes, ...) is counted, logged
/// and resent after a backoff instead of stopping the process, and the
/// partition's checkpoint stays behind it ([`Self::has_pending`]).
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryTracker>,
    tracker: DeliveryTracker,
    kafka: KafkaSection,
    settings: DeadLetterSettings,
    /// Partition count of each dead-letter topic: letters are routed by
    /// source partition modulo this, so a DLQ with fewer partitions than
    /// its source works and each source partition's letters stay in order.
    partitions: HashMap<String, i32>,
    letters: HashMap<usize, Letter>,
    next_id: usize,
    /// Highest acknowledged source offset + 1, per source partition.
    acked: HashMap<(String, i32), i64>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Since when deliveries fail (`None`: they succeed).
    failing_since: Option<Instant>,
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
    /// An idempotent producer for dead letters; `partitions` holds the
    /// partition count of each dead-letter topic that exists.
    pub fn new(
        kafka: &KafkaSection,
        settings: DeadLetterSettings,
        partitions: HashMap<String, i32>,
    ) -> Result<Self, SpeedError> {
        let tracker = DeliveryTracker::default();
        let producer = dead_letter_producer(kafka, &settings, &tracker)?;
        Ok(DeadLetters {
            producer,
            tracker,
            kafka: kafka.clone(),
            settings,
            partitions,
            letters: HashMap::new(),
            next_id: 0,
            acked: HashMap::new(),
            retry_at: None,
            backoff: Backoff::default(),
            failing_since: None,
        })
    }

    /// Queues one dead letter (key kept, payload unchanged up to
    /// `max_payload_bytes`, reasons in headers). It never fails: a letter
    /// that cannot be sent now is resent later.
    pub fn send(
        &mut self,
        source: &Source,
        origin: Origin<'_>,
        payload: &[u8],
        error: &DecodeError,
    ) {
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
        let max = self.settings.max_payload_bytes;
        let payload = if payload.len() > max {
            // Over the producer's message size the broker (or librdkafka,
            // before sending) refuses the letter forever: keep the fact,
            // the reason, the head of the payload and what identifies the
            // whole (size, hash, source offset) instead.
            let size = payload.len().to_string();
            let hash = format!("{:016x}", fnv1a64(payload));
            headers = headers
                .insert(Header {
                    key: headers::PAYLOAD_TRUNCATED,
                    value: Some("true"),
                })
                .insert(Header {
                    key: headers::PAYLOAD_SIZE,
                    value: Some(size.as_str()),
                })
                .insert(Header {
                    key: headers::PAYLOAD_FNV1A64,
                    value: Some(hash.as_str()),
                });
            metrics::counter!(m::DEAD_LETTERS_TRUNCATED, "topic" => origin.topic.to_string())
                .increment(1);
            payload[..max].to_vec()
        } else {
            payload.to_vec()
        };
        let topic = source.dead_letter_topic.clone();
        let letter = Letter {
            partition: self
                .partitions
                .get(&topic)
                .filter(|n| **n > 0)
                .map(|n| origin.partition.rem_euclid(*n)),
            topic,
            key: origin.key.map(<[u8]>::to_vec),
            payload,
            headers,
            source_topic: origin.topic.to_string(),
            source_partition: origin.partition,
            source_offset: origin.offset,
            in_flight: false,
        };
        let id = self.next_id;
        self.next_id += 1;
        self.letters.insert(id, letter);
        if self.retry_at.is_none() {
            self.produce(id);
        }
    }

    /// Hands letter `id` to librdkafka; a refusal counts as a failed
    /// delivery.
    fn produce(&mut self, id: usize) {
        let Some(letter) = self.letters.get_mut(&id) else {
            return;
        };
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&letter.topic, id)
                .payload(&letter.payload[..])
                .headers(letter.headers.clone());
        if let Some(p) = letter.partition {
            record = record.partition(p);
        }
        if let Some(key) = &letter.key {
            record = record.key(&key[..]);
        }
        // Never block the consumer loop: a full local queue (the broker
        // has been unreachable for a while) is a failure like any other,
        // retried after the backoff.
        match self.producer.send(record) {
            Ok(()) => letter.in_flight = true,
            Err((e, _)) => self.failed(id, &e.to_string()),
        }
    }

    fn failed(&mut self, id: usize, error: &str) {
        let Some(letter) = self.letters.get_mut(&id) else {
            return;
        };
        letter.in_flight = false;
        metrics::counter!(m::DEAD_LETTER_FAILURES, "topic" => letter.topic.clone()).increment(1);
        let delay = self.backoff.next_delay();
        // One warning per outage (the metric counts every failure), not
        // one per letter and retry.
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(
                dead_letter_topic = %letter.topic,
                source_topic = %letter.source_topic,
                source_partition = letter.source_partition,
                source_offset = letter.source_offset,
                error,
                retry_in_ms = delay.as_millis() as u64,
                "dead letter delivery failed; the partition's checkpoint stays behind it and it is resent"
            );
        } else {
            tracing::debug!(
                dead_letter_topic = %letter.topic,
                source_partition = letter.source_partition,
                source_offset = letter.source_offset,
                error,
                "dead letter delivery failed again"
            );
        }
        let at = Instant::now() + delay;
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }

    /// Takes in the delivery reports and resends failed letters whose
    /// backoff has passed. Returns the number still in flight.
    pub fn settle(&mut self) -> usize {
        let outcomes = self.tracker.take();
        for id in outcomes.acked {
            if let Some(letter) = self.letters.remove(&id) {
                let mark = self
                    .acked
                    .entry((letter.source_topic, letter.source_partition))
                    .or_insert(i64::MIN);
                *mark = (*mark).max(letter.source_offset + 1);
            }
        }
        for (id, error) in outcomes.failed {
            self.failed(id, &error);
        }
        if self.letters.is_empty() {
            self.backoff = Backoff::default();
            self.retry_at = None;
            if let Some(since) = self.failing_since.take() {
                tracing::info!(
                    failing_for_s = since.elapsed().as_secs(),
                    "dead letters are delivered again"
                );
            }
        }
        if self.retry_at.is_some_and(|at| Instant::now() >= at) {
            self.retry_at = None;
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                // An idempotent producer can end in a fatal state (e.g. the
                // broker lost its sequence state): only a new one sends.
                tracing::error!(error = %reason, code = ?code, "dead-letter producer failed fatally; creating a new one");
                match dead_letter_producer(&self.kafka, &self.settings, &self.tracker) {
                    Ok(p) => {
                        self.producer = p;
                        for letter in self.letters.values_mut() {
                            letter.in_flight = false;
                        }
                        // Reports of the old producer's letters are void.
                        let _ = self.tracker.take();
                    }
                    Err(e) => {
                        // The letters are resent after the next backoff.
                        tracing::error!(error = %e, "creating the dead-letter producer failed; retrying");
                    }
                }
            }
            let mut waiting: Vec<usize> = self
                .letters
                .iter()
                .filter(|(_, l)| !l.in_flight)
                .map(|(id, _)| *id)
                .collect();
            waiting.sort_unstable();
            for id in waiting {
                self.produce(id);
            }
        }
        metrics::gauge!(m::DEAD_LETTERS_PENDING).set(self.letters.len() as f64);
        self.letters.values().filter(|l| l.in_flight).count()
    }

    /// Waits up to `timeout` for the letters in flight to be reported
    /// (acknowledged or failed); returns the number still worth waiting
    /// for. While deliveries fail it neither waits nor asks to (returns 0):
    /// a letter in flight then takes up to `delivery_timeout` to be
    /// reported, and holding the consumer loop on it would slow the main
    /// flow for as long as the outage lasts (the partition's checkpoint
    /// waits for the letter either way).
    pub fn wait(&mut self, timeout: Duration) -> usize {
        if self.failing_since.is_some() {
            self.settle();
            return 0;
        }
        let _ = self.producer.flush(timeout);
        self.settle()
    }

    /// Whether a dead letter of `topic`/`partition` is not acknowledged
    /// yet: the partition must not checkpoint past it.
    pub fn has_pending(&self, topic: &str, partition: i32) -> bool {
        self.letters
            .values()
            .any(|l| l.source_partition == partition && l.source_topic == topic)
    }

    /// Every source offset of `topic`/`partition` below the returned one
    /// that was dead-lettered is acknowledged by the broker (`None`: none
    /// was acknowledged in this process).
    pub fn acknowledged_below(&self, topic: &str, partition: i32) -> Option<i64> {
        let acked = *self.acked.get(&(topic.to_string(), partition))?;
        let pending = self
            .letters
            .values()
            .filter(|l| l.source_partition == partition && l.source_topic == topic)
            .map(|l| l.source_offset)
            .min();
        Some(pending.map_or(acked, |p| p.min(acked)))
    }

    /// Letters not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.letters.len()
    }

    /// Bytes (payloads and keys) of the letters not acknowledged yet.
    pub fn pending_bytes(&self) -> usize {
        self.letters
            .values()
            .map(|l| l.payload.len() + l.key.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

fn dead_letter_producer(
    kafka: &KafkaSection,
    settings: &DeadLetterSettings,
    tracker: &DeliveryTracker,
) -> Result<ThreadedProducer<DeliveryTracker>, SpeedError> {
    Ok(client_config(kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .create_with_context(tracker.clone())
        .map_err(kafka_err(kafka, "dead-letter producer creation"))?)
}

/// 64-bit FNV-1a: a stable, dependency-free fingerprint of a truncated
/// payload, to match it with the original in the source topic.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    /// Only dead letters of this `strata.error.kind` (e.g.
    /// `registry_unavailable` after a schema-registry outage).
    pub kind: Option<String>,
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
    /// Dead letters re-published and acknowledged.
    pub replayed: u64,
    /// Dead letters in range skipped because an earlier one of the same
    /// source record (topic, partition, offset) was already replayed.
    pub duplicates: u64,
    /// Dead letters whose re-publication failed: `dlq/partition/offset: why`.
    pub failed: Vec<String>,
    /// Dead letters not re-published because their payload was cut
    /// (`speed.dead_letter_max_payload_bytes`): replaying the cut payload
    /// would only make a new bad record. Each names where the original is:
    /// `dlq/partition/offset: source topic/partition/offset`.
    pub truncated: Vec<String>,
}

/// Re-publishes the dead letters of `dlq_topic` within `range` to `target`,
/// payload and key unchanged, with a `strata.replayed_from` header, once
/// per source record: a dead letter sent twice (a speed process that
/// crashed between its delivery and its checkpoint) is replayed once.
/// Reads each partition up to its high watermark at the start, so the end
/// is known, not guessed from a pause. `progress(scanned, total)` is
/// called as it goes. Failed sends are in [`ReplayReport::failed`].
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
    let mut ends = HashMap::new();
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
    let tracker = DeliveryTracker::default();
    let producer: ThreadedProducer<DeliveryTracker> = client_config(kafka)
        .set("enable.idempotence", "true")
        .create_with_context(tracker.clone())
        .map_err(kafka_err(kafka, "replay producer creation"))?;
    let mut report = ReplayReport::default();
    if ends.is_empty() {
        return Ok(report);
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err(kafka, "assign"))?;
    let mut remaining = ends.clone();
    // What each send was (its id is the index), to name failures.
    let mut sent: Vec<String> = Vec::new();
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    const STALL: Duration = Duration::from_secs(60);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            // Offsets may be missing below the end (compaction, transaction
            // markers): a partition whose position reached its end is done.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let (Offset::Offset(at), Some(end)) =
                        (e.offset(), remaining.get(&e.partition()))
                        && at >= *end
                    {
                        remaining.remove(&e.partition());
                    }
                }
            }
            if last_progress.elapsed() > STALL && !remaining.is_empty() {
                let mut left: Vec<_> = remaining.iter().collect();
                left.sort();
                return Err(SpeedError::Usage(format!(
                    "replay of {dlq_topic} stalled: nothing read for {} s before the end of partitions {left:?} (partition, end offset); {} of {total} dead letters scanned, {} replayed",
                    STALL.as_secs(),
                    report.scanned,
                    sent.len()
                )));
            }
            continue;
        };
        last_progress = Instant::now();
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
        let kind_matches = range.kind.as_deref().is_none_or(|kind| {
            message
                .headers()
                .is_some_and(|h| header(h, headers::ERROR_KIND) == Some(kind))
        });
        if kind_matches && range.contains(p, offset, message.timestamp().to_millis()) {
            if let Some(h) = message.headers() {
                let origin = (
                    header(h, headers::SOURCE_TOPIC),
                    header(h, headers::SOURCE_PARTITION),
                    header(h, headers::SOURCE_OFFSET),
                );
                if let (Some(t), Some(sp), Some(so)) = origin
                    && !seen.insert((t.to_string(), sp.to_string(), so.to_string()))
                {
                    report.duplicates += 1;
                    continue;
                }
                if header(h, headers::PAYLOAD_TRUNCATED) == Some("true") {
                    let (t, sp, so) = origin;
                    report.truncated.push(format!(
                        "{dlq_topic}/{p}/{offset}: {}/{}/{}",
                        t.unwrap_or("?"),
                        sp.unwrap_or("?"),
                        so.unwrap_or("?")
                    ));
                    continue;
                }
            }
            let from = format!("{dlq_topic}/{p}/{offset}");
            let id = sent.len();
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(target, id)
                    .payload(message.payload().unwrap_or_default())
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: headers::REPLAYED_FROM,
                                value: Some(from.as_str()),
                            })
                            .insert(Header {
                                key: headers::REPLAYED_KIND,
                                value: message
                                    .headers()
                                    .and_then(|h| header(h, headers::ERROR_KIND)),
                            }),
                    );
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            // Replayed into its own topic, a letter goes back to its source
            // partition: one partition's letters keep their order, so the
            // speed layer's watermark meets them in the order it would
            // have (a letter is still late, and left to the batch layer,
            // when the partition's watermark has passed its window).
            if let Some(h) = message.headers()
                && header(h, headers::SOURCE_TOPIC) == Some(target)
                && let Some(partition) =
                    header(h, headers::SOURCE_PARTITION).and_then(|p| p.parse::<i32>().ok())
            {
                record = record.partition(partition);
            }
            if let Err(e) = send_waiting(&producer, record) {
                report.failed.push(format!("{from}: {e}"));
            }
            sent.push(from);
        }
        if report.scanned % 100 == 0 {
            progress(report.scanned, total);
        }
    }
    if producer.flush(Duration::from_secs(60)).is_err() {
        tracing::warn!(target, "replay: some sends not acknowledged within 60 s");
    }
    let outcomes = tracker.take();
    let mut acked = vec![false; sent.len()];
    for id in outcomes.acked {
        if let Some(a) = acked.get_mut(id) {
            *a = true;
        }
    }
    let mut failed: HashMap<usize, String> = outcomes.failed.into_iter().collect();
    for (id, from) in sent.iter().enumerate() {
        if acked[id] {
            report.replayed += 1;
        } else if let Some(e) = failed.remove(&id) {
            report.failed.push(format!("{from}: {e}"));
        } else if !report
            .failed
            .iter()
            .any(|f| f.starts_with(&format!("{from}:")))
        {
            report.failed.push(format!(
                "{from}: not acknowledged by the broker within 60 s"
            ));
        }
    }
    progress(report.scanned, total);
    Ok(report)
}

/// Sends one record; when the local queue is full, waits for the
/// background thread to drain it instead of failing.
fn send_waiting(
    producer: &ThreadedProducer<DeliveryTracker>,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
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
