//! What the broker says about a source topic: each partition's log end
//! (high-water mark). The batch layer trusts a partition's archive progress
//! as complete only when it reached that end; wall-clock idleness cannot
//! tell a quiet partition from an archiver that fell behind.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use strata_kafka::{KafkaError, client_config, kafka_err};
use strata_schemas::config::KafkaSection;

use crate::BatchError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `(low, high)` watermarks of every partition of `topic`, by partition. A
/// topic that does not exist has no partition (an empty map).
pub async fn partition_ends(
    kafka: &KafkaSection,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, BatchError> {
    let kafka = kafka.clone();
    let topic = topic.to_string();
    // librdkafka's calls block: keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&kafka)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka_err(&kafka, "watermark client creation"))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), TIMEOUT)
            .map_err(kafka_err(&kafka, format!("metadata of {topic}")))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = BTreeMap::new();
        for p in partitions {
            let marks = consumer
                .fetch_watermarks(&topic, p, TIMEOUT)
                .map_err(kafka_err(&kafka, format!("watermarks of {topic}/{p}")))?;
            ends.insert(p, marks);
        }
        Ok::<_, KafkaError>(ends)
    })
    .await
    .map_err(|e| {
        BatchError::from(KafkaError::Task {
            operation: "watermarks".into(),
            message: e.to_string(),
        })
    })?
    .map_err(BatchError::from)
}
