//! The storage form of aggregate states: every state reads back from its
//! columns, and the speed layer's RowBinary writer writes exactly the
//! columns and values of the map form.

use std::path::Path;

use proptest::prelude::*;
use strata_schemas::Event;
use strata_schemas::config::{self, Config, MetricDef};
use strata_schemas::value::Value;
use strata_warehouse::{rowbinary, state};

fn reference_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).expect("the reference config is valid")
}

/// (time offset ms, user, page, country, duration, partition)
fn events_strategy() -> impl Strategy<Value = Vec<(i64, u8, u8, u8, i64, u8)>> {
    proptest::collection::vec(
        (
            0i64..1_800_000,
            0u8..40,
            0u8..5,
            0u8..3,
            0i64..5_000,
            0u8..4,
        ),
        1..200,
    )
}

fn event(
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
fn all_states_config() -> Config {
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

proptest! {
    /// The stored form of a state reads back to the same state.
    #[test]
    fn state_round_trips_through_storage_columns(raw in events_strategy()) {
        let config = reference_config();
        for metric in &config.metrics {
            let mut acc = metric.plan.new_accumulator();
            for r in &raw {
                metric.plan.update(&mut acc, &event(metric, *r));
            }
            let mut row = serde_json::Map::new();
            state::write_json(&metric.plan, &acc, &mut row);
            let text = serde_json::Value::Object(row).to_string();
            let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
            let back = state::read_json(&metric.plan, &parsed).unwrap();
            prop_assert_eq!(back, acc);
        }
    }

    /// The speed layer's row writer (`state::write_rowbinary`) writes exactly
    /// the columns and values of the map form, for every kind of state
    /// (count/sum/min/max, exact and HLL distinct sketches, quantiles).
    #[test]
    fn rowbinary_state_equals_the_map_form(raw in events_strategy(), extra_users in 0u32..6000) {
        let config = all_states_config();
        let metric = &config.metrics[0];
        let mut acc = metric.plan.new_accumulator();
        for r in &raw {
            metric.plan.update(&mut acc, &event(metric, *r));
        }
        // Past the exact limit the distinct sketch switches to HLL.
        for u in 0..extra_users {
            let mut e = event(metric, raw[0]);
            let user = metric.source.contract.field_index("user_id").unwrap();
            e.values[user] = Value::String(format!("extra{u}"));
            metric.plan.update(&mut acc, &e);
        }
        let mut map = serde_json::Map::new();
        state::write_json(&metric.plan, &acc, &mut map);
        let mut bytes = Vec::new();
        state::write_rowbinary(&acc, &mut bytes);
        let columns: Vec<(String, String)> = state::columns(&metric.plan)
            .into_iter()
            .map(|c| (c.name, c.clickhouse_type.to_string()))
            .collect();
        let rows = rowbinary::read_rows(&bytes, &columns).unwrap();
        prop_assert_eq!(rows.len(), 1);
        prop_assert_eq!(&rows[0], &map);
    }
}
