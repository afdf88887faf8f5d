//! JSON payload → typed [`Event`], checked against a contract.
//!
//! The decoder reads the JSON object once with the crate's own reader (the
//! private `json` module: no value tree, no serde visitor, strings borrowed
//! from the payload), slotting each value into its contract position, then
//! converts every slot to the field's declared type, into an [`Event`]
//! whose strings are reused from record to record
//! ([`Decoder::decode_into`]). Every error names the field, the expected
//! type and the value seen, because the message ends up in a dead-letter
//! header that a producer team has to act on.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::contract::{Contract, FieldSpec, TimestampFormat, UnknownFieldPolicy};
use crate::json;
use crate::value::{FieldType, Value, parse_rfc3339_ms};

/// A decoded, valid event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
    /// One value per contract field, in contract order.
    pub values: Vec<Value>,
}

/// The class of a decoding failure; also the `error.kind` dead-letter header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// Payload larger than the source's `max_event_bytes`.
    Oversized,
    /// Not JSON at all.
    MalformedJson,
    /// JSON, but not an object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField,
    /// A field has a value of the wrong JSON type.
    WrongType,
    /// A field has the right JSON type but an unacceptable value.
    InvalidValue,
    /// A key the contract does not declare (policy `reject`).
    UnknownField,
    /// The same key twice.
    DuplicateField,
    /// A valid event time too far from the record's Kafka timestamp (the
    /// source's `max_future` / `max_past`): a broken clock or unit that
    /// would otherwise move the watermark or the batch layer's range.
    EventTimeOutOfBounds,
    /// An Avro source's record is not in the Confluent wire format (no
    /// magic byte 0 and 4-byte schema id).
    NotConfluentAvro,
    /// The record's schema id is not in the schema registry.
    UnknownSchemaId,
    /// The schema registry could not be asked for the record's schema id.
    RegistryUnavailable,
    /// The record's writer schema cannot be read as the source's contract.
    IncompatibleSchema,
    /// The Avro body does not decode with its writer schema.
    CorruptAvro,
}

impl DecodeErrorKind {
    /// Every kind.
    pub const ALL: [DecodeErrorKind; 14] = [
        DecodeErrorKind::Oversized,
        DecodeErrorKind::MalformedJson,
        DecodeErrorKind::NotAnObject,
        DecodeErrorKind::MissingField,
        DecodeErrorKind::WrongType,
        DecodeErrorKind::InvalidValue,
        DecodeErrorKind::UnknownField,
        DecodeErrorKind::DuplicateField,
        DecodeErrorKind::EventTimeOutOfBounds,
        DecodeErrorKind::NotConfluentAvro,
        DecodeErrorKind::UnknownSchemaId,
        DecodeErrorKind::RegistryUnavailable,
        DecodeErrorKind::IncompatibleSchema,
        DecodeErrorKind::CorruptAvro,
    ];

    /// Stable snake_case name (metrics label and dead-letter header).
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::Oversized => "oversized",
            DecodeErrorKind::MalformedJson => "malformed_json",
            DecodeErrorKind::NotAnObject => "not_an_object",
            DecodeErrorKind::MissingField => "missing_field",
            DecodeErrorKind::WrongType => "wrong_type",
            DecodeErrorKind::InvalidValue => "invalid_value",
            DecodeErrorKind::UnknownField => "unknown_field",
            DecodeErrorKind::DuplicateField => "duplicate_field",
            DecodeErrorKind::EventTimeOutOfBounds => "event_time_out_of_bounds",
            DecodeErrorKind::NotConfluentAvro => "not_confluent_avro",
            DecodeErrorKind::UnknownSchemaId => "unknown_schema_id",
            DecodeErrorKind::RegistryUnavailable => "registry_unavailable",
            DecodeErrorKind::IncompatibleSchema => "incompatible_schema",
            DecodeErrorKind::CorruptAvro => "corrupt_avro",
        }
    }
}

/// Why a payload is not a valid event of its contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// Class of the failure.
    pub kind: DecodeErrorKind,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// Full human-readable message naming the field, expected type and value.
    pub message: String,
}

impl DecodeError {
    /// An error of `kind` about `field` (or the whole record).
    pub fn new(kind: DecodeErrorKind, field: Option<&str>, message: String) -> Self {
        DecodeError {
            kind,
            field: field.map(str::to_string),
            message,
        }
    }
}

/// The latest event time accepted: 9999-12-31T23:59:59.999Z in epoch
/// milliseconds (the earliest is the epoch itself).
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Decodes payloads of one contract version for one source.
#[derive(Clone, Debug)]
pub struct Decoder {
    contract: Arc<Contract>,
    keys: KeyProbes,
    event_time_index: usize,
    max_event_bytes: usize,
}

impl Decoder {
    /// A decoder whose event time is the field at `event_time_index` (a
    /// required timestamp field; config validation guarantees it).
    pub fn new(contract: Arc<Contract>, event_time_index: usize, max_event_bytes: usize) -> Self {
        Decoder {
            keys: KeyProbes::new(&contract),
            contract,
            event_time_index,
            max_event_bytes,
        }
    }

    /// The contract this decoder checks against.
    pub fn contract(&self) -> &Arc<Contract> {
        &self.contract
    }

    /// Decodes and validates one payload.
    pub fn decode(&self, payload: &[u8]) -> Result<Event, DecodeError> {
        let mut event = Event::default();
        self.decode_into(payload, &mut event)?;
        Ok(event)
    }

    /// Decodes and validates one payload into `event`, reusing its value
    /// vector and strings: a consumer that handles one record at a time
    /// decodes with no allocation once its strings have grown to the
    /// longest values seen. On error `event` holds no meaningful values.
    pub fn decode_into(&self, payload: &[u8], event: &mut Event) -> Result<(), DecodeError> {
        self.check_size(payload)?;
        let mut inline = [const { None }; 16];
        let mut spilled = Vec::new();
        let slots = slots_in(self.contract.fields.len(), &mut inline, &mut spilled);
        if let Some(problem) = read_object(payload, &self.contract, &self.keys, slots)? {
            return Err(problem);
        }
        self.finish(slots, event)
    }

    /// Refuses a payload over the source's `max_event_bytes`.
    pub fn check_size(&self, payload: &[u8]) -> Result<(), DecodeError> {
        if payload.len() > self.max_event_bytes {
            return Err(DecodeError::new(
                DecodeErrorKind::Oversized,
                None,
                format!(
                    "event is {} bytes, over the {} byte limit of source contract {}; shrink the event or raise sources.<name>.max_event_bytes",
                    payload.len(),
                    self.max_event_bytes,
                    self.contract.label()
                ),
            ));
        }
        Ok(())
    }

    /// Converts filled slots to the contract's types into `event`: the
    /// checks every format shares (required, defaults, coercion,
    /// max_length, the timestamp range, the event time).
    #[inline]
    pub(crate) fn finish(
        &self,
        slots: &mut Slots<'_>,
        event: &mut Event,
    ) -> Result<(), DecodeError> {
        let contract = &*self.contract;
        event.values.resize(contract.fields.len(), Value::Null);
        // Slots are taken one by one: moving the whole array into an
        // iterator would copy it.
        for ((spec, slot), value) in contract
            .fields
            .iter()
            .zip(slots.iter_mut())
            .zip(&mut event.values)
        {
            convert_into(spec, slot.take(), contract, value)?;
        }
        event.time_ms = match event.values.get(self.event_time_index) {
            Some(Value::Timestamp(t)) => *t,
            _ => {
                let name = &contract.fields[self.event_time_index].name;
                return Err(DecodeError::new(
                    DecodeErrorKind::MissingField,
                    Some(name),
                    format!(
                        "field {name:?} (the event time) is missing in {}",
                        contract.label()
                    ),
                ));
            }
        };
        Ok(())
    }
}

/// Turns a source's payloads into events checked against its contract:
/// JSON ([`Decoder`]) or Confluent-framed Avro with a schema registry
/// (`strata_registry::AvroDecoder`). The speed layer and the archive hold
/// one per partition.
pub trait EventDecoder: Send {
    /// Decodes one payload into `event` (reusing its strings). On error
    /// `event` holds no meaningful values.
    fn decode_event(&mut self, payload: &[u8], event: &mut Event) -> Result<(), DecodeError>;
}

impl EventDecoder for Decoder {
    #[inline]
    fn decode_event(&mut self, payload: &[u8], event: &mut Event) -> Result<(), DecodeError> {
        self.decode_into(payload, event)
    }
}

/// One slot per contract field, filled while the payload is read.
pub(crate) type Slots<'de> = [Option<Raw<'de>>];

/// A payload's [`Slots`]: `inline` (on the caller's stack, declared there
/// so that it is written in place, not moved) for contracts of up to 16
/// fields, `spilled` beyond.
#[inline(always)]
pub(crate) fn slots_in<'s, 'de>(
    fields: usize,
    inline: &'s mut [Option<Raw<'de>>; 16],
    spilled: &'s mut Vec<Option<Raw<'de>>>,
) -> &'s mut Slots<'de> {
    if fields <= inline.len() {
        &mut inline[..fields]
    } else {
        spilled.resize(fields, None);
        spilled
    }
}

/// The contract's field names as the reader's keys are compared with them:
/// length and first sixteen bytes at once, the rest only for longer names
/// (comparing names as strings called `memcmp` per field).
#[derive(Clone, Debug)]
struct KeyProbes {
    /// In contract order.
    probes: Vec<KeyProbe>,
}

#[derive(Clone, Debug)]
struct KeyProbe {
    head: json::KeyHead,
    /// The name's bytes after the head's.
    tail: Box<[u8]>,
}

impl KeyProbes {
    fn new(contract: &Contract) -> Self {
        let probes = contract
            .fields
            .iter()
            .map(|field| {
                let name = field.name.as_bytes();
                KeyProbe {
                    head: json::KeyHead::of(name),
                    tail: name.get(json::KeyHead::BYTES..).unwrap_or_default().into(),
                }
            })
            .collect();
        KeyProbes { probes }
    }

    #[inline(always)]
    fn matches(&self, index: usize, key: &json::Key<'_>) -> bool {
        self.probes.get(index).is_some_and(|probe| {
            probe.head == key.head
                && (probe.tail.is_empty()
                    || *probe.tail == key.text.as_bytes()[json::KeyHead::BYTES..])
        })
    }

    /// The contract position of `key`, trying `guess` first.
    #[inline]
    fn find(&self, key: &json::Key<'_>, guess: usize) -> Option<usize> {
        if self.matches(guess, key) {
            return Some(guess);
        }
        (0..self.probes.len()).find(|&i| self.matches(i, key))
    }
}

/// Reads the payload's top-level object into contract slots. Contract
/// violations found while reading (unknown or duplicate keys) are kept as
/// the first problem and returned after the whole payload is known to be
/// well-formed JSON, so a truncated payload is always reported as
/// malformed.
#[inline]
fn read_object<'a>(
    payload: &'a [u8],
    contract: &Contract,
    keys: &KeyProbes,
    slots: &mut Slots<'a>,
) -> Result<Option<DecodeError>, DecodeError> {
    let malformed = |e: json::Malformed| {
        DecodeError::new(
            DecodeErrorKind::MalformedJson,
            None,
            format!(
                "payload is not valid JSON: {e} (near {})",
                json::excerpt(payload, e.at)
            ),
        )
    };
    let mut reader = json::Reader::new(payload).map_err(malformed)?;
    if !reader.begin_object().map_err(malformed)? {
        return Err(DecodeError::new(
            DecodeErrorKind::NotAnObject,
            None,
            format!(
                "payload is JSON but not an object; {} events are JSON objects",
                contract.label()
            ),
        ));
    }
    let mut problem = None;
    // Producers send fields in one order, usually the contract's: the field
    // after the last one found is tried first, before the full lookup.
    let mut next_guess = 0;
    let mut first = true;
    while let Some(key) = reader.next_key(first).map_err(malformed)? {
        let name = &key.text;
        first = false;
        match keys.find(&key, next_guess) {
            Some(i) => {
                let value = reader.value().map_err(malformed)?;
                if slots[i].is_some() {
                    problem.get_or_insert_with(|| {
                        DecodeError::new(
                            DecodeErrorKind::DuplicateField,
                            Some(name),
                            format!("field {name:?} appears twice; send each field once"),
                        )
                    });
                }
                slots[i] = Some(value);
                next_guess = i + 1;
            }
            None => {
                reader.ignore_value().map_err(malformed)?;
                if contract.unknown_fields == UnknownFieldPolicy::Reject {
                    problem.get_or_insert_with(|| {
                        DecodeError::new(
                            DecodeErrorKind::UnknownField,
                            Some(name),
                            format!(
                                "field {name:?} is not in contract {} (fields: {}); remove it from the producer or add it to a new contract version",
                                contract.label(),
                                contract.field_names()
                            ),
                        )
                    });
                }
            }
        }
    }
    reader.end().map_err(malformed)?;
    Ok(problem)
}

/// A scalar as seen on the wire, borrowed from the payload when possible.
#[derive(Clone, Debug)]
pub(crate) enum Raw<'a> {
    Null,
    /// Epoch milliseconds from a typed format (an Avro timestamp), which
    /// needs no `formats` to be read as a timestamp.
    Millis(i64),
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Null => f.write_str("null"),
            Raw::Millis(v) => write!(f, "timestamp {v} ms"),
            Raw::Bool(b) => write!(f, "bool {b}"),
            Raw::I64(v) => write!(f, "integer {v}"),
            Raw::U64(v) => write!(f, "integer {v}"),
            Raw::F64(v) => write!(f, "number {v}"),
            Raw::Str(s) => {
                let shown: String = s.chars().take(60).collect();
                if shown.len() < s.len() {
                    write!(f, "string {shown:?}…")
                } else {
                    write!(f, "string {shown:?}")
                }
            }
            Raw::Array => f.write_str("an array"),
            Raw::Object => f.write_str("an object"),
        }
    }
}

fn wrong_type(spec: &FieldSpec, raw: &Raw<'_>, contract: &Contract) -> DecodeError {
    let hint = if spec.coerce {
        String::new()
    } else if matches!(raw, Raw::Str(_)) && spec.ty != FieldType::String {
        "; send a JSON number/bool, or declare \"coerce\": true in the contract".to_string()
    } else {
        String::new()
    };
    let expected = if spec.ty == FieldType::Timestamp {
        let formats: Vec<&str> = spec
            .formats
            .iter()
            .map(|f| match f {
                TimestampFormat::Rfc3339 => "an RFC 3339 string",
                TimestampFormat::EpochMs => "epoch milliseconds",
            })
            .collect();
        format!("timestamp ({})", formats.join(" or "))
    } else {
        spec.ty.name().to_string()
    };
    DecodeError::new(
        DecodeErrorKind::WrongType,
        Some(&spec.name),
        format!(
            "field {:?}: expected {expected}, got {raw} (contract {}){hint}",
            spec.name,
            contract.label()
        ),
    )
}

/// Converts a slot to its field's type into `out`; a string is copied
/// into the `String` `out` already holds, keeping its allocation.
fn convert_into(
    spec: &FieldSpec,
    slot: Option<Raw<'_>>,
    contract: &Contract,
    out: &mut Value,
) -> Result<(), DecodeError> {
    let text = match (&slot, &spec.default) {
        (Some(Raw::Str(s)), _) if spec.ty == FieldType::String => {
            if let Some(max) = spec.max_length
                && s.len() > max
            {
                return Err(too_long(spec, s.len(), max, contract));
            }
            Some(&**s)
        }
        // An absent optional string with a default: copied like a value.
        (None | Some(Raw::Null), Some(Value::String(default))) if !spec.required => {
            Some(default.as_str())
        }
        _ => None,
    };
    if let Some(text) = text {
        match out {
            Value::String(buffer) => {
                buffer.clear();
                buffer.push_str(text);
            }
            _ => *out = Value::String(text.to_string()),
        }
        return Ok(());
    }
    *out = convert(spec, slot, contract)?;
    Ok(())
}

fn too_long(spec: &FieldSpec, len: usize, max: usize, contract: &Contract) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidValue,
        Some(&spec.name),
        format!(
            "field {:?}: {len} bytes, over max_length {max} of contract {}",
            spec.name,
            contract.label()
        ),
    )
}

fn convert(
    spec: &FieldSpec,
    slot: Option<Raw<'_>>,
    contract: &Contract,
) -> Result<Value, DecodeError> {
    let raw = match slot {
        None | Some(Raw::Null) => {
            if spec.required {
                return Err(DecodeError::new(
                    DecodeErrorKind::MissingField,
                    Some(&spec.name),
                    format!(
                        "field {:?} ({}) is required by contract {} but {}",
                        spec.name,
                        spec.ty,
                        contract.label(),
                        if slot.is_none() { "absent" } else { "null" }
                    ),
                ));
            }
            return Ok(spec.default.clone().unwrap_or(Value::Null));
        }
        Some(raw) => raw,
    };
    let value = match (spec.ty, &raw) {
        (FieldType::String, Raw::Str(s)) => Value::String(s.to_string()),
        (FieldType::String, Raw::I64(v)) if spec.coerce => Value::String(v.to_string()),
        (FieldType::String, Raw::U64(v)) if spec.coerce => Value::String(v.to_string()),
        (FieldType::String, Raw::F64(v)) if spec.coerce => Value::String(v.to_string()),
        (FieldType::String, Raw::Bool(v)) if spec.coerce => Value::String(v.to_string()),
        (FieldType::Int, Raw::I64(v)) => Value::Int(*v),
        (FieldType::Int, Raw::U64(v)) => match i64::try_from(*v) {
            Ok(v) => Value::Int(v),
            Err(_) => return Err(out_of_range(spec, &raw, contract)),
        },
        (FieldType::Int, Raw::F64(v)) if spec.coerce && v.fract() == 0.0 && v.abs() < 9.0e15 => {
            Value::Int(*v as i64)
        }
        (FieldType::Int, Raw::Str(s)) if spec.coerce => match s.trim().parse::<i64>() {
            Ok(v) => Value::Int(v),
            Err(_) => return Err(wrong_type(spec, &raw, contract)),
        },
        (FieldType::Float, Raw::I64(v)) => Value::Float(*v as f64),
        (FieldType::Float, Raw::U64(v)) => Value::Float(*v as f64),
        // JSON has no NaN or infinity; Avro floats and doubles do, and one
        // would poison every sum and average it joins.
        (FieldType::Float, Raw::F64(v)) if !v.is_finite() => {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidValue,
                Some(&spec.name),
                format!(
                    "field {:?}: {v} is not a finite number (contract {})",
                    spec.name,
                    contract.label()
                ),
            ));
        }
        (FieldType::Float, Raw::F64(v)) => Value::Float(*v),
        (FieldType::Float, Raw::Str(s)) if spec.coerce => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Value::Float(v),
            _ => return Err(wrong_type(spec, &raw, contract)),
        },
        (FieldType::Bool, Raw::Bool(v)) => Value::Bool(*v),
        (FieldType::Bool, Raw::Str(s)) if spec.coerce => match s.trim() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(wrong_type(spec, &raw, contract)),
        },
        (FieldType::Bool, Raw::I64(v)) if spec.coerce && (*v == 0 || *v == 1) => {
            Value::Bool(*v == 1)
        }
        (FieldType::Bool, Raw::U64(v)) if spec.coerce && *v <= 1 => Value::Bool(*v == 1),
        (FieldType::Timestamp, Raw::Str(s)) => {
            if spec.formats.contains(&TimestampFormat::Rfc3339)
                && let Some(ms) = parse_rfc3339_ms(s)
            {
                return Ok(Value::Timestamp(ms));
            }
            if spec.formats.contains(&TimestampFormat::EpochMs)
                && spec.coerce
                && let Ok(ms) = s.trim().parse::<i64>()
            {
                return Ok(Value::Timestamp(ms));
            }
            return Err(wrong_type(spec, &raw, contract));
        }
        (FieldType::Timestamp, Raw::Millis(v)) => Value::Timestamp(*v),
        (FieldType::Timestamp, Raw::I64(v)) if spec.formats.contains(&TimestampFormat::EpochMs) => {
            Value::Timestamp(*v)
        }
        (FieldType::Timestamp, Raw::U64(v)) if spec.formats.contains(&TimestampFormat::EpochMs) => {
            match i64::try_from(*v) {
                Ok(v) => Value::Timestamp(v),
                Err(_) => return Err(out_of_range(spec, &raw, contract)),
            }
        }
        _ => return Err(wrong_type(spec, &raw, contract)),
    };
    if let Value::Timestamp(t) = value
        && !(0..=MAX_TIMESTAMP_MS).contains(&t)
    {
        // Out of this range a clock is broken, not early or late: one such
        // event would move a partition's watermark past every window, or
        // overflow window arithmetic near i64::MAX.
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidValue,
            Some(&spec.name),
            format!(
                "field {:?}: timestamp {t} ms is outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59.999Z (contract {}); fix the producer's clock or unit (epoch milliseconds)",
                spec.name,
                contract.label()
            ),
        ));
    }
    if let (Some(max), Value::String(s)) = (spec.max_length, &value)
        && s.len() > max
    {
        return Err(too_long(spec, s.len(), max, contract));
    }
    Ok(value)
}

fn out_of_range(spec: &FieldSpec, raw: &Raw<'_>, contract: &Contract) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidValue,
        Some(&spec.name),
        format!(
            "field {:?}: {raw} is out of range for {} (contract {})",
            spec.name,
            spec.ty,
            contract.label()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Arc<Contract> {
        let text = r#"{
            "name": "page_view", "version": 1,
            "fields": [
                {"name": "event_time", "type": "timestamp", "required": true, "formats": ["rfc3339", "epoch_ms"]},
                {"name": "user_id", "type": "string", "required": true, "max_length": 8},
                {"name": "duration_ms", "type": "int", "default": 0, "coerce": true},
                {"name": "score", "type": "float"},
                {"name": "bot", "type": "bool", "default": false}
            ]
        }"#;
        Arc::new(Contract::from_json(text, "t.json", None).unwrap())
    }

    fn decode(json: &str) -> Result<Event, DecodeError> {
        Decoder::new(contract(), 0, 200).decode(json.as_bytes())
    }

    #[test]
    fn decodes_with_defaults_and_coercions() {
        let e =
            decode(r#"{"event_time":"2026-11-22T10:00:00.5Z","user_id":"u1","duration_ms":"42"}"#)
                .unwrap();
        assert_eq!(e.time_ms, 1_795_341_600_500);
        assert_eq!(
            e.values,
            vec![
                Value::Timestamp(1_795_341_600_500),
                Value::String("u1".into()),
                Value::Int(42),
                Value::Null,
                Value::Bool(false)
            ]
        );
        let e = decode(r#"{"event_time":1000,"user_id":"u1","score":3}"#).unwrap();
        assert_eq!(e.time_ms, 1000);
        assert_eq!(e.values[2], Value::Int(0));
        assert_eq!(e.values[3], Value::Float(3.0));
    }

    #[test]
    fn errors_name_field_type_and_value() {
        let e = decode(r#"{"event_time":1,"user_id":"u","score":"abc"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::WrongType);
        assert_eq!(e.field.as_deref(), Some("score"));
        assert!(
            e.message.contains("expected float, got string \"abc\""),
            "{}",
            e.message
        );
        assert!(e.message.contains("coerce"), "{}", e.message);

        let e = decode(r#"{"event_time":1}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MissingField);
        assert!(
            e.message.contains("\"user_id\" (string) is required"),
            "{}",
            e.message
        );

        let e = decode(r#"{"event_time":1,"user_id":"u","color":"red"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnknownField);
        assert!(
            e.message
                .contains("\"color\" is not in contract page_view v1"),
            "{}",
            e.message
        );

        let e = decode(r#"{"event_time":"yesterday","user_id":"u"}"#).unwrap_err();
        assert!(e.message.contains("expected timestamp (an RFC 3339 string or epoch milliseconds), got string \"yesterday\""), "{}", e.message);

        let e = decode(r#"{"event_time":1,"user_id":"much too long"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::InvalidValue);

        let e = decode(r#"{"event_time":1,"user_id":"u","duration_ms":99999999999999999999}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("duration_ms"));

        let e = decode(r#"{"event_time":1,"user_id":"u","user_id":"v"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::DuplicateField);
    }

    #[test]
    fn event_times_outside_1970_to_9999_are_rejected_with_the_range() {
        for t in ["-1", "253402300800000", "9223372036854775807"] {
            let e = decode(&format!(r#"{{"event_time":{t},"user_id":"u"}}"#)).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::InvalidValue, "{t}");
            assert_eq!(e.field.as_deref(), Some("event_time"));
            assert!(
                e.message
                    .contains("outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59.999Z"),
                "{}",
                e.message
            );
        }
        for t in ["0", "253402300799999", "\"9999-12-31T23:59:59.999Z\""] {
            assert!(
                decode(&format!(r#"{{"event_time":{t},"user_id":"u"}}"#)).is_ok(),
                "{t}"
            );
        }
    }

    #[test]
    fn a_reused_event_decodes_like_a_fresh_one_in_any_key_order_with_escapes() {
        let decoder = Decoder::new(contract(), 0, 200);
        let mut reused = Event::default();
        for json in [
            r#"{"event_time":1000,"user_id":"u1","score":1.5,"bot":true}"#,
            // Keys in another order, an escaped key and value (owned, not
            // borrowed, from the parser), a coerced number, whitespace.
            r#" { "bot" : false , "duration_ms" : "7", "user_\u0069d" : "a\"b", "event_time" : "1970-01-01T00:00:02Z" } "#,
            r#"{"user_id":"u2","event_time":3000}"#,
        ] {
            let fresh = decoder.decode(json.as_bytes()).unwrap();
            decoder.decode_into(json.as_bytes(), &mut reused).unwrap();
            assert_eq!(reused, fresh, "{json}");
        }
        assert_eq!(reused.values[1], Value::String("u2".into()));
        assert_eq!(reused.values[3], Value::Null);
        let escaped = decoder
            .decode(r#"{"user_\u0069d":"a\"b","event_time":1}"#.as_bytes())
            .unwrap();
        assert_eq!(escaped.values[1], Value::String("a\"b".into()));
        // A failed decode leaves the event reusable.
        let error = decoder
            .decode_into(br#"{"event_time":1,"user_id":"far too long"}"#, &mut reused)
            .unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::InvalidValue);
        decoder
            .decode_into(br#"{"event_time":5,"user_id":"u3"}"#, &mut reused)
            .unwrap();
        assert_eq!(
            (reused.time_ms, &reused.values[1]),
            (5, &Value::String("u3".into()))
        );
    }

    #[test]
    fn the_first_problem_in_contract_order_is_reported_whatever_the_key_order() {
        let kind_and_field = |json: &str| {
            let e = decode(json).unwrap_err();
            (e.kind, e.field)
        };
        let field = |name: &str| Some(name.to_string());
        // Two invalid values: the field declared first.
        assert_eq!(
            kind_and_field(r#"{"score":"abc","user_id":"far too long","event_time":1}"#),
            (DecodeErrorKind::InvalidValue, field("user_id"))
        );
        // A missing required field declared before the invalid one.
        assert_eq!(
            kind_and_field(r#"{"score":"abc","event_time":1}"#),
            (DecodeErrorKind::MissingField, field("user_id"))
        );
        // An invalid value declared before the missing field.
        assert_eq!(
            kind_and_field(r#"{"user_id":"u","event_time":"never"}"#),
            (DecodeErrorKind::WrongType, field("event_time"))
        );
        // Unknown and duplicate keys come before values.
        assert_eq!(
            kind_and_field(r#"{"score":"abc","event_time":1,"user_id":"u","zzz":1}"#),
            (DecodeErrorKind::UnknownField, field("zzz"))
        );
        assert_eq!(
            kind_and_field(r#"{"score":"abc","score":1,"event_time":1,"user_id":"u"}"#),
            (DecodeErrorKind::DuplicateField, field("score"))
        );
        // And a payload cut short is malformed, whatever came before.
        assert_eq!(
            kind_and_field(r#"{"score":"abc","zzz":1,"event_time":"#),
            (DecodeErrorKind::MalformedJson, None)
        );
    }

    #[test]
    fn keys_are_matched_on_every_byte_in_any_order() {
        // Keys sharing a field's length, its first eight bytes or its
        // prefix are not that field.
        for key in [
            "event_timf",
            "event_time_",
            "event_tim",
            "duration_mz",
            "user_ie",
            "user_i",
        ] {
            let e = decode(&format!(r#"{{"event_time":1,"user_id":"u","{key}":2}}"#)).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::UnknownField, "{key}");
            assert_eq!(e.field.as_deref(), Some(key));
        }
        // Names longer than the sixteen bytes compared at once.
        let long = Arc::new(
            Contract::from_json(
                r#"{"name": "long", "version": 1, "fields": [
                    {"name": "t", "type": "timestamp", "required": true, "formats": ["epoch_ms"]},
                    {"name": "sixteen_bytes_ab", "type": "int"},
                    {"name": "seventeen_bytes_x", "type": "int"},
                    {"name": "a_name_of_twenty_six_bytes", "type": "int"}
                ]}"#,
                "long.json",
                None,
            )
            .unwrap(),
        );
        let long = Decoder::new(long, 0, 500);
        let e = long
            .decode(br#"{"a_name_of_twenty_six_bytes":3,"seventeen_bytes_x":2,"sixteen_bytes_ab":1,"t":5}"#)
            .unwrap();
        assert_eq!(
            e.values,
            vec![
                Value::Timestamp(5),
                Value::Int(1),
                Value::Int(2),
                Value::Int(3)
            ]
        );
        for key in [
            "sixteen_bytes_ac",
            "sixteen_bytes_abc",
            "seventeen_bytes_y",
            "seventeen_bytes_",
            "a_name_of_twenty_six_bytez",
            "a_name_of_twenty_six_byte",
            "a_name_of_twenty_six_bytes_",
        ] {
            let e = long
                .decode(format!(r#"{{"t":1,"{key}":2}}"#).as_bytes())
                .unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::UnknownField, "{key}");
        }
        // Every order of the fields (the reader guesses the next one).
        let fields = [
            r#""event_time":7"#,
            r#""user_id":"u""#,
            r#""duration_ms":3"#,
            r#""score":0.5"#,
            r#""bot":true"#,
        ];
        let decoder = Decoder::new(contract(), 0, 200);
        for rotation in 0..fields.len() {
            for reversed in [false, true] {
                let mut order: Vec<&str> = fields.to_vec();
                order.rotate_left(rotation);
                if reversed {
                    order.reverse();
                }
                let json = format!("{{{}}}", order.join(","));
                let e = decoder.decode(json.as_bytes()).unwrap();
                assert_eq!(
                    e.values,
                    vec![
                        Value::Timestamp(7),
                        Value::String("u".into()),
                        Value::Int(3),
                        Value::Float(0.5),
                        Value::Bool(true)
                    ],
                    "{json}"
                );
            }
        }
    }

    #[test]
    fn integers_beyond_i64_and_invalid_utf8_are_named() {
        let e = decode(r#"{"event_time":1,"user_id":"u","duration_ms":18446744073709551615}"#)
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::InvalidValue);
        assert!(e.message.contains("out of range for int"), "{}", e.message);
        let e = Decoder::new(contract(), 0, 200)
            .decode(b"{\"event_time\":1,\"user_id\":\"\xff\"}")
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MalformedJson);
        assert!(
            e.message.starts_with("payload is not valid JSON"),
            "{}",
            e.message
        );
    }

    #[test]
    fn malformed_oversized_and_non_objects() {
        let e = decode(r#"{"event_time":1,"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MalformedJson);
        assert_eq!(
            e.message,
            r#"payload is not valid JSON: expected a string key at byte 16 (near "{\"event_time\":1,")"#
        );
        let e = decode(r#"{"event_time":1, "user_id": "a long user id" "page": 3}"#).unwrap_err();
        assert_eq!(
            e.message,
            r#"payload is not valid JSON: expected ',' or '}' after an object value at byte 45 (near …"a long user id\" \"page\": 3}")"#
        );
        assert_eq!(
            decode("not json").unwrap_err().kind,
            DecodeErrorKind::MalformedJson
        );
        assert_eq!(
            decode("[1,2]").unwrap_err().kind,
            DecodeErrorKind::NotAnObject
        );
        assert_eq!(
            decode(r#"{"event_time":1,"user_id":"u"} x"#)
                .unwrap_err()
                .kind,
            DecodeErrorKind::MalformedJson
        );
        let big = format!(r#"{{"event_time":1,"user_id":"{}"}}"#, "x".repeat(300));
        let e = decode(&big).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Oversized);
        assert!(
            e.message.contains("over the 200 byte limit"),
            "{}",
            e.message
        );
    }
}
