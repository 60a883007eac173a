//! JSON:API as Klaviyo speaks it: the error shape, documents, cursor paging with
//! `links.next`/`prev` (by position, or by key where items may be added while a reader pages),
//! and the `filter` mini-language (`equals(field,"v")`, `any(field,["a","b"])` on text fields;
//! `greater-than(field,2026-11-30T00:00:00Z)`, `greater-or-equal(…)`, `less-than(…)` on datetime
//! fields, the datetime unquoted as Klaviyo writes it; comma = AND).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
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

    /// The parsed `filter` (empty when absent), restricted to the `text` fields (`equals`,
    /// `any`) and the `datetimes` fields (`greater-than`, `greater-or-equal`, `less-than`).
    pub fn filters(&self, text: &[&str], datetimes: &[&str]) -> Result<Vec<Filter>, ApiError> {
        self.get("filter")
            .map_or(Ok(Vec::new()), |f| parse_filter(f, text, datetimes))
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
    let size = page_size(here, default_size, max_size)?;
    let offset = match here.params.get("page[cursor]") {
        None => 0,
        Some(cursor) => decode_cursor(cursor).ok_or_else(bad_cursor)?,
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

/// Where a keyed cursor puts a page: just after the item with this key, or ending with it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeyCursor<K> {
    /// `links.next`: the items after the key.
    After(K),
    /// `links.prev`: the items up to and including the key.
    UpTo(K),
}

/// Like [`paginate`], for `sorted` (ascending by `key`, one item per key) that may grow while a
/// reader pages: a cursor names the key of the item a page continues after (`links.next`) or
/// ends with (`links.prev`), not a position, so items added in between, wherever they sort,
/// never make a reader following `links.next` see an item twice or skip one it started with.
pub fn paginate_by_key<T, K>(
    sorted: &[T],
    here: &Here,
    default_size: usize,
    max_size: usize,
    key: impl Fn(&T) -> K,
) -> Result<Page<T>, ApiError>
where
    T: Clone,
    K: Ord + Serialize + DeserializeOwned,
{
    let size = page_size(here, default_size, max_size)?;
    let (start, end) = match here.params.get("page[cursor]") {
        None => (0, size.min(sorted.len())),
        Some(raw) => match decode_key_cursor(raw).ok_or_else(bad_cursor)? {
            KeyCursor::After(after) => {
                let start = sorted.partition_point(|item| key(item) <= after);
                (start, (start + size).min(sorted.len()))
            }
            KeyCursor::UpTo(last) => {
                let end = sorted.partition_point(|item| key(item) <= last);
                (end.saturating_sub(size), end)
            }
        },
    };
    let cursor = |at: KeyCursor<K>| here.with_cursor(Some(&encode_key_cursor(&at)));
    let next = (end < sorted.len()).then(|| match end.checked_sub(1) {
        Some(last) => cursor(KeyCursor::After(key(&sorted[last]))),
        None => here.with_cursor(None),
    });
    let prev = (start > 0).then(|| cursor(KeyCursor::UpTo(key(&sorted[start - 1]))));
    Ok(Page {
        items: sorted[start..end].to_vec(),
        links: json!({ "self": here.with_cursor(here.params.get("page[cursor]")), "next": next, "prev": prev }),
    })
}

/// `page[size]`: `default_size` when absent, else an integer from 1 to `max_size`.
fn page_size(here: &Here, default_size: usize, max_size: usize) -> Result<usize, ApiError> {
    match here.params.get("page[size]") {
        None => Ok(default_size),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max_size).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_parameter(
                format!("page[size] must be an integer from 1 to {max_size}."),
                "page[size]",
            )),
        },
    }
}

fn bad_cursor() -> ApiError {
    ApiError::invalid_parameter("Invalid page cursor.", "page[cursor]")
}

fn encode_key_cursor<K: Serialize>(cursor: &KeyCursor<K>) -> String {
    let json = serde_json::to_vec(cursor).expect("a cursor key serializes");
    URL_SAFE_NO_PAD.encode(json)
}

fn decode_key_cursor<K: DeserializeOwned>(cursor: &str) -> Option<KeyCursor<K>> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()
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

/// One condition of a `filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The field name, e.g. `email`.
    pub field: String,
    /// What the field must satisfy.
    pub condition: Condition,
}

/// What a filtered field must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `equals(field,"v")` (one value) or `any(field,["a","b"])`: equal one of these.
    OneOf(Vec<String>),
    /// `greater-than(field,t)`.
    After(jiff::Timestamp),
    /// `greater-or-equal(field,t)`.
    NotBefore(jiff::Timestamp),
    /// `less-than(field,t)`.
    Before(jiff::Timestamp),
}

impl Filter {
    /// Whether a text field's `value` is one of the values (`None` never is).
    pub fn matches(&self, value: Option<&str>) -> bool {
        self.matches_by(value, |a, b| a == b)
    }

    /// Like [`Self::matches`], ignoring ASCII case (emails).
    pub fn matches_ignoring_case(&self, value: Option<&str>) -> bool {
        self.matches_by(value, str::eq_ignore_ascii_case)
    }

    fn matches_by(&self, value: Option<&str>, equal: impl Fn(&str, &str) -> bool) -> bool {
        match (&self.condition, value) {
            (Condition::OneOf(values), Some(value)) => values.iter().any(|v| equal(v, value)),
            _ => false,
        }
    }

    /// Whether a datetime field's value `at` satisfies the comparison (a datetime field is
    /// never parsed with `equals` or `any`).
    pub fn admits(&self, at: jiff::Timestamp) -> bool {
        match self.condition {
            Condition::After(t) => at > t,
            Condition::NotBefore(t) => at >= t,
            Condition::Before(t) => at < t,
            Condition::OneOf(_) => false,
        }
    }
}

/// Parses conditions joined by top-level commas: `equals(field,"v")` / `any(field,["a","b"])` on
/// the `text` fields, `greater-than(field,t)` / `greater-or-equal(field,t)` / `less-than(field,t)`
/// with an unquoted RFC 3339 `t` on the `datetimes` fields.
pub fn parse_filter(
    filter: &str,
    text: &[&str],
    datetimes: &[&str],
) -> Result<Vec<Filter>, ApiError> {
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
            let (op, field, value) = (op.trim(), field.trim(), value.trim());
            let condition = if text.contains(&field) {
                match op {
                    "equals" => {
                        Condition::OneOf(vec![parse_value(value).ok_or_else(|| bad("bad value"))?])
                    }
                    "any" => {
                        let list = value
                            .strip_prefix('[')
                            .and_then(|v| v.strip_suffix(']'))
                            .ok_or_else(|| bad("any() takes a [list]"))?;
                        Condition::OneOf(
                            split_top_level(list)
                                .into_iter()
                                .map(|v| parse_value(v.trim()).ok_or_else(|| bad("bad value")))
                                .collect::<Result<Vec<_>, _>>()?,
                        )
                    }
                    other => {
                        return Err(bad(&format!(
                            "operator '{other}' is not supported on '{field}'"
                        )));
                    }
                }
            } else if datetimes.contains(&field) {
                let at = value.parse::<jiff::Timestamp>().map_err(|_| {
                    bad(&format!(
                        "'{value}' is not an ISO 8601 datetime such as 2026-11-30T00:00:00Z"
                    ))
                })?;
                match op {
                    "greater-than" => Condition::After(at),
                    "greater-or-equal" => Condition::NotBefore(at),
                    "less-than" => Condition::Before(at),
                    other => {
                        return Err(bad(&format!(
                            "operator '{other}' is not supported on '{field}'"
                        )));
                    }
                }
            } else {
                return Err(bad(&format!("'{field}' cannot be filtered")));
            };
            Ok(Filter {
                field: field.to_owned(),
                condition,
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
            &[],
        )
        .unwrap();
        assert_eq!(filters.len(), 2);
        assert_eq!(
            filters[0].condition,
            Condition::OneOf(vec!["a,b@x.com".into()])
        );
        assert_eq!(filters[1].field, "external_id");
        assert!(filters[1].matches(Some("y\"z")));
        assert!(!filters[1].matches(Some("X")));
        assert!(!filters[1].matches(None));
        assert!(parse_filter(r#"equals(first_name,"x")"#, &["email"], &[]).is_err());
        assert!(parse_filter(r#"greater-than(email,"x")"#, &["email"], &[]).is_err());
    }

    #[test]
    fn filters_compare_unquoted_datetimes() {
        let filters = parse_filter(
            r#"equals(metric_id,"AbC123"),greater-than(datetime,2026-11-30T00:00:00Z),less-than(datetime,2026-12-01T00:00:00+00:00)"#,
            &["metric_id"],
            &["datetime"],
        )
        .unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            filters[1].condition,
            Condition::After(at("2026-11-30T00:00:00Z"))
        );
        assert!(!filters[1].admits(at("2026-11-30T00:00:00Z")));
        assert!(filters[1].admits(at("2026-11-30T00:00:01Z")));
        assert!(!filters[2].admits(at("2026-12-01T00:00:00Z")));
        let at_or_after = parse_filter(
            "greater-or-equal(datetime,2026-11-30T00:00:00Z)",
            &[],
            &["datetime"],
        )
        .unwrap();
        assert!(at_or_after[0].admits(at("2026-11-30T00:00:00Z")));
        for bad in [
            r#"greater-than(datetime,"2026-11-30T00:00:00Z")"#,
            "greater-than(datetime,yesterday)",
            "equals(datetime,2026-11-30T00:00:00Z)",
            "less-or-equal(datetime,2026-11-30T00:00:00Z)",
            "greater-than(metric_id,2026-11-30T00:00:00Z)",
        ] {
            let error = parse_filter(bad, &["metric_id"], &["datetime"]).unwrap_err();
            assert_eq!(
                error.body()["errors"][0]["source"]["parameter"],
                "filter",
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(40)), Some(40));
        assert_eq!(decode_cursor("garbage!"), None);
    }

    /// The request a link names, as the simulator would see it.
    fn here(link: &str) -> Here {
        let url = url::Url::parse(link).unwrap();
        Here {
            origin: "http://sim".into(),
            path: url.path().to_owned(),
            params: Params::parse(url.query().unwrap_or_default()),
        }
    }

    #[test]
    fn keyed_pages_neither_repeat_nor_skip_while_items_are_added() {
        let mut items = vec![10, 20, 30, 40, 50];
        let first = paginate_by_key(&items, &here("http://sim/x?page[size]=2"), 9, 9, |i| *i);
        let first = first.unwrap();
        assert_eq!(first.items, [10, 20]);
        assert!(first.links["prev"].is_null());
        // Added before the reader's position and within the next page.
        items.splice(0..0, [5]);
        items.insert(3, 25);
        let (mut seen, mut next) = (first.items, first.links["next"].as_str().map(str::to_owned));
        let mut last = None;
        while let Some(link) = next {
            let page = paginate_by_key(&items, &here(&link), 9, 9, |i| *i).unwrap();
            assert!(page.links["prev"].is_string());
            seen.extend(&page.items);
            next = page.links["next"].as_str().map(str::to_owned);
            last = Some(page);
        }
        assert_eq!(seen, [10, 20, 25, 30, 40, 50]);
        let prev = last.unwrap().links["prev"].as_str().unwrap().to_owned();
        let back = paginate_by_key(&items, &here(&prev), 9, 9, |i| *i).unwrap();
        assert_eq!(back.items, [25, 30]);
        let garbage = paginate_by_key(&items, &here("http://sim/x?page[cursor]=x"), 9, 9, |i| *i);
        assert!(garbage.is_err());
    }
}
