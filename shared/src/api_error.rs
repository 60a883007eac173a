//! The one error type every handler answers with (product.md §2):
//! `{"error": {"code": "invalid_signature", "message": "…", "field": "…"}}`.
//!
//! Internal causes are logged with their chain; the client sees only the code and a clean message.
//!
//! This module sits at the bottom of the crate: it depends on no other module of it. The modules
//! whose errors reach clients (store, queue, install …) convert them into an [`ApiError`] themselves.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The largest request body accepted (product.md §2); larger ones get 413 `payload_too_large`
/// ([`ApiError::body_too_large`]).
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// The field a deserialisation error is about, as a dot path (`mappings[2].target`, `record.id`):
/// serde's `path` ends at an unknown or malformed field but stops at a missing field's parent,
/// whose name only the `message` holds. `"."` means the document itself.
pub fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match missing {
        Some(name) if path == "." => name.to_owned(),
        Some(name) => format!("{path}.{name}"),
        None => path.to_owned(),
    }
}

/// Every `error.code` the API answers with: the one definition of each (product.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or missing input; `field` names it.
    InvalidField,
    /// The body is not JSON.
    InvalidJson,
    /// The body could not be read or is not of the expected form.
    InvalidBody,
    /// The query string is malformed.
    InvalidQuery,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The body exceeds the limit.
    PayloadTooLarge,
    /// Missing or bad credentials.
    Unauthorized,
    /// A webhook's signature or shared secret is missing or does not match.
    InvalidSignature,
    /// No such tenant or route.
    NotFound,
    /// The route does not take this method.
    MethodNotAllowed,
    /// The state changed under the request (a compare-and-set failed); read again and retry.
    Conflict,
    /// The tenant has not installed the Klaviyo app (or uninstalled it).
    NotInstalled,
    /// Klaviyo refused the tenant's refresh token: install again.
    ReauthorizationRequired,
    /// A provisioning or uninstall of the tenant is running.
    ProvisioningInProgress,
    /// A provisioning step failed; the message names it.
    ProvisioningFailed,
    /// An uninstall step failed; nothing was changed locally.
    UninstallFailed,
    /// Klaviyo refused a request made on the caller's behalf.
    KlaviyoError,
    /// A task attempt failed; Cloud Tasks should retry it.
    RetryLater,
    /// A dependency (store, queue, remote) is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected state.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidField => "invalid_field",
            Self::InvalidJson => "invalid_json",
            Self::InvalidBody => "invalid_body",
            Self::InvalidQuery => "invalid_query",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::InvalidSignature => "invalid_signature",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::NotInstalled => "not_installed",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::ProvisioningInProgress => "provisioning_in_progress",
            Self::ProvisioningFailed => "provisioning_failed",
            Self::UninstallFailed => "uninstall_failed",
            Self::KlaviyoError => "klaviyo_error",
            Self::RetryLater => "retry_later",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP error with a machine-readable code, a message and optionally the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: ErrorCode,
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
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
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
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, message).with_field(field)
    }

    /// 413 `payload_too_large`: the body is over [`BODY_LIMIT_BYTES`].
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "request body exceeds the limit of {BODY_LIMIT_BYTES} bytes ({} KiB)",
                BODY_LIMIT_BYTES / 1024
            ),
        )
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 503 `unavailable`: a dependency failed; the caller should retry. The cause is logged here.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "a dependency is unavailable; retry later",
        )
    }

    /// 500 `internal`: a bug or an unexpected state. The cause is logged here.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
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

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match &rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                message,
            )
            .with_field("content-type"),
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, message)
            }
            JsonRejection::JsonDataError(_) => {
                let mut error = Self::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidField,
                    message.clone(),
                );
                error.field = json_data_error_field(&message);
                error
            }
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            ),
            _ => Self::new(rejection.status(), ErrorCode::InvalidBody, message),
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
            ErrorCode::InvalidQuery,
            rejection.body_text(),
        )
    }
}

/// Parses a request body that must be a JSON object into `T`: not UTF-8, not JSON or not an
/// object → 400 `invalid_json`; the wrong shape → 400 `invalid_field` naming the path
/// (`record.id`, `id`). Bytes serde would skip unread (an ignored field's string) are checked
/// too, and a JSON array is not taken for a struct's fields in order.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    let not_an_object = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            format!("the body is not a JSON object: {why}"),
        )
    };
    let text = std::str::from_utf8(body).map_err(|error| not_an_object(&error.to_string()))?;
    if !text.trim_start().starts_with('{') {
        return Err(not_an_object("it must start with `{`"));
    }
    // Parsed from the checked text, so serde does not validate the UTF-8 a second time. The fast
    // path; only a body that fails is parsed again, tracking the path to name the field.
    serde_json::from_str(text).or_else(|_| parse_json_naming_the_field(text))
}

/// [`parse_json`]'s slow path: the same parse with the path tracked, for the error.
fn parse_json_naming_the_field<'de, T: serde::Deserialize<'de>>(
    body: &'de str,
) -> Result<T, ApiError> {
    let not_json = |error: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            format!("the body is not JSON: {error}"),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return not_json(&inner);
        }
        let message = inner.to_string();
        let field = match field_of(&path, &message) {
            root if root == "." => "body".to_owned(),
            field => field,
        };
        ApiError::invalid_field(field, message)
    })?;
    deserializer.end().map_err(|error| not_json(&error))?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        dry_run: bool,
    }

    fn code_of(result: Result<Body, ApiError>) -> (StatusCode, ErrorCode, Option<String>) {
        let error = result.expect_err("refused");
        (error.status, error.code, error.field)
    }

    #[test]
    fn a_body_must_be_a_json_object_of_text() {
        let parsed: Body = parse_json(br#" {"since": null, "dry_run": true}"#).unwrap();
        assert!(parsed.dry_run && parsed.since.is_none());
        for body in [
            &b"[null, true]"[..],
            b"\"a string\"",
            b"42",
            b"[[[[]]]]",
            b"{\"since\": null, \"note\": \"\xff\xfe\"}",
            b"\xff{}",
        ] {
            let (status, code, _) = code_of(parse_json(body));
            assert_eq!(
                (status, code),
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let (_, code, field) = code_of(parse_json(br#"{"dry_run": "yes"}"#));
        assert_eq!(
            (code, field.as_deref()),
            (ErrorCode::InvalidField, Some("dry_run"))
        );
    }

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
            serde_json::json!({"error": {"code": ErrorCode::InvalidField, "message": "amount must be a number", "field": "data.amount"}})
        );
        let (status, body) = json_of(ApiError::unauthorized("bad signature")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].get("field").is_none());
    }

    #[tokio::test]
    async fn an_unavailable_dependency_is_a_503_without_internals() {
        let cause = std::io::Error::other("connection refused to 10.0.0.1");
        let (status, body) = json_of(ApiError::unavailable(&cause)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(!body.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn codes_serialize_as_their_text() {
        for code in [
            ErrorCode::InvalidField,
            ErrorCode::ProvisioningInProgress,
            ErrorCode::RetryLater,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
