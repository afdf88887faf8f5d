//! API errors: a status and a message that says what to change.
//!
//! A 5xx answer never carries what went wrong inside (ClickHouse's error
//! text names tables, users, file paths): the client gets a generic message
//! and the request id, the log gets the full error under the same id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use strata_warehouse::WarehouseError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or unknown API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not read this metric (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown metric or route (404).
    #[error("{0}")]
    NotFound(String),
    /// `serving.max_concurrent_queries` queries are in flight (429).
    #[error("{0}")]
    Busy(String),
    /// The query took longer than serving.query_timeout (504).
    #[error("{0}")]
    Timeout(String),
    /// ClickHouse failed (503: the client may retry).
    #[error("the warehouse is unavailable: {0}")]
    Warehouse(#[from] WarehouseError),
    /// Not ready to answer yet, for a reason of Strata's own wording (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug (500).
    #[error("{0}")]
    Internal(String),
}

/// Seconds a client told 429 waits before retrying.
const RETRY_AFTER_SECONDS: &str = "1";

impl ApiError {
    /// A 400 with `message`.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(message.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Warehouse(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the message for 4xx and for 5xx worded by
    /// Strata itself, a generic one for failures of the warehouse or bugs.
    fn public_message(&self) -> String {
        match self {
            ApiError::Warehouse(_) => {
                "the warehouse is unavailable; retry later (the server log has the details under this request_id)".into()
            }
            ApiError::Internal(_) => {
                "internal error (the server log has the details under this request_id)".into()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = crate::limits::request_id();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), request_id = %request_id, error = %self, "request failed");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({
                "error": self.public_message(),
                "status": status.as_u16(),
                "request_id": request_id,
            })),
        )
            .into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response
    }
}
