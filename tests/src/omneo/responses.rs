//! Omneo's Laravel response shapes: `{"data":…}` envelopes, paged lists, `{"message"}` errors,
//! validation errors (422 `{"message","errors":{field:[…]}}`), request-body validation, and the
//! `YYYY-MM-DD HH:MM:SS` date-times.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// An API error rendered the way Omneo (Laravel) renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// 400: the body is not a JSON object.
    BadRequest(String),
    /// 401: unknown tenant, or missing/unknown bearer token.
    Unauthenticated,
    /// 404 with a message.
    NotFound(String),
    /// 422: field → messages.
    Validation(BTreeMap<String, Vec<String>>),
}

impl ApiError {
    /// A 422 with one message on one field.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(BTreeMap::from([(field.to_owned(), vec![message.into()])]))
    }

    /// The 422 Laravel's `unique` rule answers.
    pub(crate) fn taken(field: &str) -> Self {
        Self::invalid(
            field,
            format!("The {} has already been taken.", human(field)),
        )
    }

    /// A 404 for a missing resource.
    pub(crate) fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found."))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(message) => message_response(StatusCode::BAD_REQUEST, &message),
            Self::Unauthenticated => message_response(StatusCode::UNAUTHORIZED, "Unauthenticated."),
            Self::NotFound(message) => message_response(StatusCode::NOT_FOUND, &message),
            Self::Validation(errors) => {
                let first = errors
                    .values()
                    .flatten()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "The given data was invalid.".into());
                let count = errors.values().map(Vec::len).sum::<usize>();
                let message = if count > 1 {
                    format!(
                        "{first} (and {} more error{})",
                        count - 1,
                        plural(count - 1)
                    )
                } else {
                    first
                };
                let body = json!({ "message": message, "errors": errors });
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn message_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// Renders an injected fault the way Omneo answers that status (`{"message"}`, plus `Retry-After`).
pub(crate) fn render_injected(status: StatusCode, retry_after: Option<u64>) -> Response {
    let message = match status {
        StatusCode::UNAUTHORIZED => "Unauthenticated.",
        StatusCode::FORBIDDEN => "This action is unauthorized.",
        StatusCode::NOT_FOUND => "Not Found",
        StatusCode::TOO_MANY_REQUESTS => "Too Many Attempts.",
        StatusCode::SERVICE_UNAVAILABLE => "Service Unavailable",
        s if s.is_server_error() => "Server Error",
        s => s.canonical_reason().unwrap_or("Error"),
    };
    let mut response = message_response(status, message);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `{"data": value}` with 200.
pub(crate) fn data<T: Serialize>(value: T) -> Response {
    Json(json!({ "data": value })).into_response()
}

/// `{"data": value}` with 201.
pub(crate) fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(json!({ "data": value }))).into_response()
}

/// 204 with an empty body.
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Laravel's default page size.
const DEFAULT_PAGE_SIZE: usize = 15;
/// The largest page the simulator serves.
const MAX_PAGE_SIZE: usize = 100;

/// `page[size]` and `page[number]` of a list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRequest {
    size: usize,
    number: usize,
}

impl PageRequest {
    /// Reads `page[size]` / `page[number]` (422 on a non-number or zero, and on a size above
    /// [`MAX_PAGE_SIZE`]).
    pub(crate) fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let read = |key: &str, default: usize| -> Result<usize, ApiError> {
            match query.get(key) {
                None => Ok(default),
                Some(raw) => raw.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::invalid(key, format!("The {key} field must be at least 1."))
                }),
            }
        };
        let size = read("page[size]", DEFAULT_PAGE_SIZE)?;
        if size > MAX_PAGE_SIZE {
            return Err(ApiError::invalid(
                "page[size]",
                format!("The page[size] field must not be greater than {MAX_PAGE_SIZE}."),
            ));
        }
        Ok(Self {
            size,
            number: read("page[number]", 1)?,
        })
    }

    /// Answers one page of `items` as `{"data","links","meta"}`; links keep the other query
    /// parameters and point at this simulator (from the `Host` header).
    pub(crate) fn respond<T: Serialize>(
        self,
        items: Vec<T>,
        headers: &HeaderMap,
        path: &str,
        query: &HashMap<String, String>,
    ) -> Response {
        let total = items.len();
        let last_page = total.div_ceil(self.size).max(1);
        let page: Vec<T> = items
            .into_iter()
            .skip((self.number - 1) * self.size)
            .take(self.size)
            .collect();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let link = |number: usize| -> Value {
            let mut params: Vec<(String, String)> = query
                .iter()
                .filter(|(k, _)| k.as_str() != "page[number]")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.push(("page[number]".into(), number.to_string()));
            params.sort();
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish();
            Value::String(format!("http://{host}{path}?{query}"))
        };
        let from = (!page.is_empty()).then(|| (self.number - 1) * self.size + 1);
        let to = from.map(|f| f + page.len() - 1);
        let body = json!({
            "data": page,
            "links": {
                "first": link(1),
                "last": link(last_page),
                "prev": if self.number > 1 { link(self.number - 1) } else { Value::Null },
                "next": if self.number < last_page { link(self.number + 1) } else { Value::Null },
            },
            "meta": {
                "current_page": self.number,
                "from": from,
                "last_page": last_page,
                "path": format!("http://{host}{path}"),
                "per_page": self.size,
                "to": to,
                "total": total,
            },
        });
        Json(body).into_response()
    }
}

/// Parses a request body that must be a JSON object (an empty body is an empty object, as
/// Laravel treats it).
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::BadRequest(
            "The request body must be a JSON object.".into(),
        )),
    }
}

/// "email_promo" → "email promo", as Laravel names fields in messages.
fn human(field: &str) -> String {
    field.replace('_', " ")
}

/// Collects Laravel-style validation errors over one JSON body.
#[derive(Debug, Default)]
pub(crate) struct Validator {
    errors: BTreeMap<String, Vec<String>>,
}

impl Validator {
    /// Records a message on a field.
    pub(crate) fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// "The {field} field is required."
    pub(crate) fn fail_required(&mut self, field: &str) {
        self.fail(field, format!("The {} field is required.", human(field)));
    }

    /// "The selected {field} is invalid."
    pub(crate) fn fail_selected(&mut self, field: &str) {
        self.fail(field, format!("The selected {} is invalid.", human(field)));
    }

    /// "The {field} field is prohibited." (a field the endpoint does not take).
    pub(crate) fn fail_prohibited(&mut self, field: &str) {
        self.fail(field, format!("The {} field is prohibited.", human(field)));
    }

    /// Records the errors of a nested object's validation under `{prefix}.{field}`, as Laravel
    /// names nested fields (`comms.sms_promo`).
    pub(crate) fn nest(&mut self, prefix: &str, error: ApiError) {
        match error {
            ApiError::Validation(errors) => {
                for (field, messages) in errors {
                    for message in messages {
                        self.fail(&format!("{prefix}.{field}"), message);
                    }
                }
            }
            other => self.fail(prefix, other.to_string()),
        }
    }

    /// A required non-empty string.
    pub(crate) fn required_string(
        &mut self,
        body: &Map<String, Value>,
        field: &str,
    ) -> Option<String> {
        match body.get(field) {
            None | Some(Value::Null) => {
                self.fail_required(field);
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail_required(field);
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(
                    field,
                    format!("The {} field must be a string.", human(field)),
                );
                None
            }
        }
    }

    /// An optional, nullable string: `None` when absent, `Some(None)` when null.
    pub(crate) fn nullable_string(
        &mut self,
        body: &Map<String, Value>,
        field: &str,
    ) -> Option<Option<String>> {
        match body.get(field)? {
            Value::Null => Some(None),
            Value::String(s) if s.is_empty() => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            _ => {
                self.fail(
                    field,
                    format!("The {} field must be a string.", human(field)),
                );
                None
            }
        }
    }

    /// An optional, nullable boolean: `None` when absent, `Some(None)` when null.
    pub(crate) fn nullable_bool(
        &mut self,
        body: &Map<String, Value>,
        field: &str,
    ) -> Option<Option<bool>> {
        match body.get(field)? {
            Value::Null => Some(None),
            Value::Bool(b) => Some(Some(*b)),
            _ => {
                self.fail(
                    field,
                    format!("The {} field must be true or false.", human(field)),
                );
                None
            }
        }
    }

    /// An optional, nullable date-time (`Y-m-d H:i:s`, ISO 8601, or `Y-m-d`), normalised to
    /// `YYYY-MM-DD HH:MM:SS` UTC.
    pub(crate) fn nullable_datetime(
        &mut self,
        body: &Map<String, Value>,
        field: &str,
    ) -> Option<Option<String>> {
        match body.get(field)? {
            Value::Null => Some(None),
            Value::String(s) => match parse_datetime(s) {
                Some(normalised) => Some(Some(normalised)),
                None => {
                    self.fail(
                        field,
                        format!("The {} field must be a valid date.", human(field)),
                    );
                    None
                }
            },
            _ => {
                self.fail(
                    field,
                    format!("The {} field must be a valid date.", human(field)),
                );
                None
            }
        }
    }

    /// A required number.
    pub(crate) fn required_number(
        &mut self,
        body: &Map<String, Value>,
        field: &str,
    ) -> Option<f64> {
        match body.get(field) {
            None | Some(Value::Null) => {
                self.fail_required(field);
                None
            }
            Some(value) => match number(value) {
                Some(n) => Some(n),
                None => {
                    self.fail(
                        field,
                        format!("The {} field must be a number.", human(field)),
                    );
                    None
                }
            },
        }
    }

    /// Ends validation with the validated value: 422 with every collected error, if any.
    pub(crate) fn finish_with<T>(self, value: Option<T>) -> Result<T, ApiError> {
        self.finish()?;
        value.ok_or_else(|| {
            ApiError::Validation(BTreeMap::from([(
                "body".to_owned(),
                vec!["The given data was invalid.".to_owned()],
            )]))
        })
    }

    /// Ends validation: 422 with every collected error, if any.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// A JSON number, or a string holding one (Laravel's `numeric` accepts both).
pub(crate) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Now, as Omneo writes date-times: `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn now() -> String {
    format_timestamp(jiff::Timestamp::now())
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn format_timestamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses `Y-m-d H:i:s` (taken as UTC), ISO 8601 with an offset, ISO 8601 without one (UTC), or
/// a bare `Y-m-d`; answers `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn parse_datetime(text: &str) -> Option<String> {
    let text = text.trim();
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Some(format_timestamp(at));
    }
    let civil = text.parse::<jiff::civil::DateTime>().ok().or_else(|| {
        text.parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    })?;
    Some(civil.strftime("%Y-%m-%d %H:%M:%S").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_normalised_to_laravel_format_in_utc() {
        assert_eq!(
            parse_datetime("2024-03-01 10:20:30").as_deref(),
            Some("2024-03-01 10:20:30")
        );
        assert_eq!(
            parse_datetime("2024-03-01T10:20:30Z").as_deref(),
            Some("2024-03-01 10:20:30")
        );
        assert_eq!(
            parse_datetime("2024-03-01T20:20:30+10:00").as_deref(),
            Some("2024-03-01 10:20:30")
        );
        assert_eq!(
            parse_datetime("2024-03-01").as_deref(),
            Some("2024-03-01 00:00:00")
        );
        assert_eq!(parse_datetime("yesterday"), None);
    }
}
