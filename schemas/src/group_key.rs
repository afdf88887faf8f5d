//! The one byte encoding of a group key (a metric's group-by values of an
//! event): type-tagged and length-prefixed, so distinct keys never share an
//! encoding. The speed layer interns keys by it, the batch layer groups by
//! it; [`values`] reads an encoding back value by value without allocating
//! (as [`ValueRef`]s).

use crate::config::MetricDef;
use crate::decode::Event;
use crate::leb128;
use crate::value::{Value, ValueRef};

const NULL: u8 = 0;
const STRING: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 3;
const BOOL: u8 = 4;
const TIMESTAMP: u8 = 5;

/// Appends the encoding of `metric`'s group key of `event` to `buf`.
#[inline]
pub fn encode(buf: &mut Vec<u8>, metric: &MetricDef, event: &Event) {
    for g in &metric.group_by {
        encode_value(buf, &event.values[g.index]);
    }
}

/// Appends one value's encoding: a tag, then the value (a string's length
/// as LEB128: one byte under 128, so a page with its country still fits a
/// short inline key).
#[inline]
pub fn encode_value(buf: &mut Vec<u8>, v: &Value) {
    encode_value_ref(buf, v.as_ref());
}

/// [`encode_value`] of a borrowed value (read from an archived column).
#[inline]
pub fn encode_value_ref(buf: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => buf.push(NULL),
        ValueRef::String(s) => {
            buf.push(STRING);
            leb128::write(buf, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        ValueRef::Int(i) => {
            buf.push(INT);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Float(f) => {
            buf.push(FLOAT);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        ValueRef::Bool(b) => buf.extend_from_slice(&[BOOL, u8::from(b)]),
        ValueRef::Timestamp(t) => {
            buf.push(TIMESTAMP);
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
}

/// The values of an encoding written by [`encode`], in order. The input is
/// always an encoding this module wrote, so malformed input is a bug (a
/// panic).
pub fn values(mut bytes: &[u8]) -> impl Iterator<Item = ValueRef<'_>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        head
    }
    fn eight(bytes: &mut &[u8]) -> [u8; 8] {
        take(bytes, 8).try_into().expect("8 bytes")
    }
    std::iter::from_fn(move || {
        let (&tag, rest) = bytes.split_first()?;
        bytes = rest;
        Some(match tag {
            NULL => ValueRef::Null,
            STRING => {
                let (len, rest) = leb128::read(bytes).expect("a length was encoded");
                bytes = rest;
                let text = take(&mut bytes, len);
                ValueRef::String(std::str::from_utf8(text).expect("encoded from a String"))
            }
            INT => ValueRef::Int(i64::from_le_bytes(eight(&mut bytes))),
            FLOAT => ValueRef::Float(f64::from_bits(u64::from_le_bytes(eight(&mut bytes)))),
            BOOL => ValueRef::Bool(take(&mut bytes, 1)[0] != 0),
            TIMESTAMP => ValueRef::Timestamp(i64::from_le_bytes(eight(&mut bytes))),
            other => unreachable!("group key tag {other} was never written"),
        })
    })
}

/// The owned values of an encoding.
#[cfg(test)]
fn decode(bytes: &[u8]) -> Vec<Value> {
    values(bytes).map(ValueRef::to_value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_have_distinct_encodings() {
        let values = vec![
            Value::Null,
            Value::String("ü/€ \"x\"".into()),
            Value::Int(-7),
            Value::Float(-0.0),
            Value::Bool(true),
            Value::Timestamp(1_795_341_600_000),
            Value::String(String::new()),
            Value::Float(f64::NAN),
            // 200 bytes: a length of two LEB128 bytes.
            Value::String("ß".repeat(100)),
        ];
        let encode = |values: &[Value]| {
            let mut buf = Vec::new();
            for v in values {
                encode_value(&mut buf, v);
            }
            buf
        };
        let buf = encode(&values);
        assert_eq!(decode(&buf).len(), values.len());
        // Every single change of one value, and every prefix and extension,
        // is another key: the dictionary compares encodings byte for byte,
        // so each must be encoded differently.
        let mut others: Vec<Vec<Value>> = (0..values.len()).map(|n| values[..n].to_vec()).collect();
        let mut longer = values.clone();
        longer.push(Value::Null);
        others.push(longer);
        for i in 0..values.len() {
            for replacement in [
                Value::Null,
                Value::String("ü/€ \"y\"".into()),
                Value::String("ü/€ \"x\" ".into()),
                Value::Int(7),
                Value::Float(0.0),
                Value::Bool(false),
                Value::Timestamp(-7),
            ] {
                if replacement.to_string() == values[i].to_string()
                    && std::mem::discriminant(&replacement) == std::mem::discriminant(&values[i])
                {
                    continue;
                }
                let mut changed = values.clone();
                changed[i] = replacement;
                others.push(changed);
            }
        }
        for other in others {
            assert_ne!(encode(&other), buf, "{other:?}");
        }
    }

    #[test]
    fn every_value_type_round_trips() {
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
            encode_value(&mut buf, v);
        }
        assert_eq!(decode(&buf), values);
    }
}
