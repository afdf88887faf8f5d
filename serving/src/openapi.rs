//! The OpenAPI 3 document, generated from the loaded metric definitions:
//! every metric gets its own paths, with its group-by fields, filters and
//! aggregation names as enums, so the document always matches the API.

use serde_json::{Map, Value as Json, json};
use strata_schemas::value::format_rfc3339_ms;
use strata_schemas::{Config, FieldType, MetricDef};

fn json_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "string",
        FieldType::Int | FieldType::Timestamp | FieldType::Bool => "integer",
        FieldType::Float => "number",
    }
}

/// One metric as `GET /v1/metrics` lists it.
pub fn describe_metric(
    metric: &MetricDef,
    batch_watermark: Option<i64>,
    speed_watermark: Option<i64>,
) -> Json {
    let mut window = Map::new();
    window.insert("kind".into(), Json::from(metric.window.name()));
    for (name, ms) in metric.window.lengths_ms() {
        window.insert(name.into(), Json::from(ms));
    }
    let aggs: Vec<Json> = metric
        .plan
        .output_columns()
        .into_iter()
        .map(|c| {
            let a = &metric.plan.aggregations()[c.aggregation];
            json!({
                "name": c.name,
                "function": a.function.name(),
                "field": a.field.as_ref().map(|f| f.name.clone()),
                "quantile": c.quantile,
            })
        })
        .collect();
    json!({
        "name": metric.name,
        "description": metric.description,
        "source": metric.source.name,
        "window": window,
        "group_by": metric.group_by.iter().map(|g| json!({"name": g.name, "type": g.ty.name()})).collect::<Vec<_>>(),
        "aggregations": aggs,
        "batch_watermark": batch_watermark.map(format_rfc3339_ms),
        "speed_watermark": speed_watermark.map(format_rfc3339_ms),
    })
}

fn param(name: &str, description: &str, required: bool, schema: Json) -> Json {
    let mut p = Map::new();
    p.insert("name".into(), Json::from(name));
    p.insert("in".into(), Json::from("query"));
    p.insert("required".into(), Json::from(required));
    p.insert("description".into(), Json::from(description));
    p.insert("schema".into(), schema);
    Json::Object(p)
}

fn error_responses() -> Map<String, Json> {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut m = Map::new();
    for code in ["400", "401", "403", "404", "429", "500", "503", "504"] {
        m.insert(code.into(), error.clone());
    }
    m
}

/// The whole document.
pub fn document(config: &Config) -> Json {
    let mut paths = Map::new();
    paths.insert(
        "/v1/metrics".into(),
        json!({"get": {"summary": "Every metric with its window, groups, aggregations and watermarks", "responses": {"200": {"description": "metrics"}}}}),
    );
    for metric in &config.metrics {
        let fields: Vec<&str> = metric.group_by.iter().map(|g| g.name.as_str()).collect();
        let outputs: Vec<String> = metric
            .plan
            .output_columns()
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut params = vec![
            param(
                "from",
                "Windows starting at or after this instant (RFC 3339 or epoch ms).",
                true,
                json!({"type": "string"}),
            ),
            param(
                "to",
                "Windows starting before this instant (RFC 3339 or epoch ms).",
                true,
                json!({"type": "string"}),
            ),
            param(
                "group_by",
                "Comma-separated subset of the group-by fields; the others are merged away.",
                false,
                json!({"type": "string", "example": fields.join(",")}),
            ),
            param(
                "top",
                "Keep the top N groups of each window by order_by.",
                false,
                json!({"type": "integer", "minimum": 1, "maximum": 10000}),
            ),
            param(
                "order_by",
                "Aggregation ranking the top groups.",
                false,
                json!({"type": "string", "enum": outputs}),
            ),
            param(
                "limit",
                "Most rows in the answer (the first ones). Without it, an answer of more than serving.max_rows rows is refused (400) instead of cut.",
                false,
                json!({"type": "integer", "minimum": 1, "maximum": config.serving.max_rows}),
            ),
            param(
                "format",
                "Answer encoding.",
                false,
                json!({"type": "string", "enum": ["json", "csv", "arrow"], "default": "json"}),
            ),
        ];
        if metric.window.regrid_step_ms().is_some() {
            params.push(param("granularity", "Re-aggregate windows into buckets of this length (a multiple of the window size, e.g. 5m).", false, json!({"type": "string"})));
        }
        for g in &metric.group_by {
            params.push(json!({
                "name": g.name, "in": "query", "required": false,
                "description": format!("Keep only groups whose {} is this value; repeat for set membership.", g.name),
                "schema": {"type": "array", "items": {"type": json_type(g.ty)}}, "style": "form", "explode": true,
            }));
        }
        let mut row_props = Map::new();
        row_props.insert(
            "window_start".into(),
            json!({"type": "string", "format": "date-time"}),
        );
        row_props.insert(
            "window_end".into(),
            json!({"type": "string", "format": "date-time"}),
        );
        for g in &metric.group_by {
            row_props.insert(g.name.clone(), json!({"type": json_type(g.ty)}));
        }
        for o in &outputs {
            row_props.insert(o.clone(), json!({"type": ["number", "null"]}));
        }
        row_props.insert(
            "source".into(),
            json!({"type": "string", "enum": ["batch", "speed"]}),
        );
        row_props.insert("final".into(), json!({"type": "boolean"}));
        let mut responses = error_responses();
        responses.insert("200".into(), json!({
            "description": "merged answer",
            "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "metric": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                    "batch_watermark": {"type": ["string", "null"]}, "speed_watermark": {"type": ["string", "null"]},
                    "truncated": {"type": "boolean"},
                    "rows": {"type": "array", "items": {"type": "object", "properties": row_props}}
                }}},
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }));
        paths.insert(
            format!("/v1/metrics/{}/query", metric.name),
            json!({"get": {"summary": metric.description.clone().unwrap_or_else(|| metric.name.clone()), "parameters": params, "responses": responses}}),
        );
        let latest_params: Vec<Json> = metric
            .group_by
            .iter()
            .map(|g| {
                param(
                    &g.name,
                    "Group key value (every group-by field is required).",
                    true,
                    json!({"type": json_type(g.ty)}),
                )
            })
            .collect();
        let mut latest_responses = error_responses();
        latest_responses.insert(
            "200".into(),
            json!({"description": "the newest window of the key"}),
        );
        paths.insert(
            format!("/v1/metrics/{}/latest", metric.name),
            json!({"get": {"summary": format!("Newest window of one group key of {}", metric.name), "parameters": latest_params, "responses": latest_responses}}),
        );
    }
    for (path, summary) in [
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness: ClickHouse reachable, config loaded"),
        ("/metrics", "Prometheus metrics"),
    ] {
        paths.insert(path.into(), json!({"get": {"summary": summary, "security": [], "responses": {"200": {"description": "ok"}}}}));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Strata API", "version": env!("CARGO_PKG_VERSION"), "description": "Windows before the batch watermark come from the batch view, windows from it on from the speed view."},
        "paths": paths,
        "security": if config.serving.api_keys.is_empty() { json!([]) } else { json!([{"bearer": []}]) },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "request_id": {"type": "string"}}}}
        }
    })
}
