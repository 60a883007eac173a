//! The one error type every handler answers with (product.md §2):
//! `{"error": {"code": "invalid_signature", "message": "…", "field": "…"}}`.
//!
//! Internal causes are logged with their chain; the client sees only the code and a clean message.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::queue::QueueError;
use crate::store::StoreError;

/// An HTTP error with a machine-readable code, a message and optionally the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code, e.g. `invalid_field`.
    pub code: &'static str,
    /// Human-readable explanation (never a secret, never an internal error chain).
    pub message: String,
    /// The request field at fault, when there is one (a JSON path like `data.amount`).
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `invalid_field`: malformed or missing input, naming the field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`: a dependency failed; the caller should retry. The cause is logged here.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a dependency is unavailable; retry later",
        )
    }

    /// 500 `internal`: a bug or an unexpected state. The cause is logged here.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

/// Displays an error with its whole `source()` chain, `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::unavailable(&error),
            _ => Self::internal(&error),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Unavailable(_) | QueueError::QueueNotFound(_) => Self::unavailable(&error),
            QueueError::Rejected(_) => Self::internal(&error),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match &rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            )
            .with_field("content-type"),
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
            }
            JsonRejection::JsonDataError(_) => {
                let mut error =
                    Self::new(StatusCode::BAD_REQUEST, "invalid_field", message.clone());
                error.field = json_data_error_field(&message);
                error
            }
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            _ => Self::new(rejection.status(), "invalid_body", message),
        }
    }
}

/// The field a JSON data error is about: the unknown field's name, or serde's path to the bad
/// value (`Failed to deserialize …: data.amount: invalid type …` → `data.amount`).
fn json_data_error_field(message: &str) -> Option<String> {
    if let Some((_, rest)) = message.split_once("unknown field `") {
        return rest.split('`').next().map(str::to_owned);
    }
    if let Some((_, rest)) = message.split_once("missing field `") {
        return rest.split('`').next().map(str::to_owned);
    }
    let detail = message.split_once(": ").map(|(_, rest)| rest)?;
    let (path, _) = detail.split_once(": ")?;
    (!path.contains(' ') && path != ".").then(|| path.to_owned())
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn json_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_render_the_contract_shape() {
        let (status, body) = json_of(ApiError::invalid_field(
            "data.amount",
            "amount must be a number",
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "invalid_field", "message": "amount must be a number", "field": "data.amount"}})
        );
        let (status, body) = json_of(ApiError::unauthorized("bad signature")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].get("field").is_none());
    }

    #[tokio::test]
    async fn store_outage_is_a_503_without_internals() {
        let error: ApiError =
            StoreError::Unavailable(anyhow::anyhow!("connection refused to 10.0.0.1")).into();
        let (status, body) = json_of(error).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.to_string().contains("10.0.0.1"));
    }
}
