//! The metrics of the consumer-group member, shared by the layers that run
//! one (the speed layer and the archive): exported by whichever process's
//! recorder is installed.

use metrics::describe_counter;

/// Assigned partitions whose loaded start was not in the log, by `kind`
/// (`below_log_start`: records between the start and the log start were
/// deleted by retention before the layer read them; `beyond_high_watermark`:
/// the topic was recreated or truncated) and `topic`.
pub const OFFSET_GAPS: &str = "strata_kafka_offset_gap_total";
/// Records between a start below the log start and the log start: deleted
/// by retention before the layer read them, by topic.
pub const OFFSET_GAP_RECORDS: &str = "strata_kafka_offset_gap_records_total";
/// Mirror commits skipped because the previous one was still unanswered
/// (one commit in flight at a time keeps heartbeats from queueing behind
/// commits on a slow coordinator).
pub const COMMITS_SKIPPED: &str = "strata_kafka_commits_skipped_total";
/// Members abandoned because the coordinator did not confirm their leave
/// in time (their partitions move after the session timeout).
pub const UNCLEAN_LEAVES: &str = "strata_kafka_unclean_leaves_total";

/// Describes the metrics above (idempotent).
pub fn describe() {
    describe_counter!(
        OFFSET_GAPS,
        "Assigned partitions whose stored start was outside the log, by kind (below_log_start, beyond_high_watermark) and topic."
    );
    describe_counter!(
        OFFSET_GAP_RECORDS,
        "Records deleted by retention before the layer read them (start below the log start), by topic."
    );
    describe_counter!(
        COMMITS_SKIPPED,
        "Mirror offset commits skipped because the previous one was still in flight."
    );
    describe_counter!(
        UNCLEAN_LEAVES,
        "Group members abandoned because the coordinator did not confirm their leave in time."
    );
}
