//! A client of the subset of Confluent's schema-registry REST API that
//! Strata uses (<https://docs.confluent.io/platform/current/schema-registry/develop/api.html>):
//!
//! - `GET /schemas/ids/{id}`: a writer schema by id;
//! - `GET /subjects/{subject}/versions` and `.../versions/latest`;
//! - `POST /subjects/{subject}/versions`: register (or find) a schema;
//! - `POST /compatibility/subjects/{subject}/versions/latest`.
//!
//! Errors keep the registry's `error_code` (40401 subject not found, 40403
//! schema not found, 409 incompatible, ...) and message. Tested against the
//! documented API (the in-memory [`crate::LocalRegistry`]), not against a
//! Confluent server.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use strata_schemas::config::SchemaRegistry;

/// The registry's media type.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Error code of an unknown subject.
pub const SUBJECT_NOT_FOUND: u32 = 40401;
/// Error code of an unknown version of a subject.
pub const VERSION_NOT_FOUND: u32 = 40402;
/// Error code of an unknown schema id.
pub const SCHEMA_NOT_FOUND: u32 = 40403;
/// Error code of a schema incompatible with the subject's latest version.
pub const INCOMPATIBLE: u32 = 409;
/// Error code of a schema that does not parse.
pub const INVALID_SCHEMA: u32 = 42201;

/// A failed registry request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or did not answer in time.
    #[error("schema registry {url} is unreachable: {reason}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("schema registry {url} answered HTTP {status}, error_code {code}: {message}")]
    Refused {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's `error_code` (the HTTP status when the body had none).
        code: u32,
        /// The registry's message.
        message: String,
    },
    /// The schema id names a schema of another type (JSON, PROTOBUF).
    #[error(
        "schema registry {url}: schema id {id} is a {schema_type} schema; Avro sources read AVRO schemas"
    )]
    NotAvro {
        /// The request's URL.
        url: String,
        /// The schema id.
        id: u32,
        /// Its `schemaType`.
        schema_type: String,
    },
    /// The answer is not the documented JSON.
    #[error("schema registry {url} answered something unreadable: {reason}")]
    Unreadable {
        /// The request's URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl RegistryError {
    /// The registry's `error_code`, when it answered with one.
    pub fn code(&self) -> Option<u32> {
        match self {
            RegistryError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One version of a subject.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The schema's global id.
    pub id: u32,
    /// The version within the subject.
    pub version: u32,
    /// The schema, as JSON text.
    pub schema: String,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A schema-registry client for one base URL.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    authorization: Option<String>,
    timeout: Duration,
    http: HttpsClient,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("basic_auth", &self.authorization.is_some())
            .finish()
    }
}

impl RegistryClient {
    /// A client of a source's registry.
    pub fn new(config: &SchemaRegistry) -> Self {
        let authorization = config.basic_auth.as_ref().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        RegistryClient {
            base: config.url.trim_end_matches('/').to_string(),
            authorization,
            timeout: Duration::from_millis(config.timeout.0),
            http: Client::builder(TokioExecutor::new()).build(connector()),
        }
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The writer schema registered as `id` (JSON text). Only Avro
    /// schemas are accepted: a JSON-Schema or Protobuf id is refused with
    /// its type.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let body = self.request(Method::GET, &url, None).await?;
        let found: SchemaById = parse(&url, &body)?;
        match found.schema_type.as_deref() {
            None | Some("AVRO") => Ok(found.schema),
            Some(other) => Err(RegistryError::NotAvro {
                url,
                id,
                schema_type: other.to_string(),
            }),
        }
    }

    /// Registers `schema` under `subject` (or finds it, when it is
    /// registered already) and returns its id. An incompatible schema is
    /// refused with error code 409.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, path_segment(subject));
        let request = serde_json::json!({ "schema": schema }).to_string();
        let body = self.request(Method::POST, &url, Some(request)).await?;
        Ok(parse::<Registered>(&url, &body)?.id)
    }

    /// The versions of `subject`.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, path_segment(subject));
        let body = self.request(Method::GET, &url, None).await?;
        parse(&url, &body)
    }

    /// The latest version of `subject`.
    pub async fn latest(&self, subject: &str) -> Result<SubjectVersion, RegistryError> {
        let url = format!(
            "{}/subjects/{}/versions/latest",
            self.base,
            path_segment(subject)
        );
        let body = self.request(Method::GET, &url, None).await?;
        parse(&url, &body)
    }

    /// Whether `schema` is compatible with the latest version of `subject`
    /// under the subject's compatibility level (the registry decides).
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest",
            self.base,
            path_segment(subject)
        );
        let request = serde_json::json!({ "schema": schema }).to_string();
        let body = self.request(Method::POST, &url, Some(request)).await?;
        Ok(parse::<Compatibility>(&url, &body)?.is_compatible)
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<Bytes, RegistryError> {
        let unreachable = |reason: String| RegistryError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::ACCEPT, CONTENT_TYPE);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, CONTENT_TYPE);
        }
        if let Some(auth) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, RegistryError>((status, bytes))
        };
        let answered = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))
            .and_then(|r| r);
        let (status, bytes) = match answered {
            Ok(answer) => answer,
            Err(e) => {
                crate::metrics::unreachable();
                return Err(e);
            }
        };
        crate::metrics::request(status.as_u16());
        if status == StatusCode::OK {
            return Ok(bytes);
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (e.error_code, e.message),
            Err(_) => (
                u32::from(status.as_u16()),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            ),
        };
        Err(RegistryError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            code,
            message,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Unreadable {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// A subject as one URL path segment (subjects may hold `/`, `?`, spaces).
fn path_segment(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error and its causes ("connection refused" sits two levels down
/// in hyper's errors).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// http and https (rustls with the system's roots).
fn connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_path_segment() {
        assert_eq!(path_segment("page_views-value"), "page_views-value");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
    }
}
