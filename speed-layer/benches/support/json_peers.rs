//! Reference decoders for the pipeline bench: the `page_view` contract
//! decoded by the fastest general JSON libraries, each the way a user would
//! write it for speed — a `serde` derive over borrowed `&str` fields, no
//! per-event allocation — and each producing what the contract decoder
//! produces for the pipeline: the event time in epoch milliseconds (RFC 3339
//! strings parsed with the same function, numbers taken as they are), the
//! strings, and `duration_ms` as an integer (numeric strings coerced, as the
//! contract allows).
//!
//! They check less than the contract decoder: no length limits, no
//! duplicate keys, no per-field messages (serde's own). They are the
//! yardstick for the parse itself, not alternatives to it.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use strata_schemas::value::parse_rfc3339_ms;

/// What every decoder hands to the pipeline, borrowed from the payload
/// (the bench black-boxes it rather than reading every field).
#[allow(dead_code)]
pub struct PageView<'a> {
    pub time_ms: i64,
    pub user_id: &'a str,
    pub page: &'a str,
    pub country: &'a str,
    pub duration_ms: i64,
    pub referrer: Option<&'a str>,
}

/// A JSON number or string, borrowed (timestamps and coercible integers).
enum NumberOrText<'a> {
    Int(i64),
    Float(f64),
    Text(&'a str),
}

impl<'de: 'a, 'a> Deserialize<'de> for NumberOrText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = NumberOrText<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumberOrText::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(NumberOrText::Int)
                    .map_err(|_| E::custom("out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(NumberOrText::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(NumberOrText::Text(v))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl NumberOrText<'_> {
    fn time_ms(&self) -> Option<i64> {
        match self {
            NumberOrText::Int(v) => Some(*v),
            NumberOrText::Float(_) => None,
            NumberOrText::Text(t) => parse_rfc3339_ms(t),
        }
    }
    fn int(&self) -> Option<i64> {
        match self {
            NumberOrText::Int(v) => Some(*v),
            NumberOrText::Float(v) if v.fract() == 0.0 => Some(*v as i64),
            NumberOrText::Float(_) => None,
            NumberOrText::Text(t) => t.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    event_time: NumberOrText<'a>,
    user_id: &'a str,
    page: &'a str,
    country: Option<&'a str>,
    #[serde(borrow)]
    duration_ms: Option<NumberOrText<'a>>,
    referrer: Option<&'a str>,
}

/// serde_json's `RawValue` form: the two fields that take a number or a
/// string are kept as raw JSON text and read after the parse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRaw<'a> {
    #[serde(borrow)]
    event_time: &'a serde_json::value::RawValue,
    user_id: &'a str,
    page: &'a str,
    country: Option<&'a str>,
    #[serde(borrow)]
    duration_ms: Option<&'a serde_json::value::RawValue>,
    referrer: Option<&'a str>,
}

fn finish<'a>(wire: &Wire<'a>) -> Option<PageView<'a>> {
    Some(PageView {
        time_ms: wire.event_time.time_ms()?,
        user_id: wire.user_id,
        page: wire.page,
        country: wire.country.unwrap_or("unknown"),
        duration_ms: match &wire.duration_ms {
            Some(d) => d.int()?,
            None => 0,
        },
        referrer: wire.referrer,
    })
}

/// Raw JSON text of a number or a string, read without a second parse.
fn raw_number_or_text(raw: &str) -> NumberOrText<'_> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(text) => NumberOrText::Text(text),
        None => match raw.parse::<i64>() {
            Ok(v) => NumberOrText::Int(v),
            Err(_) => NumberOrText::Float(raw.parse().unwrap_or(f64::NAN)),
        },
    }
}

/// serde_json with borrowed `&str` and `RawValue` fields.
pub fn serde_json_raw(payload: &[u8]) -> Option<PageView<'_>> {
    let wire: WireRaw<'_> = serde_json::from_slice(payload).ok()?;
    finish(&Wire {
        event_time: raw_number_or_text(wire.event_time.get()),
        user_id: wire.user_id,
        page: wire.page,
        country: wire.country,
        duration_ms: wire.duration_ms.map(|d| raw_number_or_text(d.get())),
        referrer: wire.referrer,
    })
}

/// sonic-rs (SIMD) through the same serde derive.
pub fn sonic_rs(payload: &[u8]) -> Option<PageView<'_>> {
    finish(&sonic_rs::from_slice(payload).ok()?)
}

/// simd-json (a port of simdjson): parses in place, so each payload is
/// copied into a reused scratch buffer first, as a consumer that does not
/// own the fetched bytes must; its tape buffers are reused too.
pub struct SimdJson {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl SimdJson {
    pub fn new() -> Self {
        SimdJson {
            scratch: Vec::with_capacity(4096),
            buffers: simd_json::Buffers::default(),
        }
    }

    /// Decodes one payload; the result borrows the scratch buffer.
    pub fn decode<'s>(&'s mut self, payload: &[u8]) -> Option<PageView<'s>> {
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let wire: Wire<'s> =
            simd_json::serde::from_slice_with_buffers(&mut self.scratch, &mut self.buffers).ok()?;
        finish(&wire)
    }
}
