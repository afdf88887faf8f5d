//! The contract decoder's JSON reader: one pass over a payload's top-level
//! object, key by key, with values as borrowed [`Raw`] scalars.
//!
//! Events are small flat objects whose strings are short: what costs is the
//! per-value dispatch, not scanning long runs of bytes. So this reader is a
//! plain recursive-descent parser (RFC 8259) with no intermediate tree and
//! no serde visitor between the bytes and the contract's slots:
//! - the payload is checked as UTF-8 once (SIMD, `simdutf8`), so every
//!   string is a borrowed `&str` slice with no per-string check;
//! - strings are scanned eight bytes at a time for a quote, a backslash or
//!   a control byte; only a string with escapes is copied (unescaped);
//! - integers are accumulated as they are scanned; only a number with a
//!   fraction or an exponent goes through the standard float parser;
//! - nested arrays and objects (which no contract field accepts) are
//!   validated and skipped, up to [`MAX_DEPTH`] levels.
//!
//! A payload that is not well-formed JSON is [`Malformed`], with the byte
//! offset and what was expected there.

use std::borrow::Cow;
use std::fmt;

use crate::decode::Raw;

/// Nesting limit for skipped arrays and objects (serde_json's default):
/// deeper payloads are refused rather than risking the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a payload is not well-formed JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// Byte offset of the fault.
    pub at: usize,
    /// What the grammar expected there, or what is wrong.
    pub what: &'static str,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// The payload around byte `at`, quoted, for error messages: up to 16
/// bytes before and after, `…` where cut.
pub(crate) fn excerpt(payload: &[u8], at: usize) -> String {
    let from = at.saturating_sub(16);
    let to = payload.len().min(at + 16);
    let shown = String::from_utf8_lossy(&payload[from.min(to)..to]);
    format!(
        "{}{shown:?}{}",
        if from > 0 { "…" } else { "" },
        if to < payload.len() { "…" } else { "" }
    )
}

/// An object key as read: its text, and its length and first eight bytes
/// for a quick comparison with known names.
pub(crate) struct Key<'a> {
    pub text: Cow<'a, str>,
    pub head: KeyHead,
}

/// A key's length and first sixteen bytes (zero-padded), compared at once:
/// names of up to 16 bytes need no other comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyHead {
    len: usize,
    words: [u64; 2],
}

impl KeyHead {
    /// How many bytes the head holds.
    pub(crate) const BYTES: usize = 16;

    pub(crate) fn of(bytes: &[u8]) -> Self {
        let mut head = [0u8; Self::BYTES];
        for (to, from) in head.iter_mut().zip(bytes) {
            *to = *from;
        }
        Self::from_bytes(bytes.len(), head)
    }

    #[inline(always)]
    fn from_bytes(len: usize, head: [u8; Self::BYTES]) -> Self {
        let (low, high) = head.split_at(8);
        KeyHead {
            len,
            words: [word(low), word(high)],
        }
    }

    /// The head of the `len` bytes at `start` of `payload`: two loads and a
    /// mask when sixteen bytes are there (a key is followed by at least its
    /// closing quote, `:`, a value and `}`).
    #[inline(always)]
    fn at(payload: &[u8], start: usize, len: usize) -> Self {
        match payload.get(start..start + Self::BYTES) {
            Some(chunk) => {
                let (low, high) = chunk.split_at(8);
                let (low, high) = (word(low), word(high));
                // The low `n` bytes of a word, for n < 8.
                let keep = |n: usize| (1u64 << (8 * n)) - 1;
                let words = if len >= Self::BYTES {
                    [low, high]
                } else if len >= 8 {
                    [low, high & keep(len - 8)]
                } else {
                    [low & keep(len), 0]
                };
                KeyHead { len, words }
            }
            None => Self::of(&payload[start..start + len]),
        }
    }
}

/// Eight bytes as a little-endian word.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

/// A cursor over one payload.
pub(crate) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

const WORD_LOW: u64 = 0x0101_0101_0101_0101;
const WORD_HIGH: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `word` that is below `n` (SWAR; exact for every
/// `n` ≤ 128 when no byte has bit 7 set, and bytes with bit 7 set are
/// never reported).
#[inline(always)]
fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(WORD_LOW * u64::from(n)) & !word & WORD_HIGH
}

/// Bit 7 of each byte of `word` equal to `b`.
#[inline(always)]
fn bytes_equal(word: u64, b: u8) -> u64 {
    bytes_below(word ^ (WORD_LOW * u64::from(b)), 1)
}

impl<'a> Reader<'a> {
    /// A reader over `payload`, which must be UTF-8 (JSON text is).
    pub(crate) fn new(payload: &'a [u8]) -> Result<Self, Malformed> {
        // simdutf8 checks 32 bytes a step where std checks 16 (on ASCII);
        // std is asked again only for the offset of invalid bytes.
        let text = simdutf8::basic::from_utf8(payload).map_err(|_| Malformed {
            at: std::str::from_utf8(payload).map_or_else(|e| e.valid_up_to(), str::len),
            what: "invalid UTF-8",
        })?;
        Ok(Reader {
            text,
            bytes: payload,
            pos: 0,
        })
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, Malformed> {
        Err(Malformed { at: self.pos, what })
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Opens the top-level object: `Ok(false)` when the payload is some
    /// other JSON value (the rest of the payload is then checked, so that
    /// a malformed payload is never reported as a non-object).
    pub(crate) fn begin_object(&mut self) -> Result<bool, Malformed> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => {
                self.skip_value(0)?;
                self.end()?;
                Ok(false)
            }
            None => self.fail("empty payload, expected a JSON object"),
        }
    }

    /// The next key of the top-level object, and its `:`; `None` after the
    /// closing brace. `first` is true for the first call.
    #[inline(always)]
    pub(crate) fn next_key(&mut self, first: bool) -> Result<Option<Key<'a>>, Malformed> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !first => {
                self.pos += 1;
                self.skip_whitespace();
            }
            _ if first => {}
            None => return self.fail("unexpected end of payload, expected ',' or '}'"),
            Some(_) => return self.fail("expected ',' or '}' after an object value"),
        }
        if self.peek() != Some(b'"') {
            return self.fail("expected a string key");
        }
        let start = self.pos + 1;
        let text = self.string()?;
        let head = match &text {
            Cow::Borrowed(text) => KeyHead::at(self.bytes, start, text.len()),
            Cow::Owned(text) => KeyHead::of(text.as_bytes()),
        };
        let key = Key { text, head };
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return self.fail("expected ':' after an object key");
        }
        self.pos += 1;
        Ok(Some(key))
    }

    /// After the top-level value: only whitespace may follow.
    pub(crate) fn end(&mut self) -> Result<(), Malformed> {
        self.skip_whitespace();
        if self.pos < self.bytes.len() {
            return self.fail("trailing characters after the JSON value");
        }
        Ok(())
    }

    /// The value after a key, as a scalar ([`Raw::Array`] and
    /// [`Raw::Object`] for skipped containers).
    #[inline(always)]
    pub(crate) fn value(&mut self) -> Result<Raw<'a>, Malformed> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'"') => {
                // `string` inlined by hand: its `Result<Cow>` went through
                // the stack and stalled the load that followed it.
                let start = self.pos + 1;
                let end = self.string_end(start)?;
                if self.bytes[end] == b'"' {
                    self.pos = end + 1;
                    Ok(Raw::Str(Cow::Borrowed(&self.text[start..end])))
                } else {
                    self.escaped_string(start, end).map(Raw::Str)
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Raw::Bool(true)),
            Some(b'f') => self.literal("false", Raw::Bool(false)),
            Some(b'n') => self.literal("null", Raw::Null),
            Some(b'[') => {
                self.skip_value(0)?;
                Ok(Raw::Array)
            }
            Some(b'{') => {
                self.skip_value(0)?;
                Ok(Raw::Object)
            }
            Some(_) => self.fail("expected a JSON value"),
            None => self.fail("unexpected end of payload, expected a value"),
        }
    }

    /// Skips the value after a key (an unknown field's).
    pub(crate) fn ignore_value(&mut self) -> Result<(), Malformed> {
        self.skip_whitespace();
        self.skip_value(0)
    }

    fn literal(&mut self, word: &'static str, raw: Raw<'a>) -> Result<Raw<'a>, Malformed> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(raw)
        } else {
            self.fail("invalid literal, expected true, false or null")
        }
    }

    /// A string starting at the opening quote; borrowed unless it has
    /// escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<Cow<'a, str>, Malformed> {
        let start = self.pos + 1;
        let end = self.string_end(start)?;
        if self.bytes[end] == b'"' {
            self.pos = end + 1;
            // Both ends are ASCII quotes, so the slice is on char boundaries.
            return Ok(Cow::Borrowed(&self.text[start..end]));
        }
        self.escaped_string(start, end)
    }

    /// The offset of the first quote, backslash or control byte at or
    /// after `from`.
    #[inline(always)]
    fn string_end(&self, from: usize) -> Result<usize, Malformed> {
        let bytes = self.bytes;
        let mut at = from;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            let stops =
                bytes_equal(word, b'"') | bytes_equal(word, b'\\') | bytes_below(word, 0x20);
            if stops != 0 {
                return Ok(at + (stops.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        while let Some(&b) = bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return Ok(at);
            }
            at += 1;
        }
        Err(Malformed {
            at,
            what: "unexpected end of payload inside a string",
        })
    }

    /// The rest of a string from its first backslash (or control byte) at
    /// `stop`, unescaped into an owned string.
    #[cold]
    fn escaped_string(&mut self, start: usize, mut stop: usize) -> Result<Cow<'a, str>, Malformed> {
        let mut out = String::with_capacity(stop - start + 16);
        let mut run = start;
        loop {
            out.push_str(&self.text[run..stop]);
            self.pos = stop;
            match self.bytes[stop] {
                b'"' => {
                    self.pos = stop + 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos = stop + 1;
                    self.escape(&mut out)?;
                }
                _ => return self.fail("control character inside a string, escape it"),
            }
            run = self.pos;
            stop = self.string_end(run)?;
        }
    }

    /// One escape after its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), Malformed> {
        let Some(b) = self.peek() else {
            return self.fail("unexpected end of payload inside a string");
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return self.fail("lone leading surrogate in a \\u escape");
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return self.fail("invalid low surrogate in a \\u escape");
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                    }
                    0xDC00..=0xDFFF => {
                        return self.fail("lone trailing surrogate in a \\u escape");
                    }
                    _ => char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER),
                }
            }
            _ => {
                self.pos -= 1;
                return self.fail("invalid escape in a string");
            }
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let mut unit = 0u32;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return self.fail("invalid \\u escape, expected four hex digits"),
            };
            unit = unit * 16 + u32::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    /// A number: `I64` for negative integers, `U64` for others, `F64` for
    /// fractions, exponents, `-0` and integers beyond 64 bits (as
    /// serde_json reads them).
    #[inline(always)]
    fn number(&mut self) -> Result<Raw<'a>, Malformed> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut magnitude: u64 = 0;
        let mut overflow = false;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                let digits_start = self.pos;
                // Any 19 digits fit in a u64: no overflow check per digit.
                while let Some(b @ b'0'..=b'9') = self.peek() {
                    magnitude = magnitude.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                    self.pos += 1;
                }
                if self.pos - digits_start > 19 {
                    overflow = self.text[digits_start..self.pos].parse::<u64>().is_err();
                    magnitude = self.text[digits_start..self.pos]
                        .parse()
                        .unwrap_or(u64::MAX);
                }
            }
            _ => return self.fail("invalid number, expected a digit"),
        }
        let mut float = overflow;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits("invalid number, expected a digit after '.'")?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits("invalid number, expected a digit in the exponent")?;
            float = true;
        }
        if float {
            // The slice is ASCII: the grammar above admitted only digits,
            // signs, '.', 'e' and 'E'. Out-of-range exponents give ±inf or
            // 0, which the field conversion names.
            return match self.text[start..self.pos].parse::<f64>() {
                Ok(v) => Ok(Raw::F64(v)),
                Err(_) => Err(Malformed {
                    at: start,
                    what: "invalid number",
                }),
            };
        }
        if !negative {
            Ok(Raw::U64(magnitude))
        } else if magnitude == 0 {
            // As serde_json reads it: -0 is the float -0.0.
            Ok(Raw::F64(-0.0))
        } else if magnitude <= i64::MAX as u64 + 1 {
            Ok(Raw::I64(0i64.wrapping_sub_unsigned(magnitude)))
        } else {
            Ok(Raw::F64(-(magnitude as f64)))
        }
    }

    fn digits(&mut self, what: &'static str) -> Result<(), Malformed> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return self.fail(what);
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        Ok(())
    }

    /// Validates and skips any value at the cursor (after whitespace).
    fn skip_value(&mut self, depth: usize) -> Result<(), Malformed> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(b't') => self.literal("true", Raw::Null).map(drop),
            Some(b'f') => self.literal("false", Raw::Null).map(drop),
            Some(b'n') => self.literal("null", Raw::Null).map(drop),
            Some(open @ (b'[' | b'{')) => {
                if depth >= MAX_DEPTH {
                    return self.fail("nested deeper than 128 levels");
                }
                self.pos += 1;
                let close = if open == b'[' { b']' } else { b'}' };
                self.skip_whitespace();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        if self.peek() != Some(b'"') {
                            return self.fail("expected a string key");
                        }
                        self.skip_string()?;
                        self.skip_whitespace();
                        if self.peek() != Some(b':') {
                            return self.fail("expected ':' after an object key");
                        }
                        self.pos += 1;
                        self.skip_whitespace();
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_whitespace();
                        }
                        Some(b) if b == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        None => return self.fail("unexpected end of payload inside a container"),
                        Some(_) if open == b'[' => {
                            return self.fail("expected ',' or ']' after an array element");
                        }
                        Some(_) => return self.fail("expected ',' or '}' after an object value"),
                    }
                }
            }
            Some(_) => self.fail("expected a JSON value"),
            None => self.fail("unexpected end of payload, expected a value"),
        }
    }

    /// Validates and skips a string (escapes checked, nothing copied).
    fn skip_string(&mut self) -> Result<(), Malformed> {
        let mut at = self.pos + 1;
        loop {
            let stop = self.string_end(at)?;
            self.pos = stop;
            match self.bytes[stop] {
                b'"' => {
                    self.pos = stop + 1;
                    return Ok(());
                }
                b'\\' => {
                    self.pos = stop + 1;
                    let mut sink = String::new();
                    self.escape(&mut sink)?;
                    at = self.pos;
                }
                _ => return self.fail("control character inside a string, escape it"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader's view of a whole payload: the top-level object's keys and
    /// values, or the first error.
    fn read(payload: &[u8]) -> Result<Option<Vec<(String, String)>>, Malformed> {
        let mut reader = Reader::new(payload)?;
        if !reader.begin_object()? {
            return Ok(None);
        }
        let mut fields = Vec::new();
        let mut first = true;
        while let Some(key) = reader.next_key(first)? {
            first = false;
            let value = reader.value()?;
            assert_eq!(key.head, KeyHead::of(key.text.as_bytes()));
            fields.push((key.text.into_owned(), describe(&value)));
        }
        reader.end()?;
        Ok(Some(fields))
    }

    /// A value as the tests compare it: integers by value, whichever
    /// variant holds them.
    fn describe(value: &Raw<'_>) -> String {
        match value {
            Raw::I64(v) => format!("Int({v})"),
            Raw::U64(v) => format!("Int({v})"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn errors_give_the_offset_and_what_was_expected() {
        for (payload, at, what) in [
            (&b""[..], 0, "empty payload, expected a JSON object"),
            (b"  {\"a\" 1}", 7, "expected ':' after an object key"),
            (
                b"{\"a\":1 \"b\":2}",
                7,
                "expected ',' or '}' after an object value",
            ),
            (
                b"{\"a\":tru}",
                5,
                "invalid literal, expected true, false or null",
            ),
            (
                b"{\"a\":01}",
                6,
                "expected ',' or '}' after an object value",
            ),
            (b"{\"a\":-}", 6, "invalid number, expected a digit"),
            (
                b"{\"a\":1.}",
                7,
                "invalid number, expected a digit after '.'",
            ),
            (
                b"{\"a\":\"x\ty\"}",
                7,
                "control character inside a string, escape it",
            ),
            (b"{\"a\":\"\\x\"}", 7, "invalid escape in a string"),
            (
                b"{\"a\":\"\\ud800\"}",
                12,
                "lone leading surrogate in a \\u escape",
            ),
            (
                b"{\"a\":\"abc",
                9,
                "unexpected end of payload inside a string",
            ),
            (
                b"{\"a\":1",
                6,
                "unexpected end of payload, expected ',' or '}'",
            ),
            (b"{\"a\":[1,}", 8, "expected a JSON value"),
            (
                b"{\"a\":1} x",
                8,
                "trailing characters after the JSON value",
            ),
            (b"{\"a\":\"\xff\"}", 6, "invalid UTF-8"),
            (b"{,}", 1, "expected a string key"),
        ] {
            assert_eq!(
                read(payload),
                Err(Malformed { at, what }),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn scalars_escapes_and_skipped_containers() {
        let fields = read(
            r#" { "s" : "a\"b\\c\/\u00e9\ud83d\ude00\n" , "i":-12,"u":18446744073709551615,
                 "big":18446744073709551616, "min":-9223372036854775808, "f":1.5e3,
                 "t":true,"n":null, "arr":[1,{"x":[]},"y"], "obj":{"k":{"l":null}},
                 "unicode": "日本", "": "empty key", "long": "0123456789abcdefghij" } "#
                .as_bytes(),
        )
        .unwrap()
        .unwrap();
        let expected = [
            ("s", "Str(\"a\\\"b\\\\c/é😀\\n\")"),
            ("i", "Int(-12)"),
            ("u", "Int(18446744073709551615)"),
            ("big", "F64(1.8446744073709552e19)"),
            ("min", "Int(-9223372036854775808)"),
            ("f", "F64(1500.0)"),
            ("t", "Bool(true)"),
            ("n", "Null"),
            ("arr", "Array"),
            ("obj", "Object"),
            ("unicode", "Str(\"日本\")"),
            ("", "Str(\"empty key\")"),
            ("long", "Str(\"0123456789abcdefghij\")"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(fields, expected);
        assert_eq!(read(b"[1, 2]"), Ok(None));
        assert_eq!(read(b" \"text\" "), Ok(None));
        assert_eq!(read(b"{}"), Ok(Some(vec![])));
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let deep =
            |levels: usize| format!("{{\"a\":{}{}}}", "[".repeat(levels), "]".repeat(levels));
        assert!(read(deep(MAX_DEPTH).as_bytes()).is_ok());
        let e = read(deep(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.what, "nested deeper than 128 levels");
    }

    mod against_serde_json {
        use super::*;
        use proptest::prelude::*;

        /// serde_json's verdict and value for the top-level object's
        /// fields, in the reader's terms; `Err` for numbers beyond f64,
        /// which serde_json refuses and the reader reads as infinite (the
        /// field conversion names them).
        type View = Option<Option<Vec<(String, String)>>>;
        fn serde_view(payload: &[u8]) -> Result<View, ()> {
            let value: serde_json::Value = match serde_json::from_slice(payload) {
                Ok(value) => value,
                Err(e) if e.to_string().contains("number out of range") => return Err(()),
                Err(_) => return Ok(None),
            };
            let serde_json::Value::Object(map) = value else {
                return Ok(Some(None));
            };
            let fields = map
                .into_iter()
                .map(|(k, v)| {
                    let raw = match v {
                        serde_json::Value::Null => "Null".to_string(),
                        serde_json::Value::Bool(b) => format!("Bool({b})"),
                        serde_json::Value::Number(n) => {
                            if let Some(i) = n.as_i64() {
                                format!("Int({i})")
                            } else if let Some(u) = n.as_u64() {
                                format!("Int({u})")
                            } else {
                                format!("F64({:?})", n.as_f64().unwrap_or(f64::NAN))
                            }
                        }
                        serde_json::Value::String(s) => format!("Str({s:?})"),
                        serde_json::Value::Array(_) => "Array".to_string(),
                        serde_json::Value::Object(_) => "Object".to_string(),
                    };
                    (k, raw)
                })
                .collect();
            Ok(Some(Some(fields)))
        }

        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"",
            "\"k\"",
            "\"event_time\"",
            "\"v\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\\",
            "1",
            "-0",
            "12.5",
            "1e3",
            "-",
            ".",
            "e",
            "01",
            "true",
            "false",
            "null",
            "tru",
            "\"日本\"",
            "\t",
            "\n",
            "x",
            "\"long string of 24 bytes\"",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any sequence of JSON fragments: the reader accepts exactly
            /// what serde_json accepts, with the same values. Keys are
            /// compared in order, so duplicates are left out (serde_json's
            /// map keeps one).
            #[test]
            fn accepts_and_reads_what_serde_json_does(
                pieces in proptest::collection::vec(0..PIECES.len(), 0..24),
                wrap in any::<bool>(),
            ) {
                let mut text: String = pieces.iter().map(|&i| PIECES[i]).collect();
                if wrap {
                    text = format!("{{\"a\":{text}}}");
                }
                let ours = read(text.as_bytes()).ok();
                let Ok(theirs) = serde_view(text.as_bytes()) else {
                    return Ok(());
                };
                if let (Some(Some(ours)), Some(Some(theirs))) = (&ours, &theirs) {
                    let mut keys: Vec<&String> = ours.iter().map(|(k, _)| k).collect();
                    keys.sort();
                    keys.dedup();
                    if keys.len() < ours.len() {
                        return Ok(());
                    }
                    let mut ours = ours.clone();
                    ours.sort();
                    let mut theirs = theirs.clone();
                    theirs.sort();
                    prop_assert_eq!(ours, theirs, "{}", text);
                } else {
                    prop_assert_eq!(ours.is_some(), theirs.is_some(), "{}", text);
                    prop_assert_eq!(ours.flatten().is_some(), theirs.flatten().is_some(), "{}", text);
                }
            }
        }
    }
}
