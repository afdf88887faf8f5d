//! Answer encodings: JSON, CSV and Arrow IPC stream.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value as Json};
use strata_schemas::value::format_rfc3339_ms;
use strata_schemas::{AggFunction, FieldType, MetricDef};

use crate::error::ApiError;
use crate::merge::{Answer, AnswerRow};
use crate::query::QuerySpec;

/// The JSON answer.
pub fn json(metric: &MetricDef, spec: &QuerySpec, answer: &Answer) -> Json {
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
            for (name, v) in names.iter().zip(&r.key) {
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

fn csv_value(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => csv_field(s),
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
        let int_field = a.field.as_ref().is_some_and(|f| f.ty == FieldType::Int);
        let (ty, kind) = match a.function {
            AggFunction::Count | AggFunction::CountDistinct => (DataType::UInt64, Kind::UInt),
            AggFunction::Sum | AggFunction::Min | AggFunction::Max if int_field => {
                (DataType::Int64, Kind::Int)
            }
            _ => (DataType::Float64, Kind::Float),
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
