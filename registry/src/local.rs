//! An in-memory schema registry serving the subset of Confluent's REST API
//! that Strata's client uses, with the documented JSON bodies and error
//! codes (40401 subject not found, 40402 version not found, 40403 schema
//! not found, 409 incompatible, 42201 invalid schema, 401 unauthorized).
//!
//! Subjects are BACKWARD compatible, the registry's default: a new version
//! must read data written with the latest one. Ids are global, and a schema
//! registered again (under any subject) keeps its id. The state outlives
//! [`LocalRegistry::start`]/[`RunningRegistry::stop`], so a test can take
//! the registry down and bring it back on the same address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use crate::client::{
    CONTENT_TYPE, INCOMPATIBLE, INVALID_SCHEMA, SCHEMA_NOT_FOUND, SUBJECT_NOT_FOUND,
    VERSION_NOT_FOUND,
};

#[derive(Default)]
struct Registry {
    /// Schema text by id - 1.
    schemas: Vec<String>,
    /// Canonical form by id - 1, for finding a schema registered again.
    canonical: Vec<String>,
    /// Ids of each subject's versions, in version order.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// An in-memory registry (see the module docs).
#[derive(Clone, Default)]
pub struct LocalRegistry {
    state: Arc<Mutex<Registry>>,
    basic_auth: Option<String>,
}

/// A registry listening on an address.
pub struct RunningRegistry {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRegistry {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes every connection (idle keep-alive ones
    /// too), so clients find it down.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Json(json!({ "error_code": code, "message": message.into() })),
    )
        .into_response()
}

fn ok(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Json(body),
    )
        .into_response()
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        LocalRegistry::default()
    }

    /// The same registry, requiring HTTP basic auth.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.basic_auth = Some(format!("Basic {token}"));
        self
    }

    /// Registers `schema` under `subject` directly (as a producer would
    /// through the API); returns its id or the error code and message.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, (u32, String)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        register(&mut state, subject, schema)
    }

    /// Listens on `addr` (port 0: any free port) until stopped.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<RunningRegistry> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/subjects", get(subjects))
            .route(
                "/subjects/{subject}/versions",
                get(versions).post(register_route),
            )
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post(compatibility),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authorize,
            ))
            .with_state(self.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "local schema registry failed");
            }
        });
        Ok(RunningRegistry { addr, stop, task })
    }
}

async fn authorize(
    State(registry): State<LocalRegistry>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(expected) = &registry.basic_auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return error(StatusCode::UNAUTHORIZED, 401, "Unauthorized");
        }
    }
    next.run(request).await
}

fn register(state: &mut Registry, subject: &str, schema: &str) -> Result<u32, (u32, String)> {
    let parsed =
        Schema::parse_str(schema).map_err(|e| (INVALID_SCHEMA, format!("Invalid schema: {e}")))?;
    let canonical = parsed.canonical_form();
    let versions = state.subjects.get(subject).cloned().unwrap_or_default();
    if let Some(&id) = versions
        .iter()
        .find(|&&id| state.canonical[id as usize - 1] == canonical)
    {
        return Ok(id);
    }
    if let Some(&latest) = versions.last() {
        let latest = Schema::parse_str(&state.schemas[latest as usize - 1])
            .map_err(|e| (INVALID_SCHEMA, e.to_string()))?;
        if let Err(e) = SchemaCompatibility::can_read(&latest, &parsed) {
            return Err((
                INCOMPATIBLE,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" (BACKWARD): {e}"
                ),
            ));
        }
    }
    let id = match state.canonical.iter().position(|c| *c == canonical) {
        Some(i) => i as u32 + 1,
        None => {
            state.schemas.push(schema.to_string());
            state.canonical.push(canonical);
            state.schemas.len() as u32
        }
    };
    state
        .subjects
        .entry(subject.to_string())
        .or_default()
        .push(id);
    Ok(id)
}

fn lock(registry: &LocalRegistry) -> std::sync::MutexGuard<'_, Registry> {
    registry.state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn schema_by_id(State(registry): State<LocalRegistry>, Path(id): Path<String>) -> Response {
    let state = lock(&registry);
    match id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| state.schemas.get(i))
    {
        Some(schema) => ok(json!({ "schema": schema })),
        None => error(StatusCode::NOT_FOUND, SCHEMA_NOT_FOUND, "Schema not found"),
    }
}

async fn subjects(State(registry): State<LocalRegistry>) -> Response {
    let state = lock(&registry);
    ok(json!(state.subjects.keys().collect::<Vec<_>>()))
}

async fn versions(State(registry): State<LocalRegistry>, Path(subject): Path<String>) -> Response {
    let state = lock(&registry);
    match state.subjects.get(&subject) {
        Some(ids) => ok(json!((1..=ids.len()).collect::<Vec<_>>())),
        None => subject_not_found(&subject),
    }
}

fn subject_not_found(subject: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        SUBJECT_NOT_FOUND,
        format!("Subject '{subject}' not found."),
    )
}

/// The index of `version` ("latest" or 1-based) among `ids`.
fn version_index(ids: &[u32], version: &str) -> Option<usize> {
    match version {
        "latest" | "-1" => ids.len().checked_sub(1),
        n => n
            .parse::<usize>()
            .ok()
            .and_then(|v| v.checked_sub(1))
            .filter(|&i| i < ids.len()),
    }
}

async fn version(
    State(registry): State<LocalRegistry>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    let state = lock(&registry);
    let Some(ids) = state.subjects.get(&subject) else {
        return subject_not_found(&subject);
    };
    match version_index(ids, &version) {
        Some(i) => ok(json!({
            "subject": subject,
            "id": ids[i],
            "version": i + 1,
            "schema": state.schemas[ids[i] as usize - 1],
        })),
        None => error(
            StatusCode::NOT_FOUND,
            VERSION_NOT_FOUND,
            format!("Version {version} not found."),
        ),
    }
}

fn avro_only(body: &SchemaBody) -> Option<Response> {
    match body.schema_type.as_deref() {
        None | Some("AVRO") => None,
        Some(other) => Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID_SCHEMA,
            format!("this registry holds AVRO schemas only, not {other}"),
        )),
    }
}

async fn register_route(
    State(registry): State<LocalRegistry>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Response {
    if let Some(refused) = avro_only(&body) {
        return refused;
    }
    let mut state = lock(&registry);
    match register(&mut state, &subject, &body.schema) {
        Ok(id) => ok(json!({ "id": id })),
        Err((code, message)) => {
            let status = if code == INCOMPATIBLE {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            error(status, code, message)
        }
    }
}

async fn compatibility(
    State(registry): State<LocalRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Json(body): Json<SchemaBody>,
) -> Response {
    if let Some(refused) = avro_only(&body) {
        return refused;
    }
    let state = lock(&registry);
    let Some(ids) = state.subjects.get(&subject) else {
        return subject_not_found(&subject);
    };
    let Some(i) = version_index(ids, &version) else {
        return error(
            StatusCode::NOT_FOUND,
            VERSION_NOT_FOUND,
            format!("Version {version} not found."),
        );
    };
    let candidate = match Schema::parse_str(&body.schema) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                INVALID_SCHEMA,
                format!("Invalid schema: {e}"),
            );
        }
    };
    let compatible = Schema::parse_str(&state.schemas[ids[i] as usize - 1])
        .map(|existing| SchemaCompatibility::can_read(&existing, &candidate).is_ok())
        .unwrap_or(false);
    ok(json!({ "is_compatible": compatible }))
}
