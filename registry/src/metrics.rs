//! Every metric of the schema-registry client, in one place (rendered by
//! the recorder of the process that decodes: the speed layer, the archive).

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Registry requests, by HTTP status (`unreachable`: no answer).
pub const REQUESTS: &str = "strata_registry_requests_total";
/// Time of a schema lookup by id, seconds (a cache miss).
pub const LOOKUP: &str = "strata_registry_lookup_seconds";
/// Schema ids known to a process (compiled, incompatible or failed), by
/// source.
pub const CACHED: &str = "strata_registry_cached_schemas";

/// Describes the metrics (the process installs the recorder).
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Schema-registry requests, by HTTP status (unreachable: no answer)."
    );
    describe_histogram!(LOOKUP, "Schema lookups by id (cache misses), seconds.");
    describe_gauge!(
        CACHED,
        "Schema ids known to the process: compiled, incompatible or failed, by source."
    );
}

pub(crate) fn request(status: u16) {
    metrics::counter!(REQUESTS, "status" => status.to_string()).increment(1);
}

pub(crate) fn unreachable() {
    metrics::counter!(REQUESTS, "status" => "unreachable").increment(1);
}

pub(crate) fn lookup(took: Duration) {
    metrics::histogram!(LOOKUP).record(took.as_secs_f64());
}

pub(crate) fn cached(source: &str, entries: usize) {
    metrics::gauge!(CACHED, "source" => source.to_string()).set(entries as f64);
}
