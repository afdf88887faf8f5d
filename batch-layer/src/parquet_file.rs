//! Encoding archived events as Parquet.
//!
//! Columns: one per contract field, typed (`timestamp` fields as UTC
//! millisecond timestamps), then the Kafka coordinates `_kafka_topic`,
//! `_kafka_partition`, `_kafka_offset`, `_kafka_timestamp`. Files are zstd
//! compressed with row groups of at most [`ROW_GROUP_ROWS`] rows, so a
//! reader can skip row groups by their event-time statistics.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use strata_schemas::Event;
use strata_schemas::contract::Contract;
use strata_schemas::value::{FieldType, Value};

use crate::BatchError;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Kafka coordinate column names.
pub const KAFKA_TOPIC: &str = "_kafka_topic";
/// Kafka partition column.
pub const KAFKA_PARTITION: &str = "_kafka_partition";
/// Kafka offset column.
pub const KAFKA_OFFSET: &str = "_kafka_offset";
/// Kafka record timestamp column.
pub const KAFKA_TIMESTAMP: &str = "_kafka_timestamp";

/// One archived record.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedEvent {
    /// The decoded event.
    pub event: Event,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka record timestamp (epoch ms), if the record had one.
    pub kafka_timestamp_ms: Option<i64>,
}

/// The Arrow schema of a contract's archive files.
pub fn schema(contract: &Contract) -> SchemaRef {
    let mut fields: Vec<Field> = contract
        .fields
        .iter()
        .map(|f| Field::new(&f.name, arrow_type(f.ty), !f.always_present()))
        .collect();
    fields.extend([
        Field::new(KAFKA_TOPIC, DataType::Utf8, false),
        Field::new(KAFKA_PARTITION, DataType::Int32, false),
        Field::new(KAFKA_OFFSET, DataType::Int64, false),
        Field::new(
            KAFKA_TIMESTAMP,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]);
    Arc::new(Schema::new(fields))
}

fn arrow_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::String => DataType::Utf8,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

/// Encodes events of one Kafka partition as one Parquet file.
pub fn encode(
    contract: &Contract,
    topic: &str,
    partition: i32,
    events: &[&ArchivedEvent],
) -> Result<Vec<u8>, BatchError> {
    let schema = schema(contract);
    let n = events.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in contract.fields.iter().enumerate() {
        let column: ArrayRef = match field.ty {
            FieldType::String => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for e in events {
                    match &e.event.values[i] {
                        Value::String(s) => b.append_value(s),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Int => {
                let mut b = Int64Builder::with_capacity(n);
                for e in events {
                    match &e.event.values[i] {
                        Value::Int(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Float => {
                let mut b = Float64Builder::with_capacity(n);
                for e in events {
                    match &e.event.values[i] {
                        Value::Float(v) => b.append_value(*v),
                        Value::Int(v) => b.append_value(*v as f64),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                for e in events {
                    match &e.event.values[i] {
                        Value::Bool(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Timestamp => {
                let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
                for e in events {
                    match &e.event.values[i] {
                        Value::Timestamp(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        columns.push(column);
    }
    let mut topics = StringBuilder::with_capacity(n, n * topic.len());
    let mut partitions = Int32Builder::with_capacity(n);
    let mut offsets = Int64Builder::with_capacity(n);
    let mut timestamps = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for e in events {
        topics.append_value(topic);
        partitions.append_value(partition);
        offsets.append_value(e.offset);
        timestamps.append_option(e.kafka_timestamp_ms);
    }
    columns.push(Arc::new(topics.finish()));
    columns.push(Arc::new(partitions.finish()));
    columns.push(Arc::new(offsets.finish()));
    columns.push(Arc::new(timestamps.finish()));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| BatchError::Usage(format!("build archive batch: {e}")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))
        .map_err(|e| BatchError::parquet("open writer", e))?;
    writer
        .write(&batch)
        .map_err(|e| BatchError::parquet("write rows", e))?;
    writer
        .into_inner()
        .map_err(|e| BatchError::parquet("finish file", e))
}
