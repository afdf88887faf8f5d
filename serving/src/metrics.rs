//! Every metric the serving layer exports, in one place (rendered by the
//! recorder shared with the other layers, on `GET /metrics`).

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Requests, by route and status.
pub const REQUESTS: &str = "strata_serving_requests_total";
/// Request latency, seconds, by route.
pub const REQUEST_LATENCY: &str = "strata_serving_request_seconds";
/// ClickHouse query time, seconds, by view.
pub const CLICKHOUSE_QUERY: &str = "strata_serving_clickhouse_query_seconds";
/// Entries of the `latest` cache, by metric.
pub const LATEST_CACHE_ENTRIES: &str = "strata_serving_latest_cache_entries";
/// Age of the `latest` cache, seconds, by metric.
pub const LATEST_CACHE_AGE: &str = "strata_serving_latest_cache_age_seconds";
/// Requests refused with 429: `serving.max_concurrent_queries` in flight.
pub const REJECTED_BUSY: &str = "strata_serving_rejected_busy_total";
/// Requests that ended without their answer (timeout, client gone,
/// refused or failed midway), whose ClickHouse queries were killed.
pub const QUERIES_KILLED: &str = "strata_serving_killed_queries_total";
/// Connections the API failed to accept (it keeps listening).
pub const ACCEPT_ERRORS: &str = "strata_serving_accept_errors_total";
/// Queries in flight (holding a slot of `serving.max_concurrent_queries`).
pub const QUERIES_IN_FLIGHT: &str = "strata_serving_queries_in_flight";

/// Installs the recorder and describes the metrics.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = strata_telemetry::install();
    describe_counter!(REQUESTS, "HTTP requests, by route and status.");
    describe_histogram!(
        REQUEST_LATENCY,
        "HTTP request latency in seconds, by route."
    );
    describe_histogram!(
        CLICKHOUSE_QUERY,
        "ClickHouse query time in seconds, by view."
    );
    describe_gauge!(
        LATEST_CACHE_ENTRIES,
        "Group keys in the latest-window cache, by metric."
    );
    describe_counter!(
        REJECTED_BUSY,
        "Requests refused with 429 because serving.max_concurrent_queries queries were in flight."
    );
    describe_counter!(
        QUERIES_KILLED,
        "Requests that ended without their answer (timeout, client gone, refused, failed) whose ClickHouse queries were killed."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Connections the API failed to accept (it keeps listening)."
    );
    describe_gauge!(
        QUERIES_IN_FLIGHT,
        "Queries in flight, out of serving.max_concurrent_queries."
    );
    describe_gauge!(
        LATEST_CACHE_AGE,
        "Seconds since the latest-window cache was refreshed, by metric."
    );
    handle
}
