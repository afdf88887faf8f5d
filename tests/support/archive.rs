//! The master dataset as the tests check it: what the generator sent and
//! what the archive's Parquet files hold, both keyed by (partition, offset).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use strata_generator::clickstream::GeneratedRecord;

/// What the generator sent: (partition, offset within the partition) of
/// every valid record → its event time. The generator writes each
/// partition in order starting at offset 0.
pub fn sent_records(records: &[GeneratedRecord]) -> BTreeMap<(i32, i64), i64> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in records {
        let offset = next.entry(r.partition).or_insert(0);
        if let Some(e) = &r.event {
            out.insert((r.partition, *offset), e.event_time_ms);
        }
        *offset += 1;
    }
    out
}

/// Adds the records of one archive file (`name` in messages) to `out`:
/// (partition, offset) → event time; panics if one is already there, so a
/// record stored twice is caught.
pub fn add_file_records<R: parquet::file::reader::ChunkReader + 'static>(
    file: R,
    name: &str,
    out: &mut BTreeMap<(i32, i64), i64>,
) {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    for batch in reader {
        let batch = batch.unwrap();
        let partition = batch
            .column_by_name("_kafka_partition")
            .unwrap()
            .as_primitive::<Int32Type>()
            .clone();
        let offset = batch
            .column_by_name("_kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let time = batch
            .column_by_name("event_time")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .clone();
        assert_eq!(time.null_count(), 0);
        for i in 0..batch.num_rows() {
            let previous = out.insert((partition.value(i), offset.value(i)), time.value(i));
            assert!(
                previous.is_none(),
                "{name}: record {}/{} is in the dataset twice",
                partition.value(i),
                offset.value(i)
            );
        }
    }
}
