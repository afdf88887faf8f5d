//! # strata-kafka
//!
//! Everything Strata's commands share to talk to Kafka: client
//! configuration, topic management, the error that names the operation and
//! the brokers, and the consumer-group member shared by the speed layer and
//! the archive ([`group`]).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use strata_schemas::config::KafkaSection;

pub mod group;
pub mod metrics;

/// On a record `strata dlq replay` re-published: the `strata.error.kind`
/// of the dead letter it came from. The archive skips a replayed
/// `registry_unavailable` letter: it waited for the registry and archived
/// the original (the speed layer dead-letters instead), so it already holds
/// the event.
pub const REPLAYED_KIND_HEADER: &str = "strata.replayed_kind";

pub use group::{
    GroupMember, GroupSettings, OffsetGap, PartitionChange, Polled, Start, StartLoader,
};

/// A failed Kafka operation, with what Strata was doing.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A client call failed.
    #[error(
        "Kafka {operation} failed: {source}; check kafka.brokers ({brokers}) and that the broker is up"
    )]
    Client {
        /// What Strata was doing.
        operation: String,
        /// Bootstrap servers used.
        brokers: String,
        /// The client error (boxed: it is large, and this error travels
        /// through hot-path `Result`s).
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A blocking client call could not finish (its task panicked or the
    /// runtime is shutting down).
    #[error("Kafka {operation} did not finish: {message}")]
    Task {
        /// What Strata was doing.
        operation: String,
        /// Why.
        message: String,
    },
}

/// A client config for the configured brokers, with the user's extra
/// librdkafka properties applied last so they can override Strata's choices.
pub fn client_config(kafka: &KafkaSection) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", &kafka.client_id)
        // Loopback test brokers and the in-process mock cluster advertise
        // IPv4 addresses; avoid resolving "localhost" to ::1 first.
        .set("broker.address.family", "v4");
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Wraps a Kafka error with the operation and the brokers.
pub fn kafka_err(
    kafka: &KafkaSection,
    operation: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError {
    let brokers = kafka.brokers.clone();
    let operation = operation.into();
    move |source| KafkaError::Client {
        operation,
        brokers,
        source: Box::new(source),
    }
}

/// Number of partitions of `topic` (0 when it does not exist), from a
/// consumer's metadata request, which never auto-creates topics.
pub async fn partition_count(kafka: &KafkaSection, topic: &str) -> Result<i32, KafkaError> {
    let kafka = kafka.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&kafka)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(kafka_err(&kafka, "metadata client creation"))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .map_err(kafka_err(&kafka, format!("metadata of {topic}")))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .sum())
    })
    .await
    .map_err(|e| KafkaError::Task {
        operation: "metadata request".into(),
        message: e.to_string(),
    })?
}

/// `(low, high)` watermarks (log start, log end) of every partition of
/// `topic`, by partition; a topic that does not exist has none.
pub async fn partition_watermarks(
    kafka: &KafkaSection,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, (i64, i64)>, KafkaError> {
    // Generous: the batch layer asks this before a run, and a busy broker
    // can take over 10 s to answer (a failed run waits a whole schedule
    // period); partition_count allows as long.
    const TIMEOUT: Duration = Duration::from_secs(30);
    let kafka = kafka.clone();
    let topic = topic.to_string();
    // librdkafka's calls block: keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&kafka)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(kafka_err(&kafka, "watermark client creation"))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), TIMEOUT)
            .map_err(kafka_err(&kafka, format!("metadata of {topic}")))?;
        let mut marks = std::collections::BTreeMap::new();
        for t in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
        {
            for p in t.partitions() {
                let range =
                    consumer
                        .fetch_watermarks(&topic, p.id(), TIMEOUT)
                        .map_err(kafka_err(
                            &kafka,
                            format!("watermarks of {topic}/{}", p.id()),
                        ))?;
                marks.insert(p.id(), range);
            }
        }
        Ok(marks)
    })
    .await
    .map_err(|e| KafkaError::Task {
        operation: "watermarks request".into(),
        message: e.to_string(),
    })?
}

/// Creates `topic` with `partitions` partitions unless it exists. Returns
/// whether it was created.
pub async fn ensure_topic(
    kafka: &KafkaSection,
    topic: &str,
    partitions: i32,
) -> Result<bool, KafkaError> {
    ensure_topic_replicated(kafka, topic, partitions, 1).await
}

/// [`ensure_topic`] with a replication factor (dead-letter topics are
/// written with acks=all: the factor must reach the broker's
/// `min.insync.replicas`).
pub async fn ensure_topic_replicated(
    kafka: &KafkaSection,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<bool, KafkaError> {
    // Look first: some brokers (and librdkafka's mock cluster) do not serve
    // CreateTopics, and an existing topic needs nothing.
    if partition_count(kafka, topic).await? > 0 {
        return Ok(false);
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .map_err(kafka_err(kafka, "admin client creation"))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(kafka_err(kafka, format!("create topic {topic}")))?;
    if let Some(result) = results.into_iter().next() {
        match result {
            Ok(_) => return Ok(true),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
            Err((name, code)) => {
                return Err(kafka_err(kafka, format!("create topic {name}"))(
                    rdkafka::error::KafkaError::AdminOp(code),
                ));
            }
        }
    }
    Ok(false)
}

/// Decides when a consumer-group member that has no partition should leave
/// and rejoin the group.
///
/// Some Kafka-compatible brokers (seen with Tansu 0.6) keep a member that
/// died during a rebalance as the group leader until another JoinGroup
/// arrives; the survivors then heartbeat happily with no partitions.
/// Rejoining after a while with nothing assigned lets the broker evict the
/// dead member. The delay doubles (capped) so an instance that is idle by
/// design (more instances than partitions) rarely disturbs the group.
#[derive(Debug)]
pub(crate) struct RejoinWatchdog {
    unassigned_since: Instant,
    rejoin_after: Duration,
}

impl Default for RejoinWatchdog {
    fn default() -> Self {
        RejoinWatchdog {
            unassigned_since: Instant::now(),
            rejoin_after: Self::FIRST_DELAY,
        }
    }
}

impl RejoinWatchdog {
    const FIRST_DELAY: Duration = Duration::from_secs(15);
    const MAX_DELAY: Duration = Duration::from_secs(600);

    /// Called once per poll with whether any partition is assigned; true
    /// when the member should rejoin now (the watchdog then backs off).
    pub fn should_rejoin(&mut self, has_partitions: bool) -> bool {
        if has_partitions {
            self.unassigned_since = Instant::now();
            self.rejoin_after = Self::FIRST_DELAY;
            return false;
        }
        if self.unassigned_since.elapsed() < self.rejoin_after {
            return false;
        }
        tracing::warn!(
            after_s = self.rejoin_after.as_secs(),
            "no partition assigned; rejoining the consumer group"
        );
        self.unassigned_since = Instant::now();
        self.rejoin_after = (self.rejoin_after * 2).min(Self::MAX_DELAY);
        true
    }
}
