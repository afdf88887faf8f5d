//! Errors of the archive and the batch layer.

use strata_kafka::KafkaError;
use strata_warehouse::WarehouseError;

/// A failure of `strata archive`, `strata batch` or `strata reconcile`.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The object store refused or failed an operation.
    #[error(
        "object store {operation} failed: {source}; check object_store.url and, for S3, the endpoint and AWS credentials"
    )]
    Store {
        /// What Strata was doing.
        operation: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A Parquet file could not be written.
    #[error("Parquet {operation} failed: {source}")]
    Parquet {
        /// What Strata was doing.
        operation: String,
        /// The writer's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A Parquet file of the archive could not be read.
    #[error(
        "reading {path} failed: {message}; the file is not a Strata archive file or is damaged"
    )]
    Read {
        /// The object.
        path: String,
        /// Polars' message.
        message: String,
    },
    /// Kafka.
    #[error(transparent)]
    Kafka(Box<KafkaError>),
    /// ClickHouse.
    #[error(transparent)]
    Warehouse(Box<WarehouseError>),
    /// The command's arguments or the stored state do not make sense.
    #[error("{0}")]
    Usage(String),
}

impl BatchError {
    /// Wraps an object store error with the operation.
    pub fn store(operation: impl Into<String>, source: object_store::Error) -> Self {
        BatchError::Store {
            operation: operation.into(),
            source,
        }
    }

    /// Wraps a Parquet error with the operation.
    pub fn parquet(operation: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        BatchError::Parquet {
            operation: operation.into(),
            source,
        }
    }
}

impl From<WarehouseError> for BatchError {
    fn from(e: WarehouseError) -> Self {
        BatchError::Warehouse(Box::new(e))
    }
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> Self {
        BatchError::Kafka(Box::new(e))
    }
}
