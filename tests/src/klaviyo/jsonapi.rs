//! JSON:API as Klaviyo speaks it: the error shape, documents, cursor paging with
//! `links.next`/`prev`, and the `filter` mini-language (`equals(field,"v")`,
//! `any(field,["a","b"])`, comma = AND).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// The JSON:API media type.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";

/// Where an error points: a body member or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorSource {
    /// A JSON pointer into the request body, e.g. `/data/attributes/email`.
    Pointer(String),
    /// A query parameter, e.g. `filter`.
    Parameter(String),
}

/// One Klaviyo API error, rendered as `{"errors":[{id,status,code,title,detail,source,meta}]}`.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorParts>);

#[derive(Debug, Clone)]
struct ErrorParts {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    source: Option<ErrorSource>,
    meta: Value,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, title: &'static str, detail: String) -> Self {
        Self(Box::new(ErrorParts {
            status,
            code,
            title,
            detail,
            source: None,
            meta: json!({}),
            retry_after: None,
        }))
    }

    /// 400 `invalid` pointing at a body member.
    pub fn invalid(detail: impl Into<String>, pointer: &str) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Invalid input.",
            detail.into(),
        );
        error.0.source = Some(ErrorSource::Pointer(pointer.into()));
        error
    }

    /// 400 `invalid` pointing at a query parameter.
    pub fn invalid_parameter(detail: impl Into<String>, parameter: &str) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Invalid input.",
            detail.into(),
        );
        error.0.source = Some(ErrorSource::Parameter(parameter.into()));
        error
    }

    /// 401 `authentication_failed`.
    pub fn authentication_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "Incorrect authentication credentials.",
            detail.into(),
        )
    }

    /// 403 `permission_denied`.
    pub fn permission_denied(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "You do not have permission to perform this action.",
            detail.into(),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found.",
            detail.into(),
        )
    }

    /// 409 `duplicate_profile` with `meta.duplicate_profile_id`.
    pub fn duplicate_profile(duplicate_profile_id: &str) -> Self {
        let mut error = Self::new(
            StatusCode::CONFLICT,
            "duplicate_profile",
            "Conflict.",
            "A profile already exists with one of these identifiers.".into(),
        );
        error.0.meta = json!({ "duplicate_profile_id": duplicate_profile_id });
        error
    }

    /// 413 for bodies over Klaviyo's limits.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "Request entity too large.",
            detail.into(),
        )
    }

    /// 429 `throttled` with `Retry-After`.
    pub fn throttled(retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Request was throttled.",
            format!("Request was throttled. Expected available in {retry_after} seconds."),
        );
        error.0.retry_after = Some(retry_after);
        error
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// The error document.
    pub fn body(&self) -> Value {
        let source = match &self.0.source {
            Some(ErrorSource::Pointer(p)) => json!({ "pointer": p }),
            Some(ErrorSource::Parameter(p)) => json!({ "parameter": p }),
            None => json!({}),
        };
        json!({ "errors": [{
            "id": uuid::Uuid::new_v4().to_string(),
            "status": self.0.status.as_u16(),
            "code": self.0.code,
            "title": self.0.title,
            "detail": self.0.detail,
            "source": source,
            "meta": self.0.meta,
        }]})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = document(self.0.status, &self.body());
        if let Some(seconds) = self.0.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON:API response with `status`.
pub fn document(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Renders an injected fault (see [`crate::sim::instrument`]) with Klaviyo's error body.
pub fn render_fault(status: StatusCode, retry_after: Option<u64>) -> Response {
    let mut error = match status.as_u16() {
        400 => ApiError::invalid("Injected fault.", "/data"),
        401 => ApiError::authentication_failed("Injected fault."),
        403 => ApiError::permission_denied("Injected fault."),
        404 => ApiError::not_found("Injected fault."),
        429 => ApiError::throttled(retry_after.unwrap_or(1)),
        _ => ApiError::new(
            status,
            "error",
            "A server error occurred.",
            "Injected fault.".into(),
        ),
    };
    error.0.status = status;
    error.0.retry_after = retry_after.or(error.0.retry_after);
    error.into_response()
}

/// The request's query parameters, in order (names keep their brackets: `page[size]`).
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string.
    pub fn parse(query: &str) -> Self {
        Self(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `additional-fields[resource]` asks for `field`.
    pub fn wants_field(&self, resource: &str, field: &str) -> bool {
        self.get(&format!("additional-fields[{resource}]"))
            .is_some_and(|v| v.split(',').any(|f| f.trim() == field))
    }

    /// The parsed `filter` (empty when absent), restricted to `allowed` fields.
    pub fn filters(&self, allowed: &[&str]) -> Result<Vec<Filter>, ApiError> {
        self.get("filter")
            .map_or(Ok(Vec::new()), |f| parse_filter(f, allowed))
    }
}

/// Where the request was sent: used to build absolute `links`.
#[derive(Debug, Clone)]
pub struct Here {
    /// `http://host:port`.
    pub origin: String,
    /// The path.
    pub path: String,
    /// The query parameters.
    pub params: Params,
}

impl Here {
    /// An absolute link to `path` on this simulator.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// A relationship's `links` as Klaviyo writes them, for the resource at `resource` (e.g.
    /// `/api/profiles/01H…/`): `self` is the relationship, `related` the related resources.
    pub fn relationship_links(&self, resource: &str, name: &str) -> Value {
        json!({
            "self": self.link(&format!("{resource}relationships/{name}/")),
            "related": self.link(&format!("{resource}{name}/")),
        })
    }

    /// This URL with `page[cursor]` replaced.
    fn with_cursor(&self, cursor: Option<&str>) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.params.0 {
            if k != "page[cursor]" {
                serializer.append_pair(k, v);
            }
        }
        if let Some(cursor) = cursor {
            serializer.append_pair("page[cursor]", cursor);
        }
        let query = serializer.finish();
        if query.is_empty() {
            format!("{}{}", self.origin, self.path)
        } else {
            format!("{}{}?{query}", self.origin, self.path)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Here {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        Ok(Self {
            origin: format!("http://{host}"),
            path: parts.uri.path().to_owned(),
            params: Params::parse(parts.uri.query().unwrap_or_default()),
        })
    }
}

/// One page of a collection and its `links`.
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// `{"self","next","prev"}`; `next`/`prev` are `null` at the ends.
    pub links: Value,
}

/// Cuts `all` into the page `here` asks for (`page[size]` default `default_size`, at most
/// `max_size`; `page[cursor]` an opaque cursor from a previous `links.next`).
pub fn paginate<T: Clone>(
    all: &[T],
    here: &Here,
    default_size: usize,
    max_size: usize,
) -> Result<Page<T>, ApiError> {
    let size = match here.params.get("page[size]") {
        None => default_size,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max_size).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_parameter(
                    format!("page[size] must be an integer from 1 to {max_size}."),
                    "page[size]",
                ));
            }
        },
    };
    let offset = match here.params.get("page[cursor]") {
        None => 0,
        Some(cursor) => decode_cursor(cursor)
            .ok_or_else(|| ApiError::invalid_parameter("Invalid page cursor.", "page[cursor]"))?,
    };
    let start = offset.min(all.len());
    let end = (start + size).min(all.len());
    let next = (end < all.len()).then(|| here.with_cursor(Some(&encode_cursor(end))));
    let prev = (start > 0).then(|| {
        let back = start.saturating_sub(size);
        here.with_cursor((back > 0).then(|| encode_cursor(back)).as_deref())
    });
    Ok(Page {
        items: all[start..end].to_vec(),
        links: json!({ "self": here.with_cursor(here.params.get("page[cursor]")), "next": next, "prev": prev }),
    })
}

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// One condition of a `filter`: `field` equals one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The field name, e.g. `email`.
    pub field: String,
    /// One value for `equals`, several for `any`.
    pub values: Vec<String>,
}

impl Filter {
    /// Whether `value` satisfies the condition (`None` never does).
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.values.iter().any(|x| x == v))
    }
}

/// Parses `equals(field,"v")` / `any(field,["a","b"])` conditions joined by top-level commas.
pub fn parse_filter(filter: &str, allowed: &[&str]) -> Result<Vec<Filter>, ApiError> {
    let bad = |why: &str| ApiError::invalid_parameter(format!("Invalid filter: {why}."), "filter");
    split_top_level(filter)
        .into_iter()
        .map(|condition| {
            let condition = condition.trim();
            let (op, rest) = condition
                .split_once('(')
                .ok_or_else(|| bad("expected operator(field,value)"))?;
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| bad("missing closing parenthesis"))?;
            let (field, value) = inner
                .split_once(',')
                .ok_or_else(|| bad("expected a field and a value"))?;
            let field = field.trim();
            if !allowed.contains(&field) {
                return Err(bad(&format!("'{field}' cannot be filtered")));
            }
            let values = match op.trim() {
                "equals" => vec![parse_value(value.trim()).ok_or_else(|| bad("bad value"))?],
                "any" => {
                    let list = value
                        .trim()
                        .strip_prefix('[')
                        .and_then(|v| v.strip_suffix(']'))
                        .ok_or_else(|| bad("any() takes a [list]"))?;
                    split_top_level(list)
                        .into_iter()
                        .map(|v| parse_value(v.trim()).ok_or_else(|| bad("bad value")))
                        .collect::<Result<Vec<_>, _>>()?
                }
                other => return Err(bad(&format!("operator '{other}' is not supported"))),
            };
            Ok(Filter {
                field: field.to_owned(),
                values,
            })
        })
        .collect()
}

/// Splits on commas outside quotes, parentheses and brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quoted, mut escaped, mut start) =
        (Vec::new(), 0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A quoted string (JSON escapes) or a bare token.
fn parse_value(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()
    } else if raw.is_empty() {
        None
    } else {
        Some(raw.to_owned())
    }
}

/// A JSON request body, with parse failures answered as Klaviyo's 400 `invalid`.
pub struct Doc<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Doc<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::invalid(format!("Unreadable body: {e}"), "/data"))?;
        serde_json::from_slice(&bytes)
            .map(Doc)
            .map_err(|e| ApiError::invalid(format!("Invalid JSON:API document: {e}"), "/data"))
    }
}

/// `{"type","id"}` — a resource identifier in relationships.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceId {
    /// The resource type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id.
    pub id: String,
}

/// `{"data": …}` — a relationship or document wrapper.
#[derive(Debug, Clone, Deserialize)]
pub struct Data<T> {
    /// The wrapped value.
    pub data: T,
}

/// Checks a resource's `type`.
pub fn expect_type(kind: &str, expected: &str, pointer: &str) -> Result<(), ApiError> {
    if kind == expected {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("Expected type '{expected}', got '{kind}'."),
            pointer,
        ))
    }
}

/// For `Option<Option<T>>` fields: absent → `None`, `null` → `Some(None)`, value → `Some(Some)`.
/// Use with `#[serde(default, deserialize_with = "present")]`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_equals_any_and_conjunctions() {
        let filters = parse_filter(
            r#"equals(email,"a,b@x.com"),any(external_id,["x","y\"z"])"#,
            &["email", "external_id"],
        )
        .unwrap();
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].values, vec!["a,b@x.com"]);
        assert_eq!(filters[1].field, "external_id");
        assert_eq!(filters[1].values, vec!["x", "y\"z"]);
        assert!(parse_filter(r#"equals(first_name,"x")"#, &["email"]).is_err());
        assert!(parse_filter(r#"greater-than(email,"x")"#, &["email"]).is_err());
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(40)), Some(40));
        assert_eq!(decode_cursor("garbage!"), None);
    }
}
