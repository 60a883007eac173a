//! A failed remote call, classified for the worker (product.md §8).

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

/// Which remote API a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Klaviyo's REST API.
    Klaviyo,
    /// Omneo's Admin or ID API.
    Omneo,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Klaviyo => "Klaviyo",
            Self::Omneo => "Omneo",
        })
    }
}

/// What the worker should do with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient (5xx, 408, 409, timeout, connection, 429 without `Retry-After`): let the queue
    /// back off and try the task again.
    Retryable,
    /// Rate limited: try again no earlier than this (reschedule when longer than the queue's
    /// backoff).
    RetryAfter(Duration),
    /// Retrying cannot help (other 4xx, an answer we cannot read): record a failure.
    Permanent,
    /// Klaviyo rejected the access token: refresh it once, then mark the install
    /// `reauthorization_required`.
    Reauthorize,
}

/// One problem a remote reported: an entry of Klaviyo's `errors[]`, or one message of Omneo's
/// 422 `errors{field: […]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Klaviyo's `code` (`invalid`, `duplicate_profile`, …); Omneo has none.
    pub code: Option<String>,
    /// What is wrong, in the remote's words.
    pub detail: String,
    /// Where: Klaviyo's `source.pointer` (`/data/attributes/email`) or Omneo's field name.
    pub field: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        f.write_str(&self.detail)?;
        if let Some(field) = &self.field {
            write!(f, " (at {field})")?;
        }
        Ok(())
    }
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// 429: the account's rate limit.
    #[error("rate limited (429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// The answer's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// 401: the token was rejected.
    #[error("{}", unauthorized_text(*service))]
    Unauthorized {
        /// Whose token.
        service: Service,
    },
    /// Klaviyo 409 `duplicate_profile`: the identifiers belong to another profile.
    #[error(
        "409 duplicate_profile: the identifiers belong to Klaviyo profile {duplicate_profile_id}"
    )]
    DuplicateProfile {
        /// `meta.duplicate_profile_id`, the profile that already holds them.
        duplicate_profile_id: String,
    },
    /// Any other unsuccessful status.
    #[error("{status}{}", describe(message.as_deref(), problems))]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// Omneo's top-level `message`, when given.
        message: Option<String>,
        /// What the remote said was wrong.
        problems: Vec<Problem>,
    },
    /// The attempt timed out; the remote may have processed it.
    #[error("timed out")]
    Timeout(#[source] reqwest::Error),
    /// No connection could be made; the request was never sent.
    #[error("could not connect")]
    Connect(#[source] reqwest::Error),
    /// The connection failed mid-way; the remote may have processed it.
    #[error("transport error")]
    Transport(#[source] reqwest::Error),
    /// The request could not be built (e.g. a token with characters a header cannot carry).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A successful answer we could not understand.
    #[error("unexpected answer: {0}")]
    InvalidResponse(String),
}

fn unauthorized_text(service: Service) -> &'static str {
    match service {
        Service::Klaviyo => {
            "401: Klaviyo rejected the access token; refresh it once, then re-authorise the install"
        }
        Service::Omneo => {
            "401: Omneo rejected the tenant's API token; replace the token in the tenant's settings"
        }
    }
}

fn describe(message: Option<&str>, problems: &[Problem]) -> String {
    let parts: Vec<String> = message
        .map(str::to_owned)
        .into_iter()
        .chain(problems.iter().map(Problem::to_string))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// A failed call to Klaviyo or Omneo, after the retries the policy allowed.
///
/// Its text names the service, the method and the path (never the query, which may hold an email,
/// and never a token).
#[derive(Debug, thiserror::Error)]
#[error("{service} {call} failed after {attempts} attempt(s): {kind}")]
pub struct RemoteError {
    /// Which API.
    pub service: Service,
    /// Method and path, e.g. `POST /api/profile-import`.
    pub call: String,
    /// Attempts made.
    pub attempts: u32,
    /// How it failed.
    #[source]
    pub kind: ErrorKind,
}

impl RemoteError {
    /// What the worker should do about it.
    pub fn disposition(&self) -> Disposition {
        match &self.kind {
            ErrorKind::RateLimited {
                retry_after: Some(after),
            } => Disposition::RetryAfter(*after),
            ErrorKind::RateLimited { retry_after: None }
            | ErrorKind::Timeout(_)
            | ErrorKind::Connect(_)
            | ErrorKind::Transport(_) => Disposition::Retryable,
            // The caller owns the refresh; Omneo's API token cannot be refreshed, so a bad one
            // fails the task (with a message saying what to fix).
            ErrorKind::Unauthorized {
                service: Service::Klaviyo,
            } => Disposition::Reauthorize,
            ErrorKind::Unauthorized {
                service: Service::Omneo,
            } => Disposition::Permanent,
            // Sending the same identifiers again meets the same profile: the caller must change
            // the payload (product.md §6.2 step 4).
            ErrorKind::DuplicateProfile { .. } => Disposition::Permanent,
            ErrorKind::Status { status, .. } => {
                if *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::CONFLICT
                    || status.is_server_error()
                {
                    Disposition::Retryable
                } else {
                    Disposition::Permanent
                }
            }
            ErrorKind::InvalidRequest(_) | ErrorKind::InvalidResponse(_) => Disposition::Permanent,
        }
    }

    /// True when the request may have been processed although the call failed (a timeout, a
    /// dropped connection, a 5xx): check before repeating a non-idempotent request.
    pub fn may_have_been_processed(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout(_) | ErrorKind::Transport(_) => true,
            ErrorKind::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    /// True when the remote certainly did not act on the request (rate limited, or never sent).
    pub(crate) fn certainly_not_processed(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited { .. } | ErrorKind::Connect(_)
        )
    }

    /// The HTTP status the remote answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ErrorKind::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            ErrorKind::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            ErrorKind::DuplicateProfile { .. } => Some(StatusCode::CONFLICT),
            ErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problems the remote listed (empty when none).
    pub fn problems(&self) -> &[Problem] {
        match &self.kind {
            ErrorKind::Status { problems, .. } => problems,
            _ => &[],
        }
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// Classifies an unsuccessful answer from its status, `Retry-After` and body.
pub(crate) fn classify_status(
    service: Service,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ErrorKind {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return ErrorKind::RateLimited { retry_after };
    }
    if status == StatusCode::UNAUTHORIZED {
        return ErrorKind::Unauthorized { service };
    }
    let (message, problems, duplicate) = match service {
        Service::Klaviyo => klaviyo_problems(body),
        Service::Omneo => {
            let (message, problems) = omneo_problems(body);
            (message, problems, None)
        }
    };
    match duplicate {
        Some(duplicate_profile_id) if status == StatusCode::CONFLICT => {
            ErrorKind::DuplicateProfile {
                duplicate_profile_id,
            }
        }
        _ => ErrorKind::Status {
            status,
            message,
            problems,
        },
    }
}

/// Klaviyo's `{"errors":[{"code","title","detail","source":{"pointer"},"meta"}]}`; also returns
/// `meta.duplicate_profile_id` of a `duplicate_profile` entry.
fn klaviyo_problems(body: &[u8]) -> (Option<String>, Vec<Problem>, Option<String>) {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: Option<String>,
        title: Option<String>,
        detail: Option<String>,
        source: Option<Source>,
        meta: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Source {
        pointer: Option<String>,
        parameter: Option<String>,
    }
    #[derive(Deserialize)]
    struct Meta {
        duplicate_profile_id: Option<String>,
    }
    let Ok(parsed) = serde_json::from_slice::<Body>(body) else {
        return (None, Vec::new(), None);
    };
    let mut duplicate = None;
    let problems = parsed
        .errors
        .into_iter()
        .map(|entry| {
            if entry.code.as_deref() == Some("duplicate_profile") {
                duplicate = duplicate
                    .take()
                    .or(entry.meta.and_then(|m| m.duplicate_profile_id));
            }
            Problem {
                detail: entry.detail.or(entry.title).unwrap_or_default(),
                field: entry.source.and_then(|s| s.pointer.or(s.parameter)),
                code: entry.code,
            }
        })
        .collect();
    (None, problems, duplicate)
}

/// Omneo's `{"message", "errors": {"field": ["…"]}}`.
fn omneo_problems(body: &[u8]) -> (Option<String>, Vec<Problem>) {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
        #[serde(default)]
        errors: std::collections::BTreeMap<String, Messages>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Messages {
        Many(Vec<String>),
        One(String),
    }
    let Ok(parsed) = serde_json::from_slice::<Body>(body) else {
        return (None, Vec::new());
    };
    let problems = parsed
        .errors
        .into_iter()
        .flat_map(|(field, messages)| {
            let messages = match messages {
                Messages::Many(many) => many,
                Messages::One(one) => vec![one],
            };
            messages.into_iter().map(move |detail| Problem {
                code: None,
                detail,
                field: Some(field.clone()),
            })
        })
        .collect();
    (parsed.message, problems)
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (relative to `now`; a past date is 0).
pub(crate) fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(service: Service, status: u16, body: &str) -> RemoteError {
        RemoteError {
            service,
            call: "POST /api/x".into(),
            attempts: 1,
            kind: classify_status(
                service,
                StatusCode::from_u16(status).unwrap(),
                None,
                body.as_bytes(),
            ),
        }
    }

    #[test]
    fn statuses_are_classified_for_the_worker() {
        for status in [408, 409, 500, 502, 503, 504, 524] {
            let e = error(Service::Klaviyo, status, "");
            assert_eq!(e.disposition(), Disposition::Retryable, "{status}");
        }
        for status in [400, 403, 404, 405, 413, 422] {
            let e = error(Service::Omneo, status, "{}");
            assert_eq!(e.disposition(), Disposition::Permanent, "{status}");
        }
        assert_eq!(
            error(Service::Klaviyo, 429, "").disposition(),
            Disposition::Retryable
        );
        let limited = RemoteError {
            kind: classify_status(
                Service::Klaviyo,
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(7)),
                b"",
            ),
            ..error(Service::Klaviyo, 400, "")
        };
        assert_eq!(
            limited.disposition(),
            Disposition::RetryAfter(Duration::from_secs(7))
        );
    }

    #[test]
    fn unauthorized_means_reauthorize_for_klaviyo_and_a_bad_token_for_omneo() {
        let klaviyo = error(Service::Klaviyo, 401, r#"{"errors":[]}"#);
        assert_eq!(klaviyo.disposition(), Disposition::Reauthorize);
        assert!(klaviyo.to_string().contains("re-authorise"));
        let omneo = error(Service::Omneo, 401, r#"{"message":"Unauthenticated."}"#);
        assert_eq!(omneo.disposition(), Disposition::Permanent);
        assert!(omneo.to_string().contains("API token"), "{omneo}");
    }

    #[test]
    fn klaviyo_errors_keep_code_detail_and_pointer() {
        let body = r#"{"errors":[{"id":"1","status":400,"code":"invalid","title":"Invalid input.",
            "detail":"Invalid email address","source":{"pointer":"/data/attributes/email"},"extra":1}]}"#;
        let e = error(Service::Klaviyo, 400, body);
        assert_eq!(e.disposition(), Disposition::Permanent);
        assert_eq!(
            e.problems(),
            [Problem {
                code: Some("invalid".into()),
                detail: "Invalid email address".into(),
                field: Some("/data/attributes/email".into()),
            }]
        );
        assert_eq!(
            e.to_string(),
            "Klaviyo POST /api/x failed after 1 attempt(s): 400 Bad Request: \
             invalid: Invalid email address (at /data/attributes/email)"
        );
    }

    #[test]
    fn duplicate_profile_is_its_own_variant() {
        let body = r#"{"errors":[{"status":409,"code":"duplicate_profile","title":"Conflict.",
            "detail":"A profile already exists with one of these identifiers.",
            "meta":{"duplicate_profile_id":"01GDDKASAP8TKDDA2GRZDSVP4H"}}]}"#;
        let e = error(Service::Klaviyo, 409, body);
        assert!(matches!(
            &e.kind,
            ErrorKind::DuplicateProfile { duplicate_profile_id } if duplicate_profile_id == "01GDDKASAP8TKDDA2GRZDSVP4H"
        ));
        assert_eq!(e.disposition(), Disposition::Permanent);
        assert_eq!(e.status(), Some(StatusCode::CONFLICT));
        // Another 409 is a transient conflict.
        let other = error(Service::Klaviyo, 409, r#"{"errors":[{"code":"conflict"}]}"#);
        assert!(matches!(other.kind, ErrorKind::Status { .. }));
        assert_eq!(other.disposition(), Disposition::Retryable);
    }

    #[test]
    fn omneo_validation_errors_name_their_fields() {
        let body = r#"{"message":"The given data was invalid.",
            "errors":{"email":["The email has already been taken."],"mobile_phone":"Invalid."}}"#;
        let e = error(Service::Omneo, 422, body);
        assert_eq!(e.disposition(), Disposition::Permanent);
        assert_eq!(
            e.problems(),
            [
                Problem {
                    code: None,
                    detail: "The email has already been taken.".into(),
                    field: Some("email".into()),
                },
                Problem {
                    code: None,
                    detail: "Invalid.".into(),
                    field: Some("mobile_phone".into()),
                },
            ]
        );
        assert!(e.to_string().contains("The given data was invalid."));
    }

    #[test]
    fn unreadable_error_bodies_still_classify() {
        let e = error(Service::Omneo, 503, "<html>gateway</html>");
        assert_eq!(e.disposition(), Disposition::Retryable);
        assert!(e.may_have_been_processed());
        assert!(e.problems().is_empty());
        assert!(!error(Service::Omneo, 429, "").may_have_been_processed());
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
