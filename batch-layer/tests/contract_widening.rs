//! A contract may widen a field from `int` to `float` (a backward-compatible
//! change, `strata schemas check` accepts it). Archive files written under
//! the older version hold that column as Int64; the batch layer must read
//! them with the newer contract and give the same numbers as new files.

use std::path::Path;

use serde_json::json;
use strata_batch::compute::{EventFrame, recompute};
use strata_batch::parquet_file::{self, ArchivedEvent};
use strata_schemas::{Event, Value, config};

const T0: i64 = 1_795_341_600_000;

fn write_contract(dir: &Path, version: u32, amount_type: &str) {
    let contract = json!({
        "name": "payment",
        "version": version,
        "description": "A payment.",
        "unknown_fields": "reject",
        "fields": [
            {"name": "event_time", "type": "timestamp", "required": true, "formats": ["epoch_ms"]},
            {"name": "shop", "type": "string", "required": true},
            {"name": "amount", "type": amount_type, "required": true}
        ]
    });
    let folder = dir.join("contracts/payment");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join(format!("v{version}.json")),
        serde_json::to_vec_pretty(&contract).unwrap(),
    )
    .unwrap();
}

fn config(dir: &Path) -> config::Config {
    let toml = r#"
[contracts]
dir = "contracts"

[sources.payments]
topic = "payments"
contract = "payment"
contract_version = 2
event_time_field = "event_time"

[metrics.amount_per_minute]
source = "payments"
window = { kind = "tumbling", size = "1m" }
group_by = ["shop"]
aggregations = [
  { name = "payments", function = "count" },
  { name = "amount_sum", function = "sum", field = "amount" },
]
"#;
    std::fs::write(dir.join("strata.toml"), toml).unwrap();
    config::load_with_env(&dir.join("strata.toml"), |_| None).unwrap()
}

fn event(values: Vec<Value>, time_ms: i64, offset: i64) -> ArchivedEvent {
    ArchivedEvent {
        event: Event { time_ms, values },
        offset,
        kafka_timestamp_ms: Some(time_ms),
    }
}

#[test]
fn int_column_of_an_older_contract_version_is_read_as_float() {
    let dir = tempfile::tempdir().unwrap();
    write_contract(dir.path(), 1, "int");
    write_contract(dir.path(), 2, "float");
    let config = config(dir.path());
    let metric = config.metric("amount_per_minute").unwrap();
    let v1 = config.contracts.get("payment", 1).unwrap();

    // Written by the archive while the source still used v1: Int64 amounts.
    let old: Vec<ArchivedEvent> = [(7, "a"), (5, "a"), (11, "b")]
        .iter()
        .enumerate()
        .map(|(i, &(amount, shop))| {
            event(
                vec![
                    Value::Timestamp(T0 + i as i64),
                    Value::String(shop.into()),
                    Value::Int(amount),
                ],
                T0 + i as i64,
                i as i64,
            )
        })
        .collect();
    let old_file = parquet_file::encode(&v1, "payments", 0, &old.iter().collect::<Vec<_>>())
        .expect("encode v1 file");
    // Written after the upgrade: Float64 amounts.
    let new = [event(
        vec![
            Value::Timestamp(T0 + 10),
            Value::String("a".into()),
            Value::Float(0.5),
        ],
        T0 + 10,
        3,
    )];
    let new_file = parquet_file::encode(
        &metric.source.contract,
        "payments",
        0,
        &new.iter().collect::<Vec<_>>(),
    )
    .expect("encode v2 file");

    let frames = vec![
        EventFrame::read(metric, "old.parquet", old_file.into())
            .expect("a v1 file (Int64 amount) must be readable with the v2 contract (float)"),
        EventFrame::read(metric, "new.parquet", new_file.into()).expect("v2 file"),
    ];
    let out = recompute(metric, &frames, T0, T0 + 60_000, T0, T0 + 60_000);
    assert_eq!(out.events_read, 4);
    let by_shop: Vec<(Vec<Value>, Vec<serde_json::Value>)> = out
        .windows
        .iter()
        .map(|w| (w.key.to_vec(), metric.plan.finalize(&w.acc)))
        .collect();
    assert_eq!(
        by_shop,
        vec![
            (vec![Value::String("a".into())], vec![json!(3), json!(12.5)]),
            (vec![Value::String("b".into())], vec![json!(1), json!(11.0)]),
        ]
    );
}
