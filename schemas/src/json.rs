//! JSON values written straight into a byte buffer.
//!
//! The speed layer writes every changed window as a `JSONEachRow` row many
//! times a second; building a `serde_json::Map` per row (a heap key per
//! column, a boxed value per cell) cost more than aggregating the events.
//! These writers produce the bytes `serde_json` would for the same values
//! (integers through the same `itoa` formatting; floats through
//! `serde_json` itself, except whole numbers, written as the integer and
//! `.0` exactly as it writes them; strings through its escaper unless
//! nothing needs escaping; non-finite floats as `null`), so the stored rows
//! do not change. Tests compare every writer with `serde_json`.

/// Writes `"name":` (`name` escaped), the start of an object member.
#[inline]
pub fn write_key(out: &mut Vec<u8>, name: &str) {
    write_str(out, name);
    out.push(b':');
}

/// Writes `text` as a JSON string.
#[inline]
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    // Group keys and stamps rarely need escaping: copied as they are.
    if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail, and a &str is always serialisable.
    serde_json::to_writer(&mut *out, text).expect("a string serialises into a Vec");
}

/// Writes an unsigned integer.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes a signed integer.
#[inline]
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes a float as `serde_json` does (its shortest round-trip
/// formatting; NaN and infinities as `null`).
#[inline]
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Sums, minima and maxima of integer fields are whole numbers, which
    // serde_json writes as the integer and `.0` (it does so up to 1e16;
    // below 1e15 every whole number is exact in an f64 and in an i64, with
    // margin); written so directly, without the float formatter. -0.0 is
    // left to serde_json, which keeps its sign.
    if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // Exact: a whole number below 1e15 fits an i64.
        write_i64(out, v as i64);
        out.extend_from_slice(b".0");
        return;
    }
    serde_json::to_writer(&mut *out, &v).expect("a float serialises into a Vec");
}

/// Writes `[a,b,...]` of unsigned integers.
pub fn write_u64_array(out: &mut Vec<u8>, values: impl IntoIterator<Item = u64>) {
    let values = values.into_iter();
    // Distinct-sketch columns hold thousands of 20-digit hashes: one
    // reservation instead of a doubling every few hundred numbers.
    out.reserve(values.size_hint().0 * 21 + 2);
    out.push(b'[');
    let mut digits = itoa::Buffer::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(digits.format(v).as_bytes());
    }
    out.push(b']');
}

/// Writes `[a,b,...]` of signed integers.
pub fn write_i64_array(out: &mut Vec<u8>, values: impl IntoIterator<Item = i64>) {
    out.push(b'[');
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_i64(out, v);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde_json(write: impl FnOnce(&mut Vec<u8>), expected: &serde_json::Value) {
        let mut out = Vec::new();
        write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(expected).unwrap()
        );
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for v in [0u64, 1, 42, u64::MAX] {
            same_as_serde_json(|o| write_u64(o, v), &v.into());
        }
        for v in [0i64, -1, i64::MIN, i64::MAX, 1_795_341_600_000] {
            same_as_serde_json(|o| write_i64(o, v), &v.into());
        }
        for v in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e300,
            -2.5e-12,
            123_456.789,
            f64::MIN_POSITIVE,
        ] {
            same_as_serde_json(|o| write_f64(o, v), &v.into());
        }
        // Whole numbers (the fast path) around every power of ten and
        // its edge.
        for e in 0..=17 {
            let p = 10f64.powi(e);
            for v in [
                p - 1.0,
                p,
                p + 1.0,
                -p,
                -(p - 1.0),
                p * 2.5,
                9_007_199_254_740_992.0,
            ] {
                same_as_serde_json(|o| write_f64(o, v), &v.into());
            }
        }
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            same_as_serde_json(|o| write_f64(o, v), &serde_json::Value::Null);
        }
        for s in [
            "",
            "plain",
            "quote \" and \\ back",
            "ctrl \n\t\u{1}",
            "ünï 🌍 ✓",
            "\u{7f} del",
            "/page/12",
            "2026-11-23 04:00:00",
        ] {
            same_as_serde_json(|o| write_str(o, s), &s.into());
        }
        same_as_serde_json(
            |o| write_u64_array(o, [3, 1, u64::MAX]),
            &vec![3u64, 1, u64::MAX].into(),
        );
        same_as_serde_json(|o| write_u64_array(o, []), &serde_json::json!([]));
        same_as_serde_json(|o| write_i64_array(o, [-3, 7]), &serde_json::json!([-3, 7]));
    }

    proptest::proptest! {
        #[test]
        fn floats_and_strings_match_serde_json(
            bits in proptest::prelude::any::<u64>(),
            whole in -2_000_000_000_000_000i64..2_000_000_000_000_000,
            text in ".{0,40}",
        ) {
            let v = f64::from_bits(bits);
            let expected = if v.is_finite() { v.into() } else { serde_json::Value::Null };
            same_as_serde_json(|o| write_f64(o, v), &expected);
            let w = whole as f64;
            same_as_serde_json(|o| write_f64(o, w), &w.into());
            same_as_serde_json(|o| write_f64(o, w / 8.0), &(w / 8.0).into());
            same_as_serde_json(|o| write_str(o, &text), &text.as_str().into());
        }
    }
}
