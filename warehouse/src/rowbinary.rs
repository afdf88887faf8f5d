//! ClickHouse's `RowBinary` format: the body of the speed layer's inserts.
//!
//! Every value is written as its bytes: integers and floats little-endian,
//! `DateTime` as `UInt32` seconds, strings and arrays as a LEB128 length
//! then their contents. No column names, no quoting, no number formatting:
//! a distinct sketch's 4,096 hashes are 32 KiB copied, where `JSONEachRow`
//! took about 80 KiB of decimal digits that ClickHouse then had to parse.
//! The columns are those of the insert's column list, in its order (see
//! `warehouse::speed_row_columns`).
//!
//! [`read_rows`] turns a body back into one map per row, for tests and
//! tools that inspect what was written.

use chrono::DateTime;
use serde_json::{Map, Value as Json};
use strata_schemas::leb128;
use strata_schemas::value::FieldType;
use strata_schemas::value::ValueRef;

/// Appends a `UInt8`.
#[inline]
pub fn write_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends an `Int32`.
#[inline]
pub fn write_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends an `Int64`.
#[inline]
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `UInt64`.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `Float64` (every bit pattern, NaN and infinities included).
#[inline]
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `DateTime`: seconds since the Unix epoch, UTC.
#[inline]
pub fn write_datetime(out: &mut Vec<u8>, unix_s: u32) {
    out.extend_from_slice(&unix_s.to_le_bytes());
}

/// Appends the length of a string or an array (unsigned LEB128).
#[inline]
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    leb128::write(out, len);
}

/// Appends a group-by value as a `RowBinary` value of its column, of type
/// `ty`: always the column's layout, so one odd value can never shift the
/// rest of the body. The decoder gives a field its contract type (an int
/// widened to a float is converted); group-by fields are required or
/// defaulted, so a key never holds a null, and any other mismatch is a bug:
/// in release builds the column's zero is written.
pub fn write_key_value(out: &mut Vec<u8>, value: ValueRef<'_>, ty: FieldType) {
    match (value, ty) {
        (ValueRef::String(s), FieldType::String) => write_str(out, s),
        (ValueRef::Int(i) | ValueRef::Timestamp(i), FieldType::Int | FieldType::Timestamp) => {
            write_i64(out, i);
        }
        (ValueRef::Float(f), FieldType::Float) => write_f64(out, f),
        (ValueRef::Int(i), FieldType::Float) => write_f64(out, i as f64),
        (ValueRef::Bool(b), FieldType::Bool) => write_u8(out, u8::from(b)),
        (other, ty) => {
            debug_assert!(other == ValueRef::Null, "a {ty} column holding {other:?}");
            match ty {
                FieldType::String => write_str(out, ""),
                FieldType::Int | FieldType::Timestamp => write_i64(out, 0),
                FieldType::Float => write_f64(out, 0.0),
                FieldType::Bool => write_u8(out, 0),
            }
        }
    }
}

/// Appends a `String`.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Appends an `Array(UInt64)`.
pub fn write_u64_array(out: &mut Vec<u8>, values: &[u64]) {
    write_len(out, values.len());
    out.reserve(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends an `Array(UInt8)`.
pub fn write_u8_array(out: &mut Vec<u8>, values: &[u8]) {
    write_len(out, values.len());
    out.extend_from_slice(values);
}

/// Appends an `Array(Int32)`.
pub fn write_i32_array(out: &mut Vec<u8>, values: &[i32]) {
    write_len(out, values.len());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads `RowBinary` values from the front of a body, one typed value at a
/// time, borrowing strings from the body (no allocation). What the body's
/// columns are is the caller's knowledge: [`read_rows`] reads any listed
/// columns into maps, the API reads its answer columns straight into
/// states.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    rest: &'a [u8],
}

/// Why a value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The body ends inside the value.
    #[error("the body ends inside a value")]
    Truncated,
    /// A length that does not end within 10 bytes.
    #[error("a length does not end within 10 bytes")]
    BadLength,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `body`.
    #[inline]
    pub fn new(body: &'a [u8]) -> Self {
        Cursor { rest: body }
    }

    /// The bytes not read yet.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte was read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        let Some((head, rest)) = self.rest.split_at_checked(n) else {
            return Err(CursorError::Truncated);
        };
        self.rest = rest;
        Ok(head)
    }

    /// The next `N` bytes, for a fixed-width value.
    #[inline]
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CursorError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(CursorError::Truncated);
        };
        self.rest = rest;
        Ok(*head)
    }

    /// A `UInt8`.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, CursorError> {
        self.fixed::<1>().map(|[b]| b)
    }

    /// An `Int32`.
    #[inline]
    pub fn i32(&mut self) -> Result<i32, CursorError> {
        self.fixed().map(i32::from_le_bytes)
    }

    /// An `Int64`.
    #[inline]
    pub fn i64(&mut self) -> Result<i64, CursorError> {
        self.fixed().map(i64::from_le_bytes)
    }

    /// A `UInt64`.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, CursorError> {
        self.fixed().map(u64::from_le_bytes)
    }

    /// A `Float64`.
    #[inline]
    pub fn f64(&mut self) -> Result<f64, CursorError> {
        self.fixed().map(f64::from_le_bytes)
    }

    /// A `DateTime`: seconds since the Unix epoch, UTC.
    #[inline]
    pub fn datetime(&mut self) -> Result<u32, CursorError> {
        self.fixed().map(u32::from_le_bytes)
    }

    /// The length of a string or an array (unsigned LEB128).
    #[inline]
    pub fn length(&mut self) -> Result<usize, CursorError> {
        match leb128::read(self.rest) {
            Some((n, rest)) => {
                self.rest = rest;
                Ok(n)
            }
            // Every byte left says "more follows": the body ends inside it.
            None if self.rest.len() < 10 => Err(CursorError::Truncated),
            None => Err(CursorError::BadLength),
        }
    }

    /// The bytes of a `String`.
    #[inline]
    pub fn string(&mut self) -> Result<&'a [u8], CursorError> {
        let len = self.length()?;
        self.take(len)
    }
}

/// Why a body could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowBinaryError {
    /// The body ends inside a value.
    #[error("row {row}, column `{column}`: the body ends inside the value")]
    Truncated {
        /// Row number, from 0.
        row: usize,
        /// Column name.
        column: String,
    },
    /// A `String` that is not UTF-8 (Strata only writes UTF-8).
    #[error("row {row}, column `{column}`: the string is not UTF-8")]
    NotUtf8 {
        /// Row number, from 0.
        row: usize,
        /// Column name.
        column: String,
    },
    /// A length that does not end within 10 bytes.
    #[error("row {row}, column `{column}`: the length does not end within 10 bytes")]
    BadLength {
        /// Row number, from 0.
        row: usize,
        /// Column name.
        column: String,
    },
    /// Bytes to read, but no column to read them as.
    #[error("{bytes} bytes of rows, but no columns to read them as")]
    NoColumns {
        /// Length of the body.
        bytes: usize,
    },
    /// A column type this reader does not know.
    #[error(
        "column `{column}` has type `{ty}`: only the types of Strata's speed rows can be read back"
    )]
    UnsupportedType {
        /// Column name.
        column: String,
        /// Its ClickHouse type.
        ty: String,
    },
}

/// Reads every row of `body`, whose columns are `columns` ((name, ClickHouse
/// type), in order), into a map per row: integers and floats as JSON
/// numbers, strings as strings, `DateTime` as `YYYY-MM-DD hh:mm:ss` (UTC),
/// arrays as arrays; the forms a `JSONEachRow` body of the same rows has.
pub fn read_rows(
    body: &[u8],
    columns: &[(String, String)],
) -> Result<Vec<Map<String, Json>>, RowBinaryError> {
    if columns.is_empty() && !body.is_empty() {
        return Err(RowBinaryError::NoColumns { bytes: body.len() });
    }
    let mut cursor = Cursor::new(body);
    let mut rows = Vec::new();
    while !cursor.is_empty() {
        let row = rows.len();
        let mut map = Map::new();
        for (name, ty) in columns {
            let mut reader = Reader {
                cursor: &mut cursor,
                row,
                column: name,
            };
            let value = reader.value(ty)?;
            map.insert(name.clone(), value);
        }
        rows.push(map);
    }
    Ok(rows)
}

/// A [`Cursor`] reading one value of one row, naming both in its errors.
struct Reader<'a, 'b> {
    cursor: &'a mut Cursor<'b>,
    row: usize,
    column: &'a str,
}

impl Reader<'_, '_> {
    fn fail(&self, e: CursorError) -> RowBinaryError {
        let (row, column) = (self.row, self.column.to_string());
        match e {
            CursorError::Truncated => RowBinaryError::Truncated { row, column },
            CursorError::BadLength => RowBinaryError::BadLength { row, column },
        }
    }

    fn value(&mut self, ty: &str) -> Result<Json, RowBinaryError> {
        let c = &mut *self.cursor;
        let value = match ty {
            "UInt8" => c.u8().map(Json::from),
            "Int32" => c.i32().map(Json::from),
            "Int64" => c.i64().map(Json::from),
            "UInt64" => c.u64().map(Json::from),
            "Float64" => c.f64().map(Json::from),
            "DateTime" => c.datetime().map(|secs| {
                let time = DateTime::from_timestamp(i64::from(secs), 0).expect("any u32 is a time");
                Json::from(time.format("%Y-%m-%d %H:%M:%S").to_string())
            }),
            "String" => {
                let bytes = c.string().map_err(|e| self.fail(e))?;
                return match std::str::from_utf8(bytes) {
                    Ok(s) => Ok(Json::from(s)),
                    Err(_) => Err(RowBinaryError::NotUtf8 {
                        row: self.row,
                        column: self.column.to_string(),
                    }),
                };
            }
            _ => match ty.strip_prefix("Array(").and_then(|t| t.strip_suffix(')')) {
                Some(inner @ ("UInt8" | "Int32" | "UInt64")) => {
                    let len = c.length().map_err(|e| self.fail(e))?;
                    let items = (0..len)
                        .map(|_| self.value(inner))
                        .collect::<Result<Vec<Json>, _>>()?;
                    return Ok(Json::Array(items));
                }
                _ => {
                    return Err(RowBinaryError::UnsupportedType {
                        column: self.column.to_string(),
                        ty: ty.to_string(),
                    });
                }
            },
        };
        value.map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_schemas::group_key;
    use strata_schemas::value::Value;

    fn columns(spec: &[(&str, &str)]) -> Vec<(String, String)> {
        spec.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn every_type_reads_back_as_written() {
        let cols = columns(&[
            ("a", "UInt8"),
            ("b", "Int32"),
            ("c", "Int64"),
            ("d", "UInt64"),
            ("e", "Float64"),
            ("f", "DateTime"),
            ("g", "String"),
            ("h", "Array(UInt64)"),
            ("i", "Array(UInt8)"),
            ("j", "Array(Int32)"),
        ]);
        let mut body = Vec::new();
        let long = "é".repeat(100); // a length past one LEB128 byte
        for (n, text) in [(0_u64, ""), (1, long.as_str())] {
            write_u8(&mut body, 255);
            write_i32(&mut body, -7);
            write_i64(&mut body, i64::MIN);
            write_u64(&mut body, u64::MAX - n);
            write_f64(&mut body, -1.5);
            write_datetime(&mut body, 1_795_406_400);
            write_str(&mut body, text);
            write_u64_array(&mut body, &[u64::MAX, 0, n]);
            write_u8_array(&mut body, &[]);
            write_i32_array(&mut body, &[i32::MIN, 3]);
        }
        let rows = read_rows(&body, &cols).unwrap();
        assert_eq!(rows.len(), 2);
        for (n, (row, text)) in rows.iter().zip(["", long.as_str()]).enumerate() {
            let expected = serde_json::json!({
                "a": 255, "b": -7, "c": i64::MIN, "d": u64::MAX - n as u64, "e": -1.5,
                "f": "2026-11-23 04:00:00", "g": text, "h": [u64::MAX, 0, n],
                "i": [], "j": [i32::MIN, 3],
            });
            assert_eq!(Json::Object(row.clone()), expected);
        }
    }

    #[test]
    fn a_short_body_or_an_unknown_type_is_an_error_naming_the_column() {
        let cols = columns(&[("n", "Int64"), ("s", "String")]);
        let mut body = Vec::new();
        write_i64(&mut body, 1);
        write_str(&mut body, "abc");
        body.pop();
        assert_eq!(
            read_rows(&body, &cols),
            Err(RowBinaryError::Truncated {
                row: 0,
                column: "s".into()
            })
        );
        let err = read_rows(&[1], &columns(&[("x", "Decimal(9, 2)")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column `x` has type `Decimal(9, 2)`: only the types of Strata's speed rows can be read back"
        );
        assert_eq!(
            read_rows(&[0xFF; 11], &columns(&[("s", "String")])),
            Err(RowBinaryError::BadLength {
                row: 0,
                column: "s".into()
            })
        );
        assert_eq!(
            read_rows(&[1], &[]),
            Err(RowBinaryError::NoColumns { bytes: 1 })
        );
        let mut bad = Vec::new();
        write_len(&mut bad, 1);
        bad.push(0xFF);
        assert!(matches!(
            read_rows(&bad, &columns(&[("s", "String")])),
            Err(RowBinaryError::NotUtf8 { row: 0, .. })
        ));
    }

    #[test]
    fn key_values_are_written_in_their_column_type() {
        let values = vec![
            Value::Null,
            Value::String("ü/€ \"x\"".into()),
            Value::Int(-7),
            Value::Float(1.5),
            Value::Bool(true),
            Value::Timestamp(1_795_341_600_000),
            Value::String(String::new()),
            Value::String("ß".repeat(100)),
        ];
        let mut buf = Vec::new();
        for v in &values {
            group_key::encode_value(&mut buf, v);
        }
        // Rows carry each value in its column's type, reading back as the
        // value's JSON form (a null, which validation keeps out of keys, as
        // the column's zero).
        let types = [
            FieldType::String,
            FieldType::String,
            FieldType::Int,
            FieldType::Float,
            FieldType::Bool,
            FieldType::Timestamp,
            FieldType::String,
            FieldType::String,
        ];
        for ((kv, v), ty) in group_key::values(&buf).zip(&values).zip(types) {
            let mut body = Vec::new();
            write_key_value(&mut body, kv, ty);
            let column = [("k".to_string(), ty.clickhouse_type().to_string())];
            let row = read_rows(&body, &column).unwrap().remove(0);
            let expected = if *v == Value::Null {
                Json::from("")
            } else {
                v.to_json()
            };
            assert_eq!(row["k"], expected, "{v:?}");
        }
    }
}
