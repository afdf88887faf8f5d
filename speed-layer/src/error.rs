//! Errors of the speed layer and its Kafka tooling.

use strata_schemas::warehouse::WarehouseError;

/// A failed Kafka client operation, with what Strata was doing.
#[derive(Debug)]
pub struct KafkaFailure {
    /// What Strata was doing.
    pub operation: String,
    /// Bootstrap servers used.
    pub brokers: String,
    /// The client error.
    pub source: rdkafka::error::KafkaError,
}

/// A failure of the speed layer, the generator or the dead-letter tools.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    /// A Kafka client operation failed.
    #[error(
        "Kafka {} failed: {}; check kafka.brokers ({}) and that the broker is up",
        .0.operation,
        .0.source,
        .0.brokers
    )]
    Kafka(Box<KafkaFailure>),
    /// A ClickHouse operation failed (boxed: the client error is large and
    /// this type travels through every hot-path `Result`).
    #[error(transparent)]
    Warehouse(Box<WarehouseError>),
    /// The command's arguments do not make sense.
    #[error("{0}")]
    Usage(String),
}

impl From<WarehouseError> for SpeedError {
    fn from(e: WarehouseError) -> Self {
        SpeedError::Warehouse(Box::new(e))
    }
}
