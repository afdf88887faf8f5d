//! Avro events in the Confluent wire format, checked against a contract.
//!
//! A record is the magic byte 0, the writer schema's registry id (4 bytes,
//! big endian) and the Avro binary body. The contract stays the one
//! definition: its Avro form ([`contract_schema`]) is what Strata registers
//! and checks a subject against, and every writer schema is resolved
//! against the contract ([`WriterSchema::compile`]) by Avro's rules: a
//! writer may order its fields as it likes, add fields the contract does
//! not declare (unless the contract rejects unknown fields), leave out
//! optional ones, and use Avro's promotions (int → long, int/long/float →
//! double, bytes → string). Fields match by name; the writer's record name
//! does not matter. Decoded values then go through the JSON
//! decoder's own checks (required, defaults, `max_length`, the timestamp
//! range, the event time), so an event means the same in both formats.
//!
//! The body is read by a plan compiled once per writer schema, straight
//! into the decoder's slots with strings borrowed from the payload: no
//! value tree, and no per-record allocation except an enum symbol's copy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use apache_avro::schema::{Name, ResolvedSchema, Schema};

use crate::contract::{Contract, UnknownFieldPolicy};
use crate::decode::{DecodeError, DecodeErrorKind, Decoder, Event, Raw, Slots, slots_in};
use crate::value::{FieldType, Value};

/// First byte of every Confluent-framed record.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;
/// Namespace of the contracts' Avro records.
pub const NAMESPACE: &str = "strata.contracts";

/// Deepest nesting of a writer's types that a plan follows (recursive
/// types would otherwise never end).
const MAX_DEPTH: usize = 32;

/// The contract's Avro schema, as JSON text: a record named after the
/// contract in [`NAMESPACE`], one field per contract field in order;
/// required fields plain, optional ones `["null", T]` with default null
/// (the contract's own default applies when they are null). Timestamps are
/// `long` with logical type `timestamp-millis`, ints `long`, floats
/// `double`. Contract and field names are identifiers (`[a-z_][a-z0-9_]*`),
/// which are valid Avro names.
pub fn contract_schema(contract: &Contract) -> String {
    let fields: Vec<serde_json::Value> = contract
        .fields
        .iter()
        .map(|f| {
            let ty = match f.ty {
                FieldType::String => serde_json::json!("string"),
                FieldType::Int => serde_json::json!("long"),
                FieldType::Float => serde_json::json!("double"),
                FieldType::Bool => serde_json::json!("boolean"),
                FieldType::Timestamp => {
                    serde_json::json!({"type": "long", "logicalType": "timestamp-millis"})
                }
            };
            if f.required {
                serde_json::json!({"name": f.name, "type": ty})
            } else {
                serde_json::json!({"name": f.name, "type": ["null", ty], "default": null})
            }
        })
        .collect();
    let schema = serde_json::json!({
        "type": "record",
        "name": contract.name,
        "namespace": NAMESPACE,
        "doc": format!("Strata contract {}", contract.label()),
        "fields": fields,
    });
    schema.to_string()
}

/// Frames an Avro body with its schema id, the Confluent way.
pub fn frame(schema_id: u32, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
}

/// The schema id of a Confluent-framed payload.
pub fn schema_id(payload: &[u8], contract: &Contract) -> Result<u32, DecodeError> {
    match payload {
        [MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => {
            let seen = match payload.first() {
                None => "an empty payload".to_string(),
                Some(b'{') => "'{' (JSON sent to an Avro source?)".to_string(),
                Some(&b) if payload.len() < HEADER_LEN => {
                    format!("{} bytes starting 0x{b:02x}", payload.len())
                }
                Some(b) => format!("first byte 0x{b:02x}"),
            };
            Err(DecodeError::new(
                DecodeErrorKind::NotConfluentAvro,
                None,
                format!(
                    "payload is not in the Confluent Avro wire format (magic byte 0, 4-byte schema id, body): got {seen}; source contract {} is format = \"avro\"",
                    contract.label()
                ),
            ))
        }
    }
}

/// Encodes one event of `contract` as the Avro body of
/// [`contract_schema`]. `values` are in contract order and of the
/// contract's types (or null); an ill-typed value is an error naming the
/// field.
pub fn encode(contract: &Contract, values: &[Value], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    for (spec, value) in contract.fields.iter().zip(values) {
        if !spec.required {
            if matches!(value, Value::Null) {
                write_long(out, 0);
                continue;
            }
            write_long(out, 1);
        }
        match (spec.ty, value) {
            (FieldType::String, Value::String(s)) => {
                write_long(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
            (FieldType::Int, Value::Int(v)) | (FieldType::Timestamp, Value::Timestamp(v)) => {
                write_long(out, *v);
            }
            (FieldType::Float, Value::Float(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (FieldType::Bool, Value::Bool(v)) => out.push(u8::from(*v)),
            (ty, v) => {
                return Err(format!(
                    "field {:?} of contract {} is {ty}, the value is {v:?}",
                    spec.name,
                    contract.label()
                ));
            }
        }
    }
    if values.len() != contract.fields.len() {
        return Err(format!(
            "{} values for the {} fields of contract {}",
            values.len(),
            contract.fields.len(),
            contract.label()
        ));
    }
    Ok(())
}

fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// How one writer value is read: into a contract slot, or skipped.
#[derive(Clone, Debug)]
enum Read {
    /// A writer `null`.
    Null,
    /// int or long (both zig-zag varints) as an integer.
    Long,
    /// long timestamp-millis (or a plain long) as a timestamp.
    Millis,
    /// long timestamp-micros as a timestamp in milliseconds.
    Micros,
    /// long timestamp-nanos as a timestamp in milliseconds.
    Nanos,
    Float,
    Double,
    Bool,
    /// string or bytes holding UTF-8.
    Str,
    /// An enum, read as its symbol.
    Enum(Vec<String>),
    /// A union: the branch index, then that branch.
    Union(Vec<Read>),
    /// A value the contract does not take.
    Skip(Skip),
}

/// The shape of a skipped value.
#[derive(Clone, Debug)]
enum Skip {
    Nothing,
    Varint,
    Bytes(usize),
    LengthPrefixed,
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
    Record(Vec<Skip>),
}

/// One writer field, in writer order.
#[derive(Clone, Debug)]
struct Step {
    /// The writer's field name, for messages.
    name: String,
    /// The contract slot it fills, if any.
    slot: Option<usize>,
    read: Read,
}

/// A registered writer schema, compiled against a source's contract.
#[derive(Clone, Debug)]
pub struct WriterSchema {
    id: u32,
    steps: Vec<Step>,
}

impl WriterSchema {
    /// Parses the writer schema registered as `id` and resolves it against
    /// `contract`. An error lists every reason the writer cannot be read
    /// (fields missing, types that no promotion reaches, fields a
    /// `reject` contract does not declare); it is the dead-letter reason of
    /// every record written with that schema.
    pub fn compile(id: u32, schema_json: &str, contract: &Contract) -> Result<Self, String> {
        let schema = Schema::parse_str(schema_json)
            .map_err(|e| format!("schema id {id} is not a valid Avro schema: {e}"))?;
        // apache-avro parses a string uuid and a fixed(16) uuid into the same
        // `Schema::Uuid`; the plan reads a string, so a fixed one is refused
        // rather than misread.
        if serde_json::from_str::<serde_json::Value>(schema_json)
            .is_ok_and(|json| has_fixed_uuid(&json))
        {
            return Err(format!(
                "writer schema id {id} has a fixed(16) uuid, which Strata does not read; use a string uuid"
            ));
        }
        let resolved = ResolvedSchema::try_from(&schema)
            .map_err(|e| format!("schema id {id} does not resolve: {e}"))?;
        let names = resolved.get_names();
        let record = match resolve(&schema, names) {
            Some(Schema::Record(r)) => r,
            _ => {
                return Err(format!(
                    "schema id {id} is not an Avro record; Strata events of contract {} are records",
                    contract.label()
                ));
            }
        };
        let mut problems = Vec::new();
        let mut steps = Vec::with_capacity(record.fields.len());
        let mut seen = vec![false; contract.fields.len()];
        for field in &record.fields {
            // By name: a writer's aliases name its own earlier fields, not
            // the reader's (contracts have no aliases).
            let slot = contract.field_index(&field.name);
            let read = match slot {
                Some(i) => {
                    seen[i] = true;
                    let spec = &contract.fields[i];
                    match reader(&field.schema, spec.ty, names, 0) {
                        Ok(Read::Null) if spec.required => {
                            problems.push(format!(
                                "field {:?} is always null in the writer but required by the contract",
                                spec.name
                            ));
                            Read::Null
                        }
                        Ok(read) => read,
                        Err(writer_type) => {
                            problems.push(format!(
                                "field {:?} is {writer_type} in the writer, {} in the contract",
                                field.name, spec.ty
                            ));
                            Read::Null
                        }
                    }
                }
                None => {
                    if contract.unknown_fields == UnknownFieldPolicy::Reject {
                        problems.push(format!(
                            "field {:?} is not in the contract, which rejects unknown fields",
                            field.name
                        ));
                    }
                    match skipper(&field.schema, names, 0) {
                        Ok(skip) => Read::Skip(skip),
                        Err(e) => {
                            problems.push(format!("field {:?}: {e}", field.name));
                            Read::Null
                        }
                    }
                }
            };
            steps.push(Step {
                name: field.name.clone(),
                slot,
                read,
            });
        }
        for (spec, seen) in contract.fields.iter().zip(&seen) {
            if !seen && spec.required {
                problems.push(format!(
                    "required field {:?} is missing from the writer",
                    spec.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(WriterSchema { id, steps })
        } else {
            Err(format!(
                "writer schema id {id} cannot be read as contract {}: {}; register a schema compatible with the contract (strata schemas check names the subject's state)",
                contract.label(),
                problems.join("; ")
            ))
        }
    }

    /// The registry id this schema was compiled from.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads the body into the contract's slots.
    fn fill<'a>(&self, body: &'a [u8], slots: &mut Slots<'a>) -> Result<(), String> {
        let mut cursor = Cursor {
            bytes: body,
            pos: 0,
        };
        for step in &self.steps {
            let value = cursor
                .read(&step.read)
                .map_err(|e| format!("field {:?}: {e}", step.name))?;
            if let Some(i) = step.slot {
                slots[i] = Some(value);
            }
        }
        if cursor.pos != body.len() {
            return Err(format!(
                "{} bytes left after the last field",
                body.len() - cursor.pos
            ));
        }
        Ok(())
    }
}

fn has_fixed_uuid(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(o) => {
            (o.get("type").and_then(|t| t.as_str()) == Some("fixed")
                && o.get("logicalType").and_then(|t| t.as_str()) == Some("uuid"))
                || o.values().any(has_fixed_uuid)
        }
        serde_json::Value::Array(a) => a.iter().any(has_fixed_uuid),
        _ => false,
    }
}

fn resolve<'s>(schema: &'s Schema, names: &HashMap<Name, &'s Schema>) -> Option<&'s Schema> {
    match schema {
        Schema::Ref { name } => names.get(name).copied(),
        other => Some(other),
    }
}

/// How to read a writer value into a field of type `ty`; `Err` names the
/// writer's type when no Avro promotion reaches `ty`.
fn reader(
    schema: &Schema,
    ty: FieldType,
    names: &HashMap<Name, &Schema>,
    depth: usize,
) -> Result<Read, String> {
    let Some(schema) = resolve(schema, names) else {
        return Err("an undefined named type".into());
    };
    Ok(match (schema, ty) {
        (Schema::Null, _) => Read::Null,
        (Schema::Union(u), _) if depth == 0 => {
            let mut branches = Vec::new();
            for variant in u.variants() {
                branches.push(reader(variant, ty, names, depth + 1)?);
            }
            Read::Union(branches)
        }
        (Schema::String | Schema::Uuid | Schema::Bytes, FieldType::String) => Read::Str,
        (Schema::Enum(e), FieldType::String) => Read::Enum(e.symbols.clone()),
        (Schema::Int | Schema::Long, FieldType::Int) => Read::Long,
        (Schema::Int | Schema::Long, FieldType::Float) => Read::Long,
        (Schema::Float, FieldType::Float) => Read::Float,
        (Schema::Double, FieldType::Float) => Read::Double,
        (Schema::Boolean, FieldType::Bool) => Read::Bool,
        (
            Schema::Long | Schema::TimestampMillis | Schema::LocalTimestampMillis,
            FieldType::Timestamp,
        ) => Read::Millis,
        (Schema::TimestampMicros | Schema::LocalTimestampMicros, FieldType::Timestamp) => {
            Read::Micros
        }
        (Schema::TimestampNanos | Schema::LocalTimestampNanos, FieldType::Timestamp) => Read::Nanos,
        (Schema::String, FieldType::Timestamp) => Read::Str,
        (other, _) => return Err(type_name(other)),
    })
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => format!(
            "[{}]",
            u.variants()
                .iter()
                .map(type_name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        Schema::Ref { name } => name.fullname(None),
        other => {
            let kind: apache_avro::schema::SchemaKind = other.into();
            let mut text = String::new();
            let _ = write!(text, "{kind:?}");
            text.to_lowercase()
        }
    }
}

fn skipper(schema: &Schema, names: &HashMap<Name, &Schema>, depth: usize) -> Result<Skip, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "nested deeper than {MAX_DEPTH} levels (a recursive type?)"
        ));
    }
    let Some(schema) = resolve(schema, names) else {
        return Err("refers to an undefined named type".into());
    };
    Ok(match schema {
        Schema::Null => Skip::Nothing,
        Schema::Boolean => Skip::Bytes(1),
        Schema::Float => Skip::Bytes(4),
        Schema::Double => Skip::Bytes(8),
        Schema::Duration => Skip::Bytes(12),
        Schema::Fixed(f) => Skip::Bytes(f.size),
        Schema::Int
        | Schema::Long
        | Schema::Enum(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Skip::Varint,
        Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => Skip::LengthPrefixed,
        Schema::Decimal(d) => skipper(&d.inner, names, depth + 1)?,
        Schema::Array(a) => Skip::Array(Box::new(skipper(&a.items, names, depth + 1)?)),
        Schema::Map(m) => Skip::Map(Box::new(skipper(&m.types, names, depth + 1)?)),
        Schema::Union(u) => Skip::Union(
            u.variants()
                .iter()
                .map(|v| skipper(v, names, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Schema::Record(r) => Skip::Record(
            r.fields
                .iter()
                .map(|f| skipper(&f.schema, names, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Schema::Ref { .. } => return Err("refers to an undefined named type".into()),
    })
}

/// Whether a value of this shape takes no bytes.
fn zero_width(skip: &Skip) -> bool {
    match skip {
        Skip::Nothing | Skip::Bytes(0) => true,
        Skip::Record(fields) => fields.iter().all(zero_width),
        _ => false,
    }
}

/// Reads an Avro binary body.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(format!(
                    "the body ends inside a number at byte {}",
                    self.pos
                ));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(format!(
            "a number longer than 10 bytes at byte {}",
            self.pos
        ))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if len > left {
            return Err(format!(
                "{len} bytes announced at byte {}, {left} left in the body",
                self.pos
            ));
        }
        let taken = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }

    fn length(&mut self) -> Result<usize, String> {
        let at = self.pos;
        let len = self.long()?;
        usize::try_from(len).map_err(|_| format!("negative length {len} at byte {at}"))
    }

    fn read(&mut self, read: &Read) -> Result<Raw<'a>, String> {
        Ok(match read {
            Read::Null => Raw::Null,
            Read::Long => Raw::I64(self.long()?),
            Read::Millis => Raw::Millis(self.long()?),
            Read::Micros => Raw::Millis(self.long()?.div_euclid(1_000)),
            Read::Nanos => Raw::Millis(self.long()?.div_euclid(1_000_000)),
            Read::Float => {
                let b = self.take(4)?;
                Raw::F64(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            Read::Double => {
                let b = self.take(8)?;
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                Raw::F64(f64::from_le_bytes(le))
            }
            Read::Bool => match self.take(1)?[0] {
                0 => Raw::Bool(false),
                1 => Raw::Bool(true),
                b => return Err(format!("boolean byte 0x{b:02x} at byte {}", self.pos - 1)),
            },
            Read::Str => {
                let len = self.length()?;
                let at = self.pos;
                let bytes = self.take(len)?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| format!("a string at byte {at} is not UTF-8 ({e})"))?;
                Raw::Str(Cow::Borrowed(text))
            }
            Read::Enum(symbols) => {
                let at = self.pos;
                let index = self.long()?;
                let symbol = usize::try_from(index)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| {
                        format!(
                            "enum index {index} at byte {at}, the enum has {} symbols",
                            symbols.len()
                        )
                    })?;
                Raw::Str(Cow::Owned(symbol.clone()))
            }
            Read::Union(branches) => {
                let branch = self.branch(branches.len())?;
                return self.read(&branches[branch]);
            }
            Read::Skip(skip) => {
                self.skip(skip)?;
                Raw::Null
            }
        })
    }

    fn branch(&mut self, count: usize) -> Result<usize, String> {
        let at = self.pos;
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .filter(|&i| i < count)
            .ok_or_else(|| format!("union branch {index} at byte {at}, the union has {count}"))
    }

    fn skip(&mut self, skip: &Skip) -> Result<(), String> {
        match skip {
            Skip::Nothing => {}
            Skip::Varint => {
                self.long()?;
            }
            Skip::Bytes(n) => {
                self.take(*n)?;
            }
            Skip::LengthPrefixed => {
                let len = self.length()?;
                self.take(len)?;
            }
            Skip::Array(item) => self.blocks(zero_width(item), |c| c.skip(item))?,
            Skip::Map(value) => self.blocks(false, |c| {
                let len = c.length()?;
                c.take(len)?;
                c.skip(value)
            })?,
            Skip::Union(branches) => {
                let branch = self.branch(branches.len())?;
                self.skip(&branches[branch])?;
            }
            Skip::Record(fields) => {
                for field in fields {
                    self.skip(field)?;
                }
            }
        }
        Ok(())
    }

    /// Array and map blocks: a count, (with a negative count, a byte size),
    /// the items; a zero count ends. Items of `zero_width` take no bytes:
    /// their count is not looped over (a huge one would spin).
    fn blocks(
        &mut self,
        zero_width: bool,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            if zero_width {
                continue;
            }
            for _ in 0..count.unsigned_abs() {
                if self.pos >= self.bytes.len() {
                    return Err(format!("a block of {count} items runs past the body"));
                }
                item(self)?;
            }
        }
    }
}

impl Decoder {
    /// Decodes one Confluent-framed Avro payload written with `writer` (the
    /// schema its header names, see [`schema_id`]) into `event`, with the
    /// same checks as a JSON payload.
    pub fn decode_avro_into(
        &self,
        writer: &WriterSchema,
        payload: &[u8],
        event: &mut Event,
    ) -> Result<(), DecodeError> {
        self.check_size(payload)?;
        let contract = self.contract();
        let id = schema_id(payload, contract)?;
        debug_assert_eq!(id, writer.id, "decoded with another writer schema");
        let mut inline = [const { None }; 16];
        let mut spilled = Vec::new();
        let slots = slots_in(contract.fields.len(), &mut inline, &mut spilled);
        writer
            .fill(&payload[HEADER_LEN..], slots)
            .map_err(|e| {
                DecodeError::new(
                    DecodeErrorKind::CorruptAvro,
                    None,
                    format!(
                        "Avro body of schema id {id} does not decode: {e}; the record was not written with the schema its header names, or was cut"
                    ),
                )
            })?;
        self.finish(slots, event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn contract(policy: &str) -> Arc<Contract> {
        let text = format!(
            r#"{{
            "name": "page_view", "version": 3, "unknown_fields": "{policy}",
            "fields": [
                {{"name": "event_time", "type": "timestamp", "required": true, "formats": ["epoch_ms"]}},
                {{"name": "user_id", "type": "string", "required": true, "max_length": 8}},
                {{"name": "duration_ms", "type": "int", "default": 7}},
                {{"name": "score", "type": "float"}},
                {{"name": "bot", "type": "bool", "default": false}}
            ]
        }}"#
        );
        Arc::new(Contract::from_json(&text, "t.json", None).unwrap())
    }

    fn decoder(c: &Arc<Contract>) -> Decoder {
        Decoder::new(c.clone(), 0, 1_000)
    }

    fn framed(id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(id, body, &mut out);
        out
    }

    #[test]
    fn the_contract_schema_round_trips_every_type_and_null() {
        let c = contract("reject");
        let schema = contract_schema(&c);
        let writer = WriterSchema::compile(1, &schema, &c).unwrap();
        let values = vec![
            Value::Timestamp(1_795_341_600_500),
            Value::String("u1".into()),
            Value::Int(-42),
            Value::Float(2.5),
            Value::Bool(true),
        ];
        let mut body = Vec::new();
        encode(&c, &values, &mut body).unwrap();
        let mut event = Event::default();
        decoder(&c)
            .decode_avro_into(&writer, &framed(1, &body), &mut event)
            .unwrap();
        assert_eq!(event.values, values);
        assert_eq!(event.time_ms, 1_795_341_600_500);
        // Nulls take the contract's defaults, as absent JSON keys do.
        let nulls = vec![
            Value::Timestamp(5),
            Value::String("u2".into()),
            Value::Null,
            Value::Null,
            Value::Null,
        ];
        encode(&c, &nulls, &mut body).unwrap();
        decoder(&c)
            .decode_avro_into(&writer, &framed(1, &body), &mut event)
            .unwrap();
        assert_eq!(
            event.values,
            vec![
                Value::Timestamp(5),
                Value::String("u2".into()),
                Value::Int(7),
                Value::Null,
                Value::Bool(false)
            ]
        );
    }

    /// A producer's own schema: fields reordered, promotions (int → long,
    /// float → double), micros, an enum, and an extra nested field skipped.
    #[test]
    fn a_writer_schema_resolves_by_name_with_promotions_and_skips() {
        let c = contract("ignore");
        let writer_schema = r#"{
            "type": "record", "name": "PageView", "namespace": "com.example",
            "fields": [
                {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
                {"name": "score", "type": "float"},
                {"name": "user_id", "type": {"type": "enum", "name": "User", "symbols": ["ann", "bob"]}},
                {"name": "extra", "type": {"type": "record", "name": "Extra", "fields": [
                    {"name": "a", "type": ["null", "double"]}, {"name": "b", "type": {"type": "fixed", "name": "F", "size": 3}}]}},
                {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "duration_ms", "type": ["null", "int"]}
            ]
        }"#;
        let writer = WriterSchema::compile(9, writer_schema, &c).unwrap();
        let mut body = Vec::new();
        // tags: one block of 1 entry "k" -> ["x", "yz"], then end.
        write_long(&mut body, 1);
        write_long(&mut body, 1);
        body.extend_from_slice(b"k");
        write_long(&mut body, -2); // a negative count: the block's byte size follows
        write_long(&mut body, 5);
        write_long(&mut body, 1);
        body.extend_from_slice(b"x");
        write_long(&mut body, 2);
        body.extend_from_slice(b"yz");
        write_long(&mut body, 0);
        write_long(&mut body, 0);
        body.extend_from_slice(&1.5f32.to_le_bytes());
        write_long(&mut body, 1); // bob
        write_long(&mut body, 1);
        body.extend_from_slice(&3.0f64.to_le_bytes());
        body.extend_from_slice(b"abc");
        write_long(&mut body, 2_000_999);
        write_long(&mut body, 1);
        write_long(&mut body, 12);
        let event = {
            let mut e = Event::default();
            decoder(&c)
                .decode_avro_into(&writer, &framed(9, &body), &mut e)
                .unwrap();
            e
        };
        assert_eq!(
            event.values,
            vec![
                Value::Timestamp(2_000),
                Value::String("bob".into()),
                Value::Int(12),
                Value::Float(1.5),
                Value::Bool(false)
            ]
        );
    }

    #[test]
    fn incompatible_writers_are_refused_with_every_reason() {
        let reject = contract("reject");
        let writer = r#"{"type": "record", "name": "X", "fields": [
            {"name": "event_time", "type": "long"},
            {"name": "duration_ms", "type": "string"},
            {"name": "colour", "type": "string"}
        ]}"#;
        let e = WriterSchema::compile(4, writer, &reject).unwrap_err();
        for part in [
            "writer schema id 4 cannot be read as contract page_view v3",
            "field \"duration_ms\" is string in the writer, int in the contract",
            "field \"colour\" is not in the contract, which rejects unknown fields",
            "required field \"user_id\" is missing from the writer",
        ] {
            assert!(e.contains(part), "{part:?} not in {e}");
        }
        let e = WriterSchema::compile(5, r#""string""#, &reject).unwrap_err();
        assert!(e.contains("is not an Avro record"), "{e}");
        let e = WriterSchema::compile(6, "{not json", &reject).unwrap_err();
        assert!(e.contains("schema id 6 is not a valid Avro schema"), "{e}");
    }

    #[test]
    fn corrupt_bodies_and_frames_are_named() {
        let c = contract("reject");
        let writer = WriterSchema::compile(1, &contract_schema(&c), &c).unwrap();
        let mut body = Vec::new();
        encode(
            &c,
            &[
                Value::Timestamp(5),
                Value::String("u".into()),
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            &mut body,
        )
        .unwrap();
        let d = decoder(&c);
        let mut event = Event::default();
        // Cut: the body ends inside a field.
        let e = d
            .decode_avro_into(&writer, &framed(1, &body[..2]), &mut event)
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::CorruptAvro);
        assert!(
            e.message
                .contains("Avro body of schema id 1 does not decode: field \"user_id\""),
            "{}",
            e.message
        );
        // Trailing garbage.
        let mut long = body.clone();
        long.push(0);
        let e = d
            .decode_avro_into(&writer, &framed(1, &long), &mut event)
            .unwrap_err();
        assert!(
            e.message.contains("1 bytes left after the last field"),
            "{}",
            e.message
        );
        // A union branch out of range.
        let mut bad = body.clone();
        *bad.last_mut().unwrap() = 6;
        let e = d
            .decode_avro_into(&writer, &framed(1, &bad), &mut event)
            .unwrap_err();
        assert!(e.message.contains("union branch 3"), "{}", e.message);
        // Not framed.
        for (payload, seen) in [
            (&b"{\"a\":1}"[..], "'{' (JSON sent to an Avro source?)"),
            (&b"\x00\x01"[..], "2 bytes starting 0x00"),
            (&b""[..], "an empty payload"),
            (&b"\x01\x00\x00\x00\x01\x02"[..], "first byte 0x01"),
        ] {
            let e = d
                .decode_avro_into(&writer, payload, &mut event)
                .unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::NotConfluentAvro);
            assert!(e.message.contains(seen), "{}", e.message);
        }
        // The contract's checks apply: the timestamp range, max_length, and
        // (Avro has them, JSON has not) no NaN or infinity.
        let row = |time: i64, user: &str, score: Value| {
            vec![
                Value::Timestamp(time),
                Value::String(user.into()),
                Value::Null,
                score,
                Value::Null,
            ]
        };
        for (values, field, says) in [
            (
                row(-1, "u", Value::Null),
                "event_time",
                "outside 1970-01-01",
            ),
            (
                row(5, "far too long", Value::Null),
                "user_id",
                "over max_length 8",
            ),
            (
                row(5, "u", Value::Float(f64::NAN)),
                "score",
                "NaN is not a finite number",
            ),
            (
                row(5, "u", Value::Float(f64::INFINITY)),
                "score",
                "inf is not a finite number",
            ),
        ] {
            encode(&c, &values, &mut body).unwrap();
            let e = d
                .decode_avro_into(&writer, &framed(1, &body), &mut event)
                .unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::InvalidValue, "{}", e.message);
            assert_eq!(e.field.as_deref(), Some(field));
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    /// A skipped array of zero-width items with a huge count does not spin;
    /// a fixed(16) uuid, which apache-avro parses like a string uuid, is
    /// refused instead of misread.
    #[test]
    fn zero_width_blocks_are_not_looped_and_fixed_uuids_are_refused() {
        let c = contract("ignore");
        let writer = WriterSchema::compile(
            2,
            r#"{"type":"record","name":"X","fields":[
                {"name":"nothing","type":{"type":"array","items":"null"}},
                {"name":"event_time","type":"long"},
                {"name":"user_id","type":"string"}]}"#,
            &c,
        )
        .unwrap();
        let mut body = Vec::new();
        write_long(&mut body, i64::MAX);
        write_long(&mut body, 0);
        write_long(&mut body, 7);
        write_long(&mut body, 1);
        body.push(b'u');
        let mut event = Event::default();
        decoder(&c)
            .decode_avro_into(&writer, &framed(2, &body), &mut event)
            .unwrap();
        assert_eq!(event.time_ms, 7);
        let e = WriterSchema::compile(
            3,
            r#"{"type":"record","name":"X","fields":[
                {"name":"id","type":{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}},
                {"name":"event_time","type":"long"},
                {"name":"user_id","type":"string"}]}"#,
            &c,
        )
        .unwrap_err();
        assert!(e.contains("fixed(16) uuid"), "{e}");
    }
}
