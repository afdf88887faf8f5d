//! Errors of the speed layer and its dead-letter tools.

use strata_kafka::KafkaError;
use strata_warehouse::WarehouseError;

/// A failure of the speed layer or the dead-letter tools.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    /// A Kafka client operation failed (boxed, like the warehouse error:
    /// this type travels through every hot-path `Result`).
    #[error(transparent)]
    Kafka(Box<KafkaError>),
    /// A ClickHouse operation failed (boxed: the client error is large and
    /// this type travels through every hot-path `Result`).
    #[error(transparent)]
    Warehouse(Box<WarehouseError>),
    /// The command's arguments do not make sense.
    #[error("{0}")]
    Usage(String),
}

impl From<KafkaError> for SpeedError {
    fn from(e: KafkaError) -> Self {
        SpeedError::Kafka(Box::new(e))
    }
}

impl From<WarehouseError> for SpeedError {
    fn from(e: WarehouseError) -> Self {
        SpeedError::Warehouse(Box::new(e))
    }
}
