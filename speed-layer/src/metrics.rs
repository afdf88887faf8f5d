//! Every metric the speed layer exports, in one place, with its name, unit
//! and meaning. Exposed in Prometheus text format on `speed.metrics_listen`.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

/// Records read, by topic and partition.
pub const RECORDS_IN: &str = "strata_speed_records_in_total";
/// Records that failed decoding or validation, by topic and error kind.
pub const DECODE_ERRORS: &str = "strata_speed_decode_errors_total";
/// Records written to a dead-letter topic, by topic.
pub const DEAD_LETTERS: &str = "strata_speed_dead_letters_total";
/// Events too late for at least one of their windows, by metric.
pub const LATE_EVENTS: &str = "strata_speed_late_events_total";
/// Records skipped because an earlier pass already processed them.
pub const DUPLICATES_SKIPPED: &str = "strata_speed_duplicates_skipped_total";
/// Wall-clock time minus the operator watermark, seconds, by topic.
pub const WATERMARK_DELAY: &str = "strata_speed_watermark_delay_seconds";
/// Operator watermark (min over active partitions), epoch ms, by topic.
pub const WATERMARK: &str = "strata_speed_watermark_ms";
/// Consumer lag in records, by topic and partition.
pub const CONSUMER_LAG: &str = "strata_speed_consumer_lag";
/// Open (window, group key) states held in memory.
pub const WINDOW_STATE: &str = "strata_speed_open_windows";
/// Windows that became final.
pub const WINDOWS_FINALIZED: &str = "strata_speed_windows_finalized_total";
/// ClickHouse insert batches, by table and outcome.
pub const SINK_BATCHES: &str = "strata_speed_sink_batches_total";
/// Rows written to ClickHouse, by table.
pub const SINK_ROWS: &str = "strata_speed_sink_rows_total";
/// ClickHouse insert latency, seconds.
pub const SINK_LATENCY: &str = "strata_speed_sink_latency_seconds";
/// Retried ClickHouse inserts, by table.
pub const SINK_RETRIES: &str = "strata_speed_sink_retries_total";
/// Times consumption was paused because ClickHouse was unavailable.
pub const BACKPRESSURE_PAUSES: &str = "strata_speed_backpressure_pauses_total";
/// Partitions currently assigned to this process.
pub const ASSIGNED_PARTITIONS: &str = "strata_speed_assigned_partitions";
/// Checkpoints stored.
pub const CHECKPOINTS: &str = "strata_speed_checkpoints_total";
/// Failed dead-letter deliveries (each is resent after a backoff), by
/// dead-letter topic.
pub const DEAD_LETTER_FAILURES: &str = "strata_speed_dead_letter_failures_total";
/// Dead letters not yet acknowledged by the broker.
pub const DEAD_LETTERS_PENDING: &str = "strata_speed_dead_letters_pending";
/// Dead letters whose payload was cut to `speed.dead_letter_max_payload_bytes`,
/// by source topic.
pub const DEAD_LETTERS_TRUNCATED: &str = "strata_speed_dead_letters_truncated_total";
/// Dead letters not sent again on a replay after a restart because the
/// dead-letter topic already holds them, by source topic.
pub const DEAD_LETTERS_ALREADY_SENT: &str = "strata_speed_dead_letters_already_sent_total";

/// Installs the process's recorder (see [`strata_telemetry::install`]) and
/// describes every metric of the speed layer.
pub fn install() -> PrometheusHandle {
    let handle = strata_telemetry::install();
    describe();
    // Avro sources' schema lookups.
    strata_registry::metrics::describe();
    handle
}

fn describe() {
    describe_counter!(
        RECORDS_IN,
        "Records read from Kafka, by topic and partition."
    );
    describe_counter!(
        DECODE_ERRORS,
        "Records that failed decoding or contract validation, by topic and kind."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Records written to the dead-letter topic, by source topic."
    );
    describe_counter!(
        LATE_EVENTS,
        "Events too late for a window (left to the batch layer), by metric."
    );
    describe_counter!(
        DUPLICATES_SKIPPED,
        "Redelivered records skipped because they were already processed."
    );
    describe_gauge!(
        WATERMARK_DELAY,
        "Wall clock minus the operator watermark, seconds, by topic."
    );
    describe_gauge!(
        WATERMARK,
        "Operator watermark (min over active partitions), epoch ms, by topic."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records between the consumer position and the partition end."
    );
    describe_gauge!(
        WINDOW_STATE,
        "Open (window, group key) states held in memory."
    );
    describe_counter!(WINDOWS_FINALIZED, "Windows that became final.");
    describe_counter!(
        SINK_BATCHES,
        "ClickHouse insert batches, by table and outcome."
    );
    describe_counter!(SINK_ROWS, "Rows written to ClickHouse, by table.");
    describe_histogram!(
        SINK_LATENCY,
        "ClickHouse insert latency in seconds, by table."
    );
    describe_counter!(SINK_RETRIES, "Retried ClickHouse inserts, by table.");
    describe_counter!(
        BACKPRESSURE_PAUSES,
        "Times consumption paused because ClickHouse was failing."
    );
    describe_gauge!(ASSIGNED_PARTITIONS, "Partitions assigned to this process.");
    describe_counter!(CHECKPOINTS, "Checkpoints stored.");
    describe_counter!(
        DEAD_LETTER_FAILURES,
        "Failed dead-letter deliveries, resent after a backoff; the partition's checkpoint waits, by dead-letter topic."
    );
    describe_gauge!(
        DEAD_LETTERS_PENDING,
        "Dead letters not yet acknowledged by the broker."
    );
    describe_counter!(
        DEAD_LETTERS_TRUNCATED,
        "Dead letters whose payload was cut to speed.dead_letter_max_payload_bytes, by source topic."
    );
    describe_counter!(
        DEAD_LETTERS_ALREADY_SENT,
        "Dead letters not sent again after a restart (already in the dead-letter topic), by source topic."
    );
}
