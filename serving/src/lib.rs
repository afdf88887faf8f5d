//! # strata-serving
//!
//! `strata serve`: the REST API over every metric of `strata.toml`,
//! merging the batch view (windows before the batch watermark) with the
//! speed view (windows from it on).
//!
//! - [`query`]: parameters, checked against the metric definitions;
//! - [`merge`]: reading both views and merging them exactly once;
//! - [`format`]: JSON, CSV and Arrow IPC answers;
//! - [`cache`]: the in-process cache behind `latest`;
//! - [`openapi`]: the OpenAPI document, generated from the metric definitions;
//! - [`limits`]: what bounds a request (concurrency, ClickHouse settings,
//!   query ids killed when a request ends early) and request ids;
//! - [`metrics`]: every exported metric.
//!
//! User text never reaches SQL: identifiers come from the metric
//! definitions, time bounds are parsed integers, metric names and text
//! filter values are bound parameters (escaped by the client), numeric
//! filter values are re-printed from the parsed number.

pub mod cache;
pub mod error;
pub mod format;
pub mod limits;
pub mod merge;
pub mod metrics;
pub mod openapi;
pub mod query;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clickhouse::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value as Json;
use strata_schemas::config::ApiKey;
use strata_schemas::value::format_rfc3339_ms;
use strata_schemas::{Config, MetricDef};
use strata_warehouse as warehouse;

use crate::cache::LatestCache;
use crate::error::ApiError;
use crate::limits::{Queries, Slots};
use crate::query::Format;

/// Longest accepted query string, in bytes.
const MAX_QUERY_BYTES: usize = 8 * 1024;

/// How long a client may take to send a request's headers (also between
/// two requests of a kept-alive connection); then the connection is
/// closed. Without it a client that connects and sends nothing holds a
/// connection and its task forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the requests in flight beyond
/// `serving.query_timeout`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    /// The reader (`serving.clickhouse_user`), every query bounded.
    client: Client,
    cache: Arc<LatestCache>,
    prometheus: PrometheusHandle,
    last_states: Arc<merge::LastStates>,
    slots: Slots,
}

/// The identity a request authenticated as.
#[derive(Clone)]
struct Caller(Option<Arc<ApiKey>>);

impl Caller {
    fn may_read(&self, metric: &str) -> bool {
        match &self.0 {
            None => true,
            Some(key) => key.metrics.iter().any(|m| m == "*" || m == metric),
        }
    }
}

/// Builds the router (also used by tests in-process).
pub fn router(config: &Arc<Config>, cache: Arc<LatestCache>) -> Router {
    let client = limits::reader_client(config);
    let state = AppState {
        prometheus: metrics::install(),
        config: config.clone(),
        client,
        cache,
        last_states: Arc::default(),
        slots: Slots::new(config.serving.max_concurrent_queries),
    };
    let api = Router::new()
        .route("/v1/metrics", get(list_metrics))
        .route("/v1/metrics/{metric}/query", get(query_metric))
        .route("/v1/metrics/{metric}/latest", get(latest))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut router = Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi_doc))
        .route("/docs", get(docs))
        .route("/", get(docs))
        .fallback(|| async { ApiError::NotFound("no such route; see /docs".into()) })
        .layer(middleware::from_fn(observe))
        .with_state(state);
    if !config.serving.cors_origins.is_empty() {
        // `*` among the origins means any: tower-http panics on a wildcard
        // inside a list of origins, so it is its own case.
        let origins = if config.serving.cors_origins.iter().any(|o| o.trim() == "*") {
            tower_http::cors::AllowOrigin::any()
        } else {
            let list: Vec<HeaderValue> = config
                .serving
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            tower_http::cors::AllowOrigin::list(list)
        };
        router = router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([axum::http::Method::GET])
                .allow_headers([header::AUTHORIZATION]),
        );
    }
    router
}

/// Refuses to serve an open API (no `serving.api_keys`) on an address other
/// than loopback unless `serving.allow_anonymous` says it is on purpose, and
/// warns loudly whenever the API is open or reads with a user that can write.
pub fn check_exposure(config: &Config) -> std::io::Result<()> {
    let serving = &config.serving;
    let listen = serving.listen;
    if serving.clickhouse_user.is_none() {
        tracing::warn!(
            user = %config.clickhouse.user,
            "serving.clickhouse_user is unset: the API reads ClickHouse as clickhouse.user, which can write; \
             create a read-only user (readonly = 2; deploy/local/up.sh defines strata_reader) and set serving.clickhouse_user"
        );
    }
    if !serving.api_keys.is_empty() {
        return Ok(());
    }
    if listen.ip().is_loopback() {
        tracing::warn!(
            listen = %listen,
            "serving.api_keys is empty: the API answers every request without a key (loopback only)"
        );
        return Ok(());
    }
    if serving.allow_anonymous {
        tracing::warn!(
            listen = %listen,
            "serving.api_keys is empty and serving.allow_anonymous = true: ANYONE WHO CAN REACH {listen} READS EVERY METRIC; \
             add [[serving.api_keys]] unless a proxy in front authenticates"
        );
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "refusing to serve an open API on {listen}, which is not a loopback address: serving.api_keys is empty. \
             Add [[serving.api_keys]] (name, key, metrics), or set serving.allow_anonymous = true \
             (env STRATA_SERVING_ALLOW_ANONYMOUS=true) if a proxy in front authenticates"
        ),
    ))
}

/// Runs the API on `serving.listen` until `shutdown` resolves.
pub async fn serve(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    check_exposure(&config)?;
    let cache = Arc::new(LatestCache::default());
    let refresher = tokio::spawn(cache.clone().keep_fresh(
        config.clone(),
        limits::reader_client(&config),
        Duration::from_millis(config.serving.latest_refresh.0),
    ));
    let listener = tokio::net::TcpListener::bind(config.serving.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, metrics = config.metrics.len(), "serving API listening");
    let app = router(&config, cache);
    let grace = Duration::from_millis(config.serving.query_timeout.0) + SHUTDOWN_GRACE;
    run(listener, app, shutdown, grace).await;
    refresher.abort();
    Ok(addr)
}

/// Serves HTTP/1.1 connections until `shutdown`, then lets the requests in
/// flight finish (at most `grace`). Each connection must send its request
/// headers within [`HEADER_READ_TIMEOUT`]; a failed accept (out of file
/// descriptors, say) is logged and counted, and the loop goes on.
async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, app.clone(), closed.clone()));
                }
                Err(e) => {
                    ::metrics::counter!(metrics::ACCEPT_ERRORS).increment(1);
                    tracing::warn!(error = %e, "accepting a connection failed; still listening");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "shutdown: requests still in flight after the grace period; dropping them"
        );
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Counts and times every request by route and status, and gives it a
/// request id (`x-request-id`, in error bodies and log lines).
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let id = limits::new_request_id();
    let mut response = limits::with_request_id(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(metrics::REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    ::metrics::histogram!(metrics::REQUEST_LATENCY, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Bearer API keys: without configured keys the API is open.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let keys = &state.config.serving.api_keys;
    if keys.is_empty() {
        request.extensions_mut().insert(Caller(None));
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::Unauthorized("missing API key: send Authorization: Bearer <key>".into())
            .into_response();
    };
    let found = keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), presented.as_bytes()));
    match found {
        Some(key) => {
            request
                .extensions_mut()
                .insert(Caller(Some(Arc::new(key.clone()))));
            next.run(request).await
        }
        None => ApiError::Unauthorized("unknown API key".into()).into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn find_metric(state: &AppState, caller: &Caller, name: &str) -> Result<Arc<MetricDef>, ApiError> {
    let metric = state
        .config
        .metrics
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown metric {:?}; metrics: {}",
                query::truncate(name),
                state
                    .config
                    .metrics
                    .iter()
                    .filter(|m| caller.may_read(&m.name))
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    if !caller.may_read(&metric.name) {
        return Err(ApiError::Forbidden(format!(
            "this API key may not read metric {}",
            metric.name
        )));
    }
    Ok(metric)
}

fn pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad(format!(
            "the query string is longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    Ok(form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

async fn with_timeout<T>(
    state: &AppState,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let limit = Duration::from_millis(state.config.serving.query_timeout.0);
    tokio::time::timeout(limit, work).await.map_err(|_| {
        ApiError::Timeout(format!(
            "the query took longer than serving.query_timeout ({} ms); narrow the range or the groups",
            limit.as_millis()
        ))
    })?
}

async fn list_metrics(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Response, ApiError> {
    let _slot = state.slots.take()?;
    let queries = Queries::new(&state.client);
    let mut out = Vec::new();
    for (i, metric) in state
        .config
        .metrics
        .iter()
        .filter(|m| caller.may_read(&m.name))
        .enumerate()
    {
        let db = &state.config.clickhouse.database;
        let client = queries.client(&format!("state{i}"));
        let now = with_timeout(&state, merge::query_state(&client, db, metric)).await?;
        out.push(openapi::describe_metric(
            metric,
            now.batch.map(|b| b.1),
            now.speed_watermark,
        ));
    }
    queries.finish();
    Ok(axum::Json(serde_json::json!({ "metrics": out })).into_response())
}

async fn query_metric(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let metric = find_metric(&state, &caller, &name)?;
    let spec = query::parse(&metric, &state.config.serving, &pairs(raw)?)?;
    let _slot = state.slots.take()?;
    // Dropped unfinished (timeout, or the client went away and the server
    // dropped this handler), it kills the ClickHouse queries it started.
    let queries = Queries::new(&state.client);
    let answer = with_timeout(
        &state,
        merge::answer(
            &queries,
            &state.config.clickhouse.database,
            &metric,
            &spec,
            &state.last_states,
            &state.config.serving,
        ),
    )
    .await?;
    queries.finish();
    // Encoding a large answer (megabytes of JSON) takes milliseconds of CPU:
    // off the async workers, so it does not stall the other requests they
    // are serving.
    let offload = answer.rows.len() > ENCODE_IN_PLACE_UP_TO_ROWS;
    let encode = move || -> Result<Response, ApiError> {
        Ok(match spec.format {
            Format::Json => (
                [(header::CONTENT_TYPE, "application/json")],
                format::json(&metric, &spec, &answer)?,
            )
                .into_response(),
            Format::Csv => (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                format::csv(&metric, &spec, &answer),
            )
                .into_response(),
            Format::Arrow => (
                [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
                format::arrow(&metric, &spec, &answer)?,
            )
                .into_response(),
        })
    };
    if offload {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| ApiError::Internal(format!("encoding the answer: {e}")))?
    } else {
        encode()
    }
}

/// Answers of more rows than this are encoded on a blocking thread; a small
/// one is cheaper to encode in place than to hand over.
const ENCODE_IN_PLACE_UP_TO_ROWS: usize = 1_000;

async fn latest(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let metric = find_metric(&state, &caller, &name)?;
    let pairs = pairs(raw)?;
    let names: Vec<&str> = metric.group_by.iter().map(|g| g.name.as_str()).collect();
    for (k, _) in &pairs {
        if !names.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter {:?}; latest takes every group-by field of {}: {}",
                query::truncate(k),
                metric.name,
                names.join(", ")
            )));
        }
    }
    let mut key = Vec::new();
    for g in &metric.group_by {
        let values: Vec<&String> = pairs
            .iter()
            .filter(|(k, _)| k == &g.name)
            .map(|(_, v)| v)
            .collect();
        match values.as_slice() {
            [v] if !v.is_empty() => key.push(query::typed_value(&g.name, g.ty, v)?),
            [] => {
                return Err(ApiError::bad(format!(
                    "parameter {} is required: latest needs every group-by field of {} ({})",
                    g.name,
                    metric.name,
                    names.join(", ")
                )));
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "parameter {} must be given once, not empty",
                    g.name
                )));
            }
        }
    }
    let key_text = serde_json::to_string(&key).unwrap_or_default();
    match state.cache.get(&metric.name, &key_text) {
        // The cached body is shared, not copied.
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None if !state.cache.is_warm(&metric.name) => Err(ApiError::Unavailable(
            "the cache is not filled yet; retry in a second".into(),
        )),
        None => Err(ApiError::NotFound(format!(
            "no recent window of {} for {}",
            metric.name,
            query::truncate(&key_text)
        ))),
    }
}

/// Readiness: whether ClickHouse answers the API's user. The reason of a
/// failure (ClickHouse's error text: users, hosts, paths) goes to the log,
/// never to the client.
async fn ready(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(Duration::from_secs(2), warehouse::ping(&state.client)).await;
    let failure = match ping {
        Ok(Ok(())) => {
            return axum::Json(serde_json::json!({
                "status": "ready",
                "clickhouse": "reachable",
                "metrics": state.config.metrics.len(),
            }))
            .into_response();
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 2 s".to_string(),
    };
    let request_id = limits::request_id();
    tracing::warn!(request_id = %request_id, error = %failure, "not ready: ClickHouse does not answer");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "status": "not ready",
            "clickhouse": "unreachable",
            "request_id": request_id,
        })),
    )
        .into_response()
}

async fn prometheus(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

async fn openapi_doc(State(state): State<AppState>) -> axum::Json<Json> {
    axum::Json(openapi::document(&state.config))
}

async fn docs(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    let _ = headers;
    let mut items = String::new();
    for m in &state.config.metrics {
        let fields: Vec<&str> = m.group_by.iter().map(|g| g.name.as_str()).collect();
        let aggs: Vec<String> = m
            .plan
            .output_columns()
            .into_iter()
            .map(|c| c.name)
            .collect();
        items.push_str(&format!(
            "<li><code>{}</code> — {} window; group by {}; aggregations {}<br><code>GET /v1/metrics/{}/query?from=2026-11-22T10:00:00Z&amp;to=2026-11-22T11:00:00Z</code></li>\n",
            html_escape(&m.name),
            m.window.name(),
            html_escape(&fields.join(", ")),
            html_escape(&aggs.join(", ")),
            html_escape(&m.name)
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Strata API</title></head><body>\
         <h1>Strata API</h1><p>Batch view before the batch watermark, speed view after it. \
         Machine-readable description: <a href=\"/openapi.json\">/openapi.json</a>. Generated {}.</p>\
         <h2>Metrics</h2><ul>{items}</ul>\
         <h2>Endpoints</h2><ul><li><code>GET /v1/metrics</code></li>\
         <li><code>GET /v1/metrics/{{metric}}/query?from&amp;to[&amp;group_by][&amp;&lt;field&gt;=v…][&amp;granularity][&amp;top&amp;order_by][&amp;limit][&amp;format=json|csv|arrow]</code></li>\
         <li><code>GET /v1/metrics/{{metric}}/latest?&lt;field&gt;=&lt;value&gt;…</code></li>\
         <li><code>GET /healthz</code>, <code>GET /readyz</code>, <code>GET /metrics</code></li></ul></body></html>",
        format_rfc3339_ms(chrono::Utc::now().timestamp_millis())
    ))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
