//! Errors of the speed layer and its Kafka tooling.

use strata_schemas::warehouse::WarehouseError;

/// A failure of the speed layer, the generator or the dead-letter tools.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    /// A Kafka client operation failed.
    #[error(
        "Kafka {operation} failed: {source}; check kafka.brokers ({brokers}) and that the broker is up"
    )]
    Kafka {
        /// What Strata was doing.
        operation: String,
        /// Bootstrap servers used.
        brokers: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A ClickHouse operation failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// The command's arguments do not make sense.
    #[error("{0}")]
    Usage(String),
}
