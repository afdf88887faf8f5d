//! Answer encodings: JSON, CSV and Arrow IPC stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde_json::Value as Json;
use strata_schemas::aggregate::OutputType;
use strata_schemas::value::format_rfc3339_ms;
use strata_schemas::{FieldType, MetricDef};

use crate::error::ApiError;
use crate::merge::{Answer, AnswerRow};
use crate::query::QuerySpec;

/// Where a JSON row field's value comes from.
#[derive(Clone, Copy)]
enum Cell {
    Start,
    End,
    Key(usize),
    Value(usize),
    Source,
    Final,
}

/// The JSON answer, written straight into bytes. It is the document the
/// API always answered with (serde_json's maps sort keys, so every object's
/// keys are written in sorted order), but without building a map of owned
/// keys per row, which for large answers was a large share of the API's
/// CPU time.
pub fn json(metric: &MetricDef, spec: &QuerySpec, answer: &Answer) -> Result<Vec<u8>, ApiError> {
    // The row fields in insertion order; a later field of the same name
    // replaces an earlier one, as a map insert did.
    let mut fields: BTreeMap<String, Cell> = BTreeMap::new();
    fields.insert("window_start".into(), Cell::Start);
    fields.insert("window_end".into(), Cell::End);
    for (i, name) in group_names(metric, spec).into_iter().enumerate() {
        fields.insert(name.to_string(), Cell::Key(i));
    }
    for (i, c) in metric.plan.output_columns().into_iter().enumerate() {
        fields.insert(c.name, Cell::Value(i));
    }
    fields.insert("source".into(), Cell::Source);
    fields.insert("final".into(), Cell::Final);
    // `{"name":` for the first field, `,"name":` for the others.
    let mut prefixes: Vec<(Vec<u8>, Cell)> = Vec::with_capacity(fields.len());
    for (n, (name, cell)) in fields.iter().enumerate() {
        let mut prefix = vec![if n == 0 { b'{' } else { b',' }];
        write_str(&mut prefix, name)?;
        prefix.push(b':');
        prefixes.push((prefix, *cell));
    }
    // About a row's size (field names, two timestamps, short values), so
    // a large answer neither reallocates often nor over-allocates much.
    let per_row: usize = prefixes.iter().map(|(p, _)| p.len() + 12).sum::<usize>() + 32;
    let mut out = Vec::with_capacity(256 + answer.rows.len() * per_row);
    out.extend_from_slice(b"{\"batch_watermark\":");
    write_time(&mut out, answer.batch_watermark)?;
    out.extend_from_slice(b",\"from\":");
    write_time(&mut out, Some(spec.from_ms))?;
    out.extend_from_slice(b",\"metric\":");
    write_str(&mut out, &metric.name)?;
    out.extend_from_slice(b",\"rows\":[");
    // Rows come ordered by start, so each window's times are formatted once.
    let mut start = Timestamp::default();
    let mut end = Timestamp::default();
    for (n, r) in answer.rows.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        for (prefix, cell) in &prefixes {
            out.extend_from_slice(prefix);
            match *cell {
                Cell::Start => out.extend_from_slice(start.json(r.start_ms)),
                Cell::End => out.extend_from_slice(end.json(r.end_ms)),
                Cell::Key(i) => write_json(&mut out, &r.key[i])?,
                Cell::Value(i) => write_json(&mut out, &r.values[i])?,
                Cell::Source => write_str(&mut out, r.source.name())?,
                Cell::Final => write_bool(&mut out, r.is_final),
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"speed_watermark\":");
    write_time(&mut out, answer.speed_watermark)?;
    out.extend_from_slice(b",\"to\":");
    write_time(&mut out, Some(spec.to_ms))?;
    out.extend_from_slice(b",\"truncated\":");
    write_bool(&mut out, answer.truncated);
    out.push(b'}');
    Ok(out)
}

fn encode_error(e: &serde_json::Error) -> ApiError {
    ApiError::Internal(format!("encoding the JSON answer: {e}"))
}

fn write_json(out: &mut Vec<u8>, value: &Json) -> Result<(), ApiError> {
    serde_json::to_writer(out, value).map_err(|e| encode_error(&e))
}

fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), ApiError> {
    serde_json::to_writer(out, text).map_err(|e| encode_error(&e))
}

fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn write_time(out: &mut Vec<u8>, ms: Option<i64>) -> Result<(), ApiError> {
    match ms {
        Some(ms) => write_str(out, &format_rfc3339_ms(ms)),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// The last instant formatted, as a JSON string.
#[derive(Default)]
struct Timestamp {
    ms: Option<i64>,
    json: Vec<u8>,
}

impl Timestamp {
    fn json(&mut self, ms: i64) -> &[u8] {
        if self.ms != Some(ms) {
            self.ms = Some(ms);
            self.json.clear();
            // RFC 3339 text (or the `<n>ms` fallback) holds nothing JSON
            // escapes: quoting it is enough.
            self.json.push(b'"');
            self.json
                .extend_from_slice(format_rfc3339_ms(ms).as_bytes());
            self.json.push(b'"');
        }
        &self.json
    }
}

fn group_names<'a>(metric: &'a MetricDef, spec: &QuerySpec) -> Vec<&'a str> {
    spec.group_by
        .iter()
        .map(|i| metric.group_by[*i].name.as_str())
        .collect()
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A text cell that a spreadsheet would run as a formula (starting with
/// `=`, `+`, `-`, `@`, tab or carriage return: CSV injection, OWASP) gets
/// a leading `'`, which spreadsheets show as text. Group-by values come from
/// the events, i.e. from anyone who can produce one.
fn csv_text(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        csv_field(&format!("'{text}"))
    } else {
        csv_field(text)
    }
}

fn csv_value(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => csv_text(s),
        // Numbers (negative ones too) are data, not formulas.
        other => csv_field(&other.to_string()),
    }
}

/// The CSV answer: a header, then one line per row.
pub fn csv(metric: &MetricDef, spec: &QuerySpec, answer: &Answer) -> String {
    let mut header: Vec<String> = vec!["window_start".into(), "window_end".into()];
    header.extend(group_names(metric, spec).into_iter().map(String::from));
    header.extend(metric.plan.output_columns().into_iter().map(|c| c.name));
    header.extend(["source".to_string(), "final".to_string()]);
    let mut out = header.join(",");
    out.push('\n');
    for r in &answer.rows {
        let mut fields = vec![format_rfc3339_ms(r.start_ms), format_rfc3339_ms(r.end_ms)];
        fields.extend(r.key.iter().map(csv_value));
        fields.extend(r.values.iter().map(csv_value));
        fields.push(r.source.name().into());
        fields.push(r.is_final.to_string());
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

enum Kind {
    Str,
    Int,
    UInt,
    Float,
}

/// The Arrow IPC stream answer: one record batch, typed columns.
pub fn arrow(metric: &MetricDef, spec: &QuerySpec, answer: &Answer) -> Result<Vec<u8>, ApiError> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
    ];
    let mut kinds = Vec::new();
    for i in &spec.group_by {
        let g = &metric.group_by[*i];
        let (ty, kind) = match g.ty {
            FieldType::String => (DataType::Utf8, Kind::Str),
            FieldType::Int | FieldType::Timestamp => (DataType::Int64, Kind::Int),
            FieldType::Float => (DataType::Float64, Kind::Float),
            FieldType::Bool => (DataType::UInt64, Kind::UInt),
        };
        fields.push(Field::new(&g.name, ty, true));
        kinds.push(kind);
    }
    let aggs = metric.plan.aggregations();
    for c in metric.plan.output_columns() {
        let a = &aggs[c.aggregation];
        let (ty, kind) = match a.output_type() {
            OutputType::Count => (DataType::UInt64, Kind::UInt),
            OutputType::Int => (DataType::Int64, Kind::Int),
            OutputType::Float => (DataType::Float64, Kind::Float),
        };
        fields.push(Field::new(&c.name, ty, true));
        kinds.push(kind);
    }
    fields.push(Field::new("source", DataType::Utf8, false));
    fields.push(Field::new("final", DataType::Boolean, false));
    let schema = Arc::new(Schema::new(fields));
    let n = answer.rows.len();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut starts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ends = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in &answer.rows {
        starts.append_value(r.start_ms);
        ends.append_value(r.end_ms);
    }
    columns.push(Arc::new(starts.finish()));
    columns.push(Arc::new(ends.finish()));
    let value_at = |r: &AnswerRow, c: usize| -> Json {
        if c < r.key.len() {
            r.key[c].clone()
        } else {
            r.values[c - r.key.len()].clone()
        }
    };
    for (c, kind) in kinds.iter().enumerate() {
        let column: ArrayRef = match kind {
            Kind::Str => {
                let mut b = StringBuilder::new();
                for r in &answer.rows {
                    match value_at(r, c) {
                        Json::String(s) => b.append_value(s),
                        Json::Null => b.append_null(),
                        other => b.append_value(other.to_string()),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::Int => {
                let mut b = Int64Builder::with_capacity(n);
                for r in &answer.rows {
                    b.append_option(warehouse_i64(&value_at(r, c)));
                }
                Arc::new(b.finish())
            }
            Kind::UInt => {
                let mut b = UInt64Builder::with_capacity(n);
                for r in &answer.rows {
                    b.append_option(
                        warehouse_i64(&value_at(r, c)).and_then(|v| u64::try_from(v).ok()),
                    );
                }
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::with_capacity(n);
                for r in &answer.rows {
                    b.append_option(value_at(r, c).as_f64());
                }
                Arc::new(b.finish())
            }
        };
        columns.push(column);
    }
    let mut sources = StringBuilder::new();
    let mut finals = BooleanBuilder::with_capacity(n);
    for r in &answer.rows {
        sources.append_value(r.source.name());
        finals.append_value(r.is_final);
    }
    columns.push(Arc::new(sources.finish()));
    columns.push(Arc::new(finals.finish()));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| ApiError::Internal(format!("building the Arrow answer: {e}")))?;
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, &schema)
            .map_err(|e| ApiError::Internal(format!("Arrow writer: {e}")))?;
        writer
            .write(&batch)
            .map_err(|e| ApiError::Internal(format!("Arrow writer: {e}")))?;
        writer
            .finish()
            .map_err(|e| ApiError::Internal(format!("Arrow writer: {e}")))?;
    }
    Ok(out)
}

fn warehouse_i64(v: &Json) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .or_else(|| v.as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value as Json};
    use strata_schemas::value::format_rfc3339_ms;

    use super::*;
    use crate::merge::Source;
    use crate::query::Format;

    /// The answer as a `Value` tree, as the API built it before writing
    /// JSON directly: the bytes must not change.
    fn as_tree(metric: &MetricDef, spec: &QuerySpec, answer: &Answer) -> Json {
        let names = group_names(metric, spec);
        let outputs = metric.plan.output_columns();
        let rows: Vec<Json> = answer
            .rows
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert(
                    "window_start".into(),
                    Json::from(format_rfc3339_ms(r.start_ms)),
                );
                o.insert("window_end".into(), Json::from(format_rfc3339_ms(r.end_ms)));
                for (name, v) in names.iter().zip(r.key.iter()) {
                    o.insert((*name).to_string(), v.clone());
                }
                for (c, v) in outputs.iter().zip(&r.values) {
                    o.insert(c.name.clone(), v.clone());
                }
                o.insert("source".into(), Json::from(r.source.name()));
                o.insert("final".into(), Json::from(r.is_final));
                Json::Object(o)
            })
            .collect();
        serde_json::json!({
            "metric": metric.name,
            "from": format_rfc3339_ms(spec.from_ms),
            "to": format_rfc3339_ms(spec.to_ms),
            "batch_watermark": answer.batch_watermark.map(format_rfc3339_ms),
            "speed_watermark": answer.speed_watermark.map(format_rfc3339_ms),
            "truncated": answer.truncated,
            "rows": rows,
        })
    }

    #[test]
    fn json_answer_is_the_serialized_tree() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
        let config = strata_schemas::config::load_with_env(&repo, |_| None).unwrap();
        let metric = config
            .metrics
            .iter()
            .find(|m| m.name == "page_views_per_minute")
            .unwrap();
        let start = 1_795_341_600_000;
        let spec = QuerySpec {
            from_ms: start,
            to_ms: start + 180_000,
            group_by: vec![0, 1],
            filters: Vec::new(),
            granularity_ms: None,
            top: None,
            order_by: None,
            limit: 10,
            refuse_over_limit: false,
            format: Format::Json,
        };
        let row = |minute: i64, page: &str, values: Vec<Json>, source| AnswerRow {
            start_ms: start + minute * 60_000,
            end_ms: start + (minute + 1) * 60_000,
            key: vec![Json::from(page), Json::from("DE")].into(),
            values,
            source,
            is_final: source == Source::Batch,
        };
        let answer = Answer {
            batch_watermark: Some(start + 60_000),
            speed_watermark: None,
            rows: vec![
                row(
                    0,
                    "/a",
                    vec![Json::from(3), Json::from(4500), Json::from(1500.0)],
                    Source::Batch,
                ),
                row(
                    0,
                    "/\"quoted\"\n",
                    vec![Json::from(1), Json::from(0.25), Json::Null],
                    Source::Batch,
                ),
                row(
                    1,
                    "/ü",
                    vec![Json::from(0), Json::from(-2), Json::from(1e-7)],
                    Source::Speed,
                ),
                row(
                    2,
                    "/b",
                    vec![Json::from(7), Json::from(1e300), Json::from(2.5)],
                    Source::Speed,
                ),
            ],
            truncated: true,
        };
        let written = json(metric, &spec, &answer).unwrap();
        let tree = serde_json::to_vec(&as_tree(metric, &spec, &answer)).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(tree).unwrap()
        );
        let empty = Answer {
            batch_watermark: None,
            speed_watermark: Some(start),
            rows: Vec::new(),
            truncated: false,
        };
        assert_eq!(
            json(metric, &spec, &empty).unwrap(),
            serde_json::to_vec(&as_tree(metric, &spec, &empty)).unwrap()
        );
    }
}
