//! API errors: a status and a message that says what to change.

use axum::http::StatusCode;
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
    /// The query took longer than serving.query_timeout (504).
    #[error("{0}")]
    Timeout(String),
    /// ClickHouse failed (503: the client may retry).
    #[error("the warehouse is unavailable: {0}")]
    Warehouse(#[from] WarehouseError),
    /// A bug (500).
    #[error("{0}")]
    Internal(String),
}

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
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Warehouse(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string(), "status": status.as_u16() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
