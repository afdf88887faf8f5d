//! Query parameters: parsed and checked against the metric definition
//! before anything reaches ClickHouse. Every refusal names the parameter and
//! lists the valid choices.

use serde_json::Value as Json;
use strata_schemas::config::ServingSettings;
use strata_schemas::value::parse_rfc3339_ms;
use strata_schemas::{FieldType, MetricDef};

use crate::error::ApiError;

/// Parameters with a fixed meaning; any other key must be a group-by field.
pub const RESERVED: [&str; 8] = [
    "from",
    "to",
    "group_by",
    "granularity",
    "top",
    "order_by",
    "limit",
    "format",
];

/// Longest accepted parameter value, in bytes.
const MAX_VALUE_BYTES: usize = 1024;
/// Most values in one set-membership filter.
const MAX_FILTER_VALUES: usize = 100;

/// Answer encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `text/csv`.
    Csv,
    /// Arrow IPC stream.
    Arrow,
}

/// A checked query.
#[derive(Clone, Debug, PartialEq)]
pub struct QuerySpec {
    /// Windows whose start is in `[from_ms, to_ms)`.
    pub from_ms: i64,
    /// End of the range.
    pub to_ms: i64,
    /// Kept group-by fields (indexes into `metric.group_by`), in config order.
    pub group_by: Vec<usize>,
    /// Equality / set-membership filters: group-by index → accepted values
    /// (as stored, e.g. booleans as 0/1).
    pub filters: Vec<(usize, Vec<Json>)>,
    /// Re-aggregation bucket, a multiple of the tumbling window size.
    pub granularity_ms: Option<i64>,
    /// Keep the `top` groups of each window by `order_by`.
    pub top: Option<usize>,
    /// Output column (index into `plan.output_columns()`) ranking the top groups.
    pub order_by: Option<usize>,
    /// Most rows in the answer.
    pub limit: usize,
    /// No `limit` was given: an answer of more than `serving.max_rows`
    /// rows is refused (400) rather than silently cut.
    pub refuse_over_limit: bool,
    /// Encoding.
    pub format: Format,
}

/// Parses an instant: RFC 3339 or epoch milliseconds.
pub fn parse_instant(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        // Years 1970..=9999: anything else is a typo or an attack.
        if (0..=253_402_300_799_999).contains(&ms) {
            return Ok(ms);
        }
        return Err(ApiError::bad(format!(
            "{name}={text:?} is out of range; give epoch milliseconds between 0 and 253402300799999 or an RFC 3339 time"
        )));
    }
    parse_rfc3339_ms(text).ok_or_else(|| {
        ApiError::bad(format!(
            "{name}={text:?} is not a time; give RFC 3339 (2026-11-22T10:00:00Z) or epoch milliseconds"
        ))
    })
}

fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs.iter().filter(|(k, _)| k == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::bad(format!(
            "parameter {name} is given more than once; give it once"
        )));
    }
    Ok(first.map(|(_, v)| v.as_str()))
}

fn list(value: &str) -> Vec<&str> {
    value.split(',').map(str::trim).collect()
}

fn parse_duration_param(name: &str, text: &str) -> Result<i64, ApiError> {
    text.parse::<strata_schemas::DurationMs>()
        .map(|d| d.as_i64())
        .map_err(|e| ApiError::bad(format!("{name}={text:?}: {e}")))
}

/// Checks the parameters of `GET /v1/metrics/{metric}/query`.
pub fn parse(
    metric: &MetricDef,
    settings: &ServingSettings,
    pairs: &[(String, String)],
) -> Result<QuerySpec, ApiError> {
    let group_names: Vec<&str> = metric.group_by.iter().map(|g| g.name.as_str()).collect();
    for (k, v) in pairs {
        if v.len() > MAX_VALUE_BYTES {
            return Err(ApiError::bad(format!(
                "parameter {:?} is longer than {MAX_VALUE_BYTES} bytes",
                truncate(k)
            )));
        }
        if v.is_empty() {
            return Err(ApiError::bad(format!(
                "parameter {:?} is empty; give a value or leave it out",
                truncate(k)
            )));
        }
        if !RESERVED.contains(&k.as_str()) && !group_names.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter {:?}; valid parameters are {} and the group-by fields of {} as filters: {}",
                truncate(k),
                RESERVED.join(", "),
                metric.name,
                group_names.join(", ")
            )));
        }
    }
    let from = single(pairs, "from")?
        .ok_or_else(|| ApiError::bad("parameter from is required (RFC 3339 or epoch ms)"))?;
    let to = single(pairs, "to")?
        .ok_or_else(|| ApiError::bad("parameter to is required (RFC 3339 or epoch ms)"))?;
    let from_ms = parse_instant("from", from)?;
    let to_ms = parse_instant("to", to)?;
    if from_ms >= to_ms {
        return Err(ApiError::bad(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let max_range = settings.max_range.as_i64();
    if to_ms - from_ms > max_range {
        return Err(ApiError::bad(format!(
            "the range from..to is longer than serving.max_range ({max_range} ms); query a shorter range"
        )));
    }
    let group_by = match single(pairs, "group_by")? {
        None => (0..metric.group_by.len()).collect(),
        Some(text) => {
            let mut out = Vec::new();
            for name in list(text) {
                let Some(i) = group_names.iter().position(|g| *g == name) else {
                    return Err(ApiError::bad(format!(
                        "group_by: {:?} is not a group-by field of {}; choose from: {}",
                        truncate(name),
                        metric.name,
                        group_names.join(", ")
                    )));
                };
                if out.contains(&i) {
                    return Err(ApiError::bad(format!("group_by: {name} is listed twice")));
                }
                out.push(i);
            }
            out.sort_unstable();
            out
        }
    };
    let mut filters: Vec<(usize, Vec<Json>)> = Vec::new();
    for (i, g) in metric.group_by.iter().enumerate() {
        let values: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == &g.name)
            .map(|(_, v)| v.as_str())
            .collect();
        if values.is_empty() {
            continue;
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(ApiError::bad(format!(
                "filter {}: at most {MAX_FILTER_VALUES} values",
                g.name
            )));
        }
        let mut typed = Vec::new();
        for v in values {
            typed.push(typed_value(&g.name, g.ty, v)?);
        }
        filters.push((i, typed));
    }
    let granularity_ms = match single(pairs, "granularity")? {
        None => None,
        Some(text) => {
            let g = parse_duration_param("granularity", text)?;
            match metric.window.regrid_step_ms() {
                Some(size) => {
                    if g <= 0 || g % size != 0 {
                        return Err(ApiError::bad(format!(
                            "granularity={text:?} must be a positive multiple of the window size of {} ({size} ms)",
                            metric.name
                        )));
                    }
                    Some(g)
                }
                None => {
                    return Err(ApiError::bad(format!(
                        "granularity is only supported for tumbling windows; {} uses {} windows, whose windows overlap or vary in length and cannot be re-aggregated",
                        metric.name,
                        metric.window.name()
                    )));
                }
            }
        }
    };
    let outputs = metric.plan.output_columns();
    let output_names: Vec<&str> = outputs.iter().map(|c| c.name.as_str()).collect();
    let order_by = match single(pairs, "order_by")? {
        None => None,
        Some(name) => Some(
            output_names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "order_by: {:?} is not an aggregation of {}; choose from: {}",
                        truncate(name),
                        metric.name,
                        output_names.join(", ")
                    ))
                })?,
        ),
    };
    let top = match single(pairs, "top")? {
        None => None,
        Some(text) => {
            let n: usize = text
                .parse()
                .ok()
                .filter(|n| *n >= 1 && *n <= 10_000)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "top={:?} must be an integer from 1 to 10000",
                        truncate(text)
                    ))
                })?;
            Some(n)
        }
    };
    if top.is_some() && order_by.is_none() {
        return Err(ApiError::bad(format!(
            "top needs order_by: one of {}",
            output_names.join(", ")
        )));
    }
    let limit_text = single(pairs, "limit")?;
    let limit = match limit_text {
        None => settings.max_rows,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1 && *n <= settings.max_rows)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "limit={:?} must be an integer from 1 to serving.max_rows ({})",
                    truncate(text),
                    settings.max_rows
                ))
            })?,
    };
    let format = match single(pairs, "format")? {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("arrow") => Format::Arrow,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "format={:?} is not supported; choose json, csv or arrow",
                truncate(other)
            )));
        }
    };
    Ok(QuerySpec {
        from_ms,
        to_ms,
        group_by,
        filters,
        granularity_ms,
        top,
        order_by,
        limit,
        refuse_over_limit: limit_text.is_none(),
        format,
    })
}

/// A filter value, typed like the stored column.
pub fn typed_value(name: &str, ty: FieldType, text: &str) -> Result<Json, ApiError> {
    let bad =
        |what: &str| ApiError::bad(format!("filter {name}={:?} is not {what}", truncate(text)));
    Ok(match ty {
        FieldType::String => Json::from(text),
        FieldType::Int | FieldType::Timestamp => {
            Json::from(text.parse::<i64>().map_err(|_| bad("a 64-bit integer"))?)
        }
        FieldType::Float => {
            let v: f64 = text.parse().map_err(|_| bad("a number"))?;
            if !v.is_finite() {
                return Err(bad("a finite number"));
            }
            Json::from(v)
        }
        FieldType::Bool => match text {
            "true" | "1" => Json::from(1),
            "false" | "0" => Json::from(0),
            _ => return Err(bad("true or false")),
        },
    })
}

/// At most 64 characters of user text, for error messages.
pub fn truncate(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
