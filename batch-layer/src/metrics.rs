//! Every metric the archive and the batch layer export, in one place.
//! Rendered by the same Prometheus recorder as the speed layer's
//! ([`strata_telemetry::install`]), on `archive.metrics_listen` and
//! `batch.metrics_listen`.

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Records read by the archiver, by topic.
pub const ARCHIVE_RECORDS: &str = "strata_archive_records_in_total";
/// Records the archiver skipped as invalid (the speed layer dead-letters them).
pub const ARCHIVE_INVALID: &str = "strata_archive_invalid_records_total";
/// Records the archive waited on because the schema registry could not be
/// asked for their schema, by topic.
pub const ARCHIVE_REGISTRY_WAITS: &str = "strata_archive_registry_waits_total";
/// Replayed `registry_unavailable` dead letters skipped (the archive holds
/// their originals), by topic.
pub const ARCHIVE_REPLAYS_SKIPPED: &str = "strata_archive_replays_skipped_total";
/// Parquet files uploaded, by source.
pub const ARCHIVE_FILES: &str = "strata_archive_files_total";
/// Bytes uploaded, by source.
pub const ARCHIVE_BYTES: &str = "strata_archive_bytes_total";
/// Events archived, by source.
pub const ARCHIVE_EVENTS: &str = "strata_archive_events_total";
/// Upload latency of one flush (every file plus the progress), seconds.
pub const ARCHIVE_UPLOAD_LATENCY: &str = "strata_archive_upload_seconds";
/// Flushes dropped because another archiver claimed the partition, by topic.
pub const ARCHIVE_FENCED: &str = "strata_archive_fenced_flushes_total";
/// Wall clock minus the newest archived event time, seconds, by source.
pub const ARCHIVE_LAG: &str = "strata_archive_lag_seconds";
/// Batch runs, by metric and outcome.
pub const BATCH_RUNS: &str = "strata_batch_runs_total";
/// Batch runs that found another run of their metric holding the lease
/// (skipped, or a backfill refused), by metric.
pub const BATCH_LEASE_BUSY: &str = "strata_batch_lease_busy_total";
/// Batch runs computed but not published because another run published or
/// took the lease meanwhile (their rows stay invisible), by metric.
pub const BATCH_RUNS_SUPERSEDED: &str = "strata_batch_runs_superseded_total";
/// Batch run duration, seconds, by metric.
pub const BATCH_RUN_DURATION: &str = "strata_batch_run_seconds";
/// Chunks of split runs whose rows are all in, by metric.
pub const BATCH_CHUNKS_DONE: &str = "strata_batch_chunks_done_total";
/// Failed chunk attempts, by metric and outcome (`retried`: another
/// attempt follows; `failed`: the last one, the run stays unpublished).
pub const BATCH_CHUNK_FAILURES: &str = "strata_batch_chunk_failures_total";
/// Duration of one successful chunk attempt, seconds, by metric.
pub const BATCH_CHUNK_DURATION: &str = "strata_batch_chunk_seconds";
/// Events read from the archive, by metric.
pub const BATCH_ROWS_READ: &str = "strata_batch_rows_read_total";
/// Rows written to the batch view, by metric.
pub const BATCH_ROWS_WRITTEN: &str = "strata_batch_rows_written_total";
/// Batch watermark, epoch ms, by metric.
pub const BATCH_WATERMARK: &str = "strata_batch_watermark_ms";
/// Differences found by the last `strata reconcile`, by metric and kind.
pub const RECONCILE_DIFFERENCES: &str = "strata_reconcile_differences";

/// Installs the recorder (shared with the speed layer) and describes every
/// metric of this crate.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = strata_telemetry::install();
    // The archive's Avro sources' schema lookups.
    strata_registry::metrics::describe();
    describe_counter!(ARCHIVE_RECORDS, "Records read by the archiver, by topic.");
    describe_counter!(
        ARCHIVE_REGISTRY_WAITS,
        "Records the archive waited on for the schema registry, by topic."
    );
    describe_counter!(
        ARCHIVE_REPLAYS_SKIPPED,
        "Replayed registry_unavailable dead letters skipped (their originals are archived), by topic."
    );
    describe_counter!(
        ARCHIVE_INVALID,
        "Records the archiver skipped as invalid (they are in the dead-letter topic)."
    );
    describe_counter!(ARCHIVE_FILES, "Parquet files uploaded, by source.");
    describe_counter!(ARCHIVE_BYTES, "Bytes uploaded, by source.");
    describe_counter!(ARCHIVE_EVENTS, "Events archived, by source.");
    describe_histogram!(
        ARCHIVE_UPLOAD_LATENCY,
        "Upload latency of one flush (its files and progress), seconds."
    );
    describe_counter!(
        ARCHIVE_FENCED,
        "Flushes dropped because another archiver claimed the partition (its owner re-reads them), by topic."
    );
    describe_gauge!(
        ARCHIVE_LAG,
        "Wall clock minus the newest archived event time, seconds, by source."
    );
    describe_counter!(BATCH_RUNS, "Batch runs, by metric and outcome.");
    describe_counter!(
        BATCH_LEASE_BUSY,
        "Batch runs that found another run of their metric holding the lease, by metric."
    );
    describe_counter!(
        BATCH_RUNS_SUPERSEDED,
        "Batch runs not published because another run published or took the lease meanwhile, by metric."
    );
    describe_histogram!(
        BATCH_RUN_DURATION,
        "Batch run duration, seconds, by metric."
    );
    describe_counter!(
        BATCH_CHUNKS_DONE,
        "Chunks of split batch runs whose rows are all in, by metric."
    );
    describe_counter!(
        BATCH_CHUNK_FAILURES,
        "Failed batch chunk attempts, by metric and outcome (retried or failed)."
    );
    describe_histogram!(
        BATCH_CHUNK_DURATION,
        "Duration of one successful batch chunk attempt, seconds, by metric."
    );
    describe_counter!(BATCH_ROWS_READ, "Events read from the archive, by metric.");
    describe_counter!(
        BATCH_ROWS_WRITTEN,
        "Rows written to the batch view, by metric."
    );
    describe_gauge!(BATCH_WATERMARK, "Batch watermark, epoch ms, by metric.");
    describe_gauge!(
        RECONCILE_DIFFERENCES,
        "Differences between the batch and speed views found by the last reconcile, by metric and kind."
    );
    handle
}
