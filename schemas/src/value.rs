//! Field types and typed values of decoded events.

use std::fmt;

/// The type of a contract field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float.
    Float,
    /// `true` / `false`.
    Bool,
    /// A point in time, stored as epoch milliseconds (UTC).
    Timestamp,
}

impl FieldType {
    /// The name used in contracts and error messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }

    /// Whether sum, avg, min, max and quantiles can run over this type.
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int | FieldType::Float)
    }

    /// Whether every value of `self` is also a value of `to` without loss of
    /// meaning (the only type changes a new contract version may make).
    pub fn widens_to(self, to: FieldType) -> bool {
        self == to || matches!((self, to), (FieldType::Int, FieldType::Float))
    }

    /// ClickHouse column type for a group-by column of this type. Group-by
    /// columns are never Nullable: they are part of the sorting key, which old
    /// ClickHouse versions refuse to make Nullable (validation insists that
    /// group-by fields are required or defaulted).
    pub fn clickhouse_type(self) -> &'static str {
        match self {
            FieldType::String => "String",
            FieldType::Int | FieldType::Timestamp => "Int64",
            FieldType::Float => "Float64",
            FieldType::Bool => "UInt8",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed field value of a decoded event.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Absent optional field without a default.
    Null,
    /// Text.
    String(String),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Epoch milliseconds.
    Timestamp(i64),
}

impl Value {
    /// The value as a float, for numeric aggregations (`None` for null and
    /// non-numeric values).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// Whether the value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The stable 64-bit hash used by `count_distinct`; the batch layer hashes
    /// its columns with the same functions, so both layers agree bit for bit.
    pub fn distinct_hash(&self) -> Option<u64> {
        use crate::sketch::{hash_bool, hash_f64, hash_i64, hash_str};
        match self {
            Value::Null => None,
            Value::String(s) => Some(hash_str(s)),
            Value::Int(v) | Value::Timestamp(v) => Some(hash_i64(*v)),
            Value::Float(v) => Some(hash_f64(*v)),
            Value::Bool(v) => Some(hash_bool(*v)),
        }
    }

    /// The value as JSON, for writing group keys to ClickHouse and APIs.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Int(v) | Value::Timestamp(v) => serde_json::Value::from(*v),
            Value::Float(v) => serde_json::Value::from(*v),
            Value::Bool(v) => serde_json::Value::from(u8::from(*v)),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Int(v) | Value::Timestamp(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms}ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}
