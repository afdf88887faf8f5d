//! The storage form of a partial aggregate state: the `agg_*` columns of the
//! speed and batch tables, and their codecs (`RowBinary` for the speed
//! layer's inserts, JSON maps for everything read back).
//!
//! This module is the only place the `agg_*` names are spelled: DDL, views,
//! the merged-answer SQL and both codecs take them from [`columns`] and
//! [`StateField`].

use serde_json::{Map, Value as Json};
use strata_schemas::aggregate::{Accumulator, AggPlan, FieldRef};
use strata_schemas::sketch::{DistinctSketch, QuantileSketch};

use crate::{json_u64, rowbinary};

/// Column of the event count.
pub const EVENTS_COLUMN: &str = "agg_events";

/// How a column of the storage form is typed in ClickHouse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateColumn {
    /// Column name.
    pub name: String,
    /// ClickHouse type.
    pub clickhouse_type: &'static str,
}

/// The state columns of one field, by the kind of state it keeps.
#[derive(Clone, Copy, Debug)]
pub struct StateField<'a>(pub &'a str);

impl StateField<'_> {
    /// `agg_<f>_count`, `_sum`, `_min`, `_max` of a numeric state.
    pub fn numeric(self) -> [String; 4] {
        let f = self.0;
        [
            format!("agg_{f}_count"),
            format!("agg_{f}_sum"),
            format!("agg_{f}_min"),
            format!("agg_{f}_max"),
        ]
    }

    /// `agg_<f>_distinct_hashes`, `_distinct_hll` of a distinct sketch.
    pub fn distinct(self) -> [String; 2] {
        let f = self.0;
        [
            format!("agg_{f}_distinct_hashes"),
            format!("agg_{f}_distinct_hll"),
        ]
    }

    /// `agg_<f>_quantile_keys`, `_quantile_counts` of a quantile sketch.
    pub fn quantiles(self) -> [String; 2] {
        let f = self.0;
        [
            format!("agg_{f}_quantile_keys"),
            format!("agg_{f}_quantile_counts"),
        ]
    }
}

fn field(f: &FieldRef) -> StateField<'_> {
    StateField(&f.name)
}

/// The storage columns of a partial state, in a fixed order: `agg_events`,
/// then per numeric field `agg_<f>_count/_sum/_min/_max`, per distinct field
/// `agg_<f>_distinct_hashes/_distinct_hll`, per quantile field
/// `agg_<f>_quantile_keys/_quantile_counts`.
pub fn columns(plan: &AggPlan) -> Vec<StateColumn> {
    let col = |name: String, clickhouse_type| StateColumn {
        name,
        clickhouse_type,
    };
    let mut cols = vec![col(EVENTS_COLUMN.into(), "UInt64")];
    for f in plan.numeric_fields() {
        let types = ["UInt64", "Float64", "Float64", "Float64"];
        cols.extend(
            field(f)
                .numeric()
                .into_iter()
                .zip(types)
                .map(|(n, t)| col(n, t)),
        );
    }
    for f in plan.distinct_fields() {
        let types = ["Array(UInt64)", "Array(UInt8)"];
        cols.extend(
            field(f)
                .distinct()
                .into_iter()
                .zip(types)
                .map(|(n, t)| col(n, t)),
        );
    }
    for f in plan.quantile_fields() {
        let types = ["Array(Int32)", "Array(UInt64)"];
        cols.extend(
            field(f)
                .quantiles()
                .into_iter()
                .zip(types)
                .map(|(n, t)| col(n, t)),
        );
    }
    cols
}

/// Writes the partial state into `row` under [`columns`] names.
pub fn write_json(plan: &AggPlan, acc: &Accumulator, row: &mut Map<String, Json>) {
    row.insert(EVENTS_COLUMN.into(), Json::from(acc.events));
    for (f, s) in plan.numeric_fields().iter().zip(acc.numeric.iter()) {
        let [count, sum, min, max] = field(f).numeric();
        row.insert(count, Json::from(s.count));
        row.insert(sum, Json::from(s.sum));
        row.insert(min, Json::from(s.min));
        row.insert(max, Json::from(s.max));
    }
    for (f, s) in plan.distinct_fields().iter().zip(acc.distinct.iter()) {
        let (hashes, registers) = s.to_columns();
        let [h, r] = field(f).distinct();
        row.insert(h, Json::from(hashes));
        row.insert(r, Json::from(registers));
    }
    for (f, s) in plan.quantile_fields().iter().zip(acc.quantiles.iter()) {
        let (keys, counts) = s.to_columns();
        let [k, c] = field(f).quantiles();
        row.insert(k, Json::from(keys));
        row.insert(c, Json::from(counts));
    }
}

/// Appends the partial state as `RowBinary` values of [`columns`], in that
/// order (see [`crate::rowbinary`]).
pub fn write_rowbinary(acc: &Accumulator, out: &mut Vec<u8>) {
    rowbinary::write_u64(out, acc.events);
    for s in acc.numeric.iter() {
        rowbinary::write_u64(out, s.count);
        rowbinary::write_f64(out, s.sum);
        rowbinary::write_f64(out, s.min);
        rowbinary::write_f64(out, s.max);
    }
    for s in acc.distinct.iter() {
        let (hashes, registers) = s.columns();
        rowbinary::write_u64_array(out, &hashes);
        rowbinary::write_u8_array(out, registers);
    }
    for s in acc.quantiles.iter() {
        let (keys, counts) = s.to_columns();
        rowbinary::write_i32_array(out, &keys);
        rowbinary::write_u64_array(out, &counts);
    }
}

/// Reads a partial state written by [`write_json`] (a ClickHouse
/// JSONEachRow row or a [`crate::rowbinary::read_rows`] row; 64-bit
/// integers may arrive quoted).
pub fn read_json(plan: &AggPlan, row: &Map<String, Json>) -> Result<Accumulator, StateError> {
    let mut acc = plan.new_accumulator();
    acc.events = get_u64(row, EVENTS_COLUMN)?;
    for (f, s) in plan.numeric_fields().iter().zip(acc.numeric.iter_mut()) {
        let [count, sum, min, max] = field(f).numeric();
        s.count = get_u64(row, &count)?;
        s.sum = get_f64(row, &sum)?;
        s.min = get_f64(row, &min)?;
        s.max = get_f64(row, &max)?;
    }
    for (f, s) in plan.distinct_fields().iter().zip(acc.distinct.iter_mut()) {
        let [h, r] = field(f).distinct();
        let hashes = get_array(row, &h, json_u64)?;
        let registers = get_array(row, &r, |v| json_u64(v).and_then(|x| u8::try_from(x).ok()))?;
        *s = DistinctSketch::from_columns(hashes, registers).map_err(|e| StateError {
            column: format!("agg_{}_distinct", f.name),
            message: e.to_string(),
        })?;
    }
    for (f, s) in plan.quantile_fields().iter().zip(acc.quantiles.iter_mut()) {
        let [k, c] = field(f).quantiles();
        let keys = get_array(row, &k, |v| v.as_i64().and_then(|x| i32::try_from(x).ok()))?;
        let counts = get_array(row, &c, json_u64)?;
        *s = QuantileSketch::from_columns(keys, counts).map_err(|e| StateError {
            column: format!("agg_{}_quantile", f.name),
            message: e.to_string(),
        })?;
    }
    Ok(acc)
}

/// A stored partial state that cannot be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state column {column}: {message}")]
pub struct StateError {
    /// Column at fault.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

fn get_u64(row: &Map<String, Json>, column: &str) -> Result<u64, StateError> {
    row.get(column)
        .and_then(json_u64)
        .ok_or_else(|| StateError {
            column: column.into(),
            message: "missing or not an unsigned integer".into(),
        })
}

fn get_f64(row: &Map<String, Json>, column: &str) -> Result<f64, StateError> {
    row.get(column)
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| StateError {
            column: column.into(),
            message: "missing or not a number".into(),
        })
}

fn get_array<T>(
    row: &Map<String, Json>,
    column: &str,
    item: impl Fn(&Json) -> Option<T>,
) -> Result<Vec<T>, StateError> {
    let err = || StateError {
        column: column.into(),
        message: "missing or not an array of the expected element type".into(),
    };
    row.get(column)
        .and_then(Json::as_array)
        .ok_or_else(err)?
        .iter()
        .map(|v| item(v).ok_or_else(err))
        .collect()
}
