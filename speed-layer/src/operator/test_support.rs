//! Metrics, events and emits for the operator's unit tests.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use strata_schemas::config::{self, Config};
use strata_schemas::value::Value;
use strata_schemas::{Event, MetricDef};

use super::PartitionState;
use crate::sink::SpeedTables;

pub(crate) const STAMP: u32 = 1_795_406_400; // 2026-11-23 04:00:00 UTC

/// A count/sum metric grouped by user, of `window` (a TOML table), its
/// source's decoder and allowed lateness (`lateness`, a duration).
pub(crate) fn metric(
    window: &str,
    lateness: &str,
) -> (Arc<MetricDef>, strata_schemas::Decoder, i64) {
    metric_grouped(window, lateness, r#"["user_id"]"#)
}

/// A count/sum metric grouped by `group_by` (a TOML array).
pub(crate) fn metric_grouped(
    window: &str,
    lateness: &str,
    group_by: &str,
) -> (Arc<MetricDef>, strata_schemas::Decoder, i64) {
    let text = format!(
        r#"
[contracts]
dir = {:?}
[sources.s]
topic = "t"
contract = "page_view"
event_time_field = "event_time"
allowed_lateness = "{lateness}"
[metrics.m]
source = "s"
window = {window}
group_by = {group_by}
aggregations = [
  {{ name = "n", function = "count" }},
  {{ name = "s", function = "sum", field = "duration_ms" }},
]
"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/contracts")
            .display()
            .to_string()
    );
    let config = config::parse(&text, "test.toml", Path::new("."), |_| None).unwrap();
    let source = config.sources.values().next().unwrap();
    (
        config.metrics[0].clone(),
        source.decoder(),
        source.allowed_lateness.as_i64(),
    )
}

/// A page view of user `u<user>` at `t`.
pub(crate) fn event(decoder: &strata_schemas::Decoder, t: i64, user: u64, duration: i64) -> Event {
    let payload = format!(
        r#"{{"event_time":{t},"user_id":"u{user}","page":"/p","country":"DE","duration_ms":{duration}}}"#
    );
    decoder.decode(payload.as_bytes()).unwrap()
}

/// An event of `metric`'s contract: (time offset ms, user, page, country,
/// duration, partition).
pub(crate) fn event_of(
    metric: &MetricDef,
    (t, user, page, country, duration, _): (i64, u8, u8, u8, i64, u8),
) -> Event {
    let c = &metric.source.contract;
    let mut values = vec![Value::Null; c.fields.len()];
    let time = 1_795_341_600_000 + t;
    values[c.field_index("event_time").unwrap()] = Value::Timestamp(time);
    values[c.field_index("user_id").unwrap()] = Value::String(format!("u{user}"));
    values[c.field_index("page").unwrap()] = Value::String(format!("/p{page}"));
    values[c.field_index("country").unwrap()] =
        Value::String(["DE", "FR", "US"][country as usize].into());
    values[c.field_index("duration_ms").unwrap()] = Value::Int(duration);
    Event {
        time_ms: time,
        values,
    }
}

/// One metric with every kind of state.
pub(crate) fn all_states_config() -> Config {
    let text = format!(
        r#"
[contracts]
dir = {:?}
[sources.s]
topic = "t"
contract = "page_view"
event_time_field = "event_time"
[metrics.m]
source = "s"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["country"]
aggregations = [
  {{ name = "n", function = "count" }},
  {{ name = "total", function = "sum", field = "duration_ms" }},
  {{ name = "lo", function = "min", field = "duration_ms" }},
  {{ name = "users", function = "count_distinct", field = "user_id" }},
  {{ name = "lat", function = "quantiles", field = "duration_ms", quantiles = [0.5, 0.99] }},
]
"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/contracts")
            .display()
            .to_string()
    );
    config::parse(&text, "all_states.toml", Path::new("."), |_| None).expect("test config")
}

/// A row an emit handed to the ClickHouse sink, read back from its
/// `RowBinary` body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParsedRow {
    /// The metric's name.
    pub(crate) metric: String,
    /// The row, keyed by column name.
    pub(crate) row: Map<String, Json>,
}

/// Emits `state` into the ClickHouse sink (rows stamped [`STAMP`]): the
/// checkpoint and count, and the tables' bodies, to compare emits whole.
pub(crate) fn emit(state: &mut PartitionState) -> (super::Emission, SpeedTables) {
    let mut tables = SpeedTables::new(STAMP);
    let emission = state.emit(&mut tables);
    (emission, tables)
}

/// Emits `state` and reads every row back, metric by metric in write order.
pub(crate) fn emit_parsed(state: &mut PartitionState) -> Vec<ParsedRow> {
    parsed(&emit(state).1)
}

/// Every row of `tables` read back, metric by metric in write order.
pub(crate) fn parsed(tables: &SpeedTables) -> Vec<ParsedRow> {
    tables
        .tables()
        .iter()
        .flat_map(|table| {
            table.parsed().into_iter().map(|row| ParsedRow {
                metric: table.metric().to_string(),
                row,
            })
        })
        .collect()
}
