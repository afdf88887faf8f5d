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
    /// The value, borrowed.
    #[inline]
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::String(s) => ValueRef::String(s),
            Value::Int(v) => ValueRef::Int(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Bool(v) => ValueRef::Bool(*v),
            Value::Timestamp(v) => ValueRef::Timestamp(*v),
        }
    }

    /// Overwrites the value with `value`, reusing its string buffer when
    /// both are strings (no allocation once warmed up).
    #[inline]
    pub fn set(&mut self, value: ValueRef<'_>) {
        match (&mut *self, value) {
            (Value::String(buf), ValueRef::String(s)) => {
                buf.clear();
                buf.push_str(s);
            }
            (slot, value) => *slot = value.to_value(),
        }
    }

    /// The value as a float, for numeric aggregations (`None` for null and
    /// non-numeric values).
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        self.as_ref().as_f64()
    }

    /// Whether the value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The stable 64-bit hash used by `count_distinct` (see
    /// [`ValueRef::distinct_hash`]).
    #[inline]
    pub fn distinct_hash(&self) -> Option<u64> {
        self.as_ref().distinct_hash()
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

/// A value borrowed from wherever it is kept: an [`Event`](crate::Event), a
/// group key's encoding ([`crate::group_key::values`]), a column of an
/// archived file. The numeric and distinct readings of a value are defined
/// here once, for every place values come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// A string.
    String(&'a str),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Epoch milliseconds.
    Timestamp(i64),
}

impl ValueRef<'_> {
    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::String(s) => Value::String(s.to_string()),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Timestamp(t) => Value::Timestamp(t),
        }
    }

    /// The value as a float, for numeric aggregations (`None` for null and
    /// non-numeric values).
    #[inline]
    pub fn as_f64(self) -> Option<f64> {
        match self {
            ValueRef::Int(v) => Some(v as f64),
            ValueRef::Float(v) => Some(v),
            _ => None,
        }
    }

    /// The stable 64-bit hash used by `count_distinct`; both layers hash
    /// every value through here, so they agree bit for bit.
    #[inline]
    pub fn distinct_hash(self) -> Option<u64> {
        use crate::sketch::{hash_bool, hash_f64, hash_i64, hash_str};
        match self {
            ValueRef::Null => None,
            ValueRef::String(s) => Some(hash_str(s)),
            ValueRef::Int(v) | ValueRef::Timestamp(v) => Some(hash_i64(v)),
            ValueRef::Float(v) => Some(hash_f64(v)),
            ValueRef::Bool(v) => Some(hash_bool(v)),
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
