//! The webhook receivers (product.md §2, §6.1, §7.1): authenticate, check the shape, enqueue,
//! answer — within milliseconds, with every remote call left to the task workers.
//!
//! | module | concern |
//! |---|---|
//! | [`tenant_cache`] | the per-instance, short-lived view of a tenant receivers authenticate against |
//! | [`omneo`] | `omneo-webhook`: Omneo's profile webhooks and the three Klaviyo targets |
//! | [`klaviyo`] | `klaviyo-webhook`: Klaviyo's system webhooks and the three Flow webhooks |
//!
//! What every receiver shares is here: verifying a hex HMAC-SHA256 in constant time, comparing a
//! shared secret in constant time, and the one way to answer — 202 only once the task is durably
//! enqueued, 503 when the queue is unavailable (the sender retries; nothing is acknowledged that
//! was not enqueued).

pub mod klaviyo;
pub mod omneo;
pub mod tenant_cache;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::api_error::{ApiError, BODY_LIMIT_BYTES, ErrorCode};
use crate::app::App;
use crate::crypto::constant_time_eq;
use crate::domain::TenantId;
use crate::queue::{
    Enqueued, MAX_TASK_BYTES, Queue, QueueName, Task, TaskEnvelope, TaskName, Work,
};

pub use self::tenant_cache::{CACHE_TTL, ReceiverTenant, TenantCache};

/// `x-omneo-secret`: the tenant's shared secret (`webhook_secret`), sent by Klaviyo Flow
/// webhooks and accepted by the Omneo targets instead of a signature.
pub const SHARED_SECRET_HEADER: &str = "x-omneo-secret";

/// What a receiver's handlers share: the app and this instance's view of the tenants.
pub struct Receiver {
    /// The app.
    pub app: Arc<App>,
    /// The per-instance tenant view.
    pub tenants: TenantCache,
}

impl Receiver {
    /// The state of a receiver of `app`, with a fresh tenant view.
    pub fn new(app: Arc<App>) -> Arc<Self> {
        Arc::new(Self {
            tenants: TenantCache::new(app.store.clone(), app.config.keyring.clone(), CACHE_TTL),
            app,
        })
    }
}

/// 401 `invalid_signature` naming the header at fault.
pub fn invalid_signature(header: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidSignature,
        message,
    )
    .with_field(header)
}

/// An HMAC-SHA256 key made ready once (its padded inner and outer states computed), so each
/// verification only hashes the message.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    /// The key of `secret`.
    pub fn new(secret: &SecretString) -> Self {
        Self(
            Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC takes a key of any length"),
        )
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(<redacted>)")
    }
}

/// Checks that `header` holds the lowercase (or uppercase) hex HMAC-SHA256 of `body` under `key`;
/// the comparison is constant-time (the MAC library's own).
pub fn verify_hex_hmac(
    headers: &HeaderMap,
    header: &str,
    key: &HmacKey,
    body: &[&[u8]],
) -> Result<(), ApiError> {
    let value = headers
        .get(header)
        .ok_or_else(|| invalid_signature(header, format!("missing {header} header")))?;
    let mut signature = [0; 32];
    hex::decode_to_slice(value.as_bytes().trim_ascii(), &mut signature)
        .map_err(|_| invalid_signature(header, format!("{header} is not 64 hex digits")))?;
    let mut mac = key.0.clone();
    for part in body {
        mac.update(part);
    }
    mac.verify_slice(&signature)
        .map_err(|_| invalid_signature(header, format!("{header} does not match the body")))
}

/// The `{tenant}` segment of a receiver's path, as sent. A segment that does not decode to text
/// (`acme%FF`) names no tenant: 404 in the JSON error format, like any unknown tenant, rather
/// than axum's plain-text 400.
pub struct TenantSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TenantSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(tenant)) => Ok(Self(tenant)),
            Err(rejection) => Err(ApiError::not_found(format!(
                "no tenant: the path's tenant does not decode ({rejection})"
            ))),
        }
    }
}

/// A delivery's headers and raw body, moved out of the request (the headers are not copied, as
/// the `HeaderMap` extractor would). The body was read and limited by the runtime layer.
pub struct Delivery {
    /// The request headers.
    pub headers: HeaderMap,
    /// The raw body, exactly as signed.
    pub body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Delivery {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, BODY_LIMIT_BYTES)
            .await
            .map_err(|_| ApiError::body_too_large())?;
        Ok(Self {
            headers: parts.headers,
            body,
        })
    }
}

/// Checks that `header` holds one of `secrets` (constant-time per secret, every secret compared);
/// missing or different is 401 `invalid_signature` naming the header.
pub fn verify_shared_secret<'a>(
    headers: &HeaderMap,
    header: &str,
    secrets: impl IntoIterator<Item = &'a SecretString>,
) -> Result<(), ApiError> {
    let given = headers
        .get(header)
        .ok_or_else(|| invalid_signature(header, format!("missing {header} header")))?
        .as_bytes();
    let mut matched = false;
    for secret in secrets {
        // No early exit: every accepted secret is compared.
        matched |= constant_time_eq(given, secret.expose_secret().as_bytes());
    }
    if matched {
        Ok(())
    } else {
        Err(invalid_signature(
            header,
            format!("{header} does not match"),
        ))
    }
}

/// `X-Task-Status` of a 202: `enqueued`, `duplicate` or `ignored` (see [`Accepted`]).
pub const TASK_STATUS_HEADER: &str = "x-task-status";
/// `X-Task-Name` of a 202: the task the delivery became.
pub const TASK_NAME_HEADER: &str = "x-task-name";
/// `X-Task-Count` of a 202 for a batch: how many tasks the delivery became.
pub const TASK_COUNT_HEADER: &str = "x-task-count";

/// The answer to an accepted delivery: 202 with an empty body (senders only read the status), and
/// what became of it in [`TASK_STATUS_HEADER`] and [`TASK_NAME_HEADER`] for whoever debugs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new task.
    Enqueued(TaskName),
    /// A task of that name exists: the same delivery was accepted before.
    Duplicate(TaskName),
    /// Nothing to do (an event this extension does not handle).
    Ignored,
    /// A batch became several tasks: `enqueued` new ones, `duplicates` accepted before.
    Batch {
        /// New tasks.
        enqueued: usize,
        /// Tasks that existed already.
        duplicates: usize,
    },
}

impl Accepted {
    /// The `X-Task-Status` value.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Enqueued(_) => "enqueued",
            Self::Duplicate(_) => "duplicate",
            Self::Ignored => "ignored",
            Self::Batch { enqueued: 0, .. } => "duplicate",
            Self::Batch { .. } => "enqueued",
        }
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let mut response = StatusCode::ACCEPTED.into_response();
        let headers = response.headers_mut();
        headers.insert(TASK_STATUS_HEADER, HeaderValue::from_static(self.status()));
        match self {
            Self::Enqueued(name) | Self::Duplicate(name) => {
                if let Ok(name) = HeaderValue::from_maybe_shared(Bytes::from(String::from(name))) {
                    headers.insert(TASK_NAME_HEADER, name);
                }
            }
            Self::Batch {
                enqueued,
                duplicates,
            } => {
                headers.insert(TASK_COUNT_HEADER, HeaderValue::from(enqueued + duplicates));
            }
            Self::Ignored => {}
        }
        response
    }
}

/// A task of `work` for `tenant` on `queue`, to run now; the worker follows from the work's kind.
pub fn task_now(tenant: &TenantId, queue: QueueName, work: Work, name: TaskName) -> Task {
    Task {
        queue,
        direction: work.kind().direction(),
        envelope: TaskEnvelope {
            tenant: tenant.clone(),
            work,
        },
        name,
        schedule_at: None,
    }
}

/// Enqueues `task` and answers 202 once it is durably queued; an unavailable queue is 503.
pub async fn enqueue(queue: &dyn Queue, task: Task) -> Result<Accepted, ApiError> {
    Ok(match queue.enqueue(&task).await? {
        Enqueued::Created => Accepted::Enqueued(task.name),
        Enqueued::AlreadyExists => Accepted::Duplicate(task.name),
    })
}

/// Enqueues every task at once and answers 202 once all are durably queued; if any fails, the
/// answer is that failure (503 for an unavailable queue): the sender retries the whole delivery,
/// and the tasks already queued are found again by name.
pub async fn enqueue_all(queue: &dyn Queue, tasks: Vec<Task>) -> Result<Accepted, ApiError> {
    if tasks.is_empty() {
        return Ok(Accepted::Ignored);
    }
    let results =
        futures_util::future::join_all(tasks.iter().map(|task| queue.enqueue(task))).await;
    let (mut enqueued, mut duplicates) = (0, 0);
    for result in results {
        match result? {
            Enqueued::Created => enqueued += 1,
            Enqueued::AlreadyExists => duplicates += 1,
        }
    }
    Ok(Accepted::Batch {
        enqueued,
        duplicates,
    })
}

/// [`enqueue`] for a task that carries a caller's body (a target's event or record): one too
/// large for a task is 413 naming `field` instead of a queue error.
pub async fn enqueue_carrying(
    queue: &dyn Queue,
    task: Task,
    field: &str,
) -> Result<Accepted, ApiError> {
    fits_a_task(&task, field)?;
    enqueue(queue, task).await
}

/// 413 naming `field` when the task's body would exceed what a task holds.
pub fn fits_a_task(task: &Task, field: &str) -> Result<(), ApiError> {
    let size = serde_json::to_vec(&task.envelope)
        .map(|body| body.len())
        .unwrap_or(usize::MAX);
    if size > MAX_TASK_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("{field} makes a task of {size} bytes; a task holds at most {MAX_TASK_BYTES}"),
        )
        .with_field(field));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn hex_hmac(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn hex_hmacs_verify_only_for_the_right_key_and_body() {
        let secret = HmacKey::new(&SecretString::from("s3cret"));
        let body = br#"{"id":"p-1"}"#;
        let good = hex_hmac("s3cret", body);
        let h = "X-Sig";
        assert!(verify_hex_hmac(&headers(h, &good), h, &secret, &[body]).is_ok());
        assert!(
            verify_hex_hmac(&headers(h, &good.to_uppercase()), h, &secret, &[body]).is_ok(),
            "hex case does not matter"
        );
        let split: [&[u8]; 2] = [&body[..4], &body[4..]];
        assert!(verify_hex_hmac(&headers(h, &good), h, &secret, &split).is_ok());
        for (value, why) in [
            (hex_hmac("other", body), "another key"),
            (hex_hmac("s3cret", b"{}"), "another body"),
            ("zz".into(), "not hex"),
            (good[..62].to_owned(), "truncated"),
            (String::new(), "empty"),
        ] {
            let error = verify_hex_hmac(&headers(h, &value), h, &secret, &[body]).unwrap_err();
            assert_eq!(error.status, StatusCode::UNAUTHORIZED, "{why}");
            assert_eq!(error.code, ErrorCode::InvalidSignature, "{why}");
            assert_eq!(error.field.as_deref(), Some(h), "{why}");
        }
        let missing = verify_hex_hmac(&HeaderMap::new(), h, &secret, &[body]).unwrap_err();
        assert!(missing.message.contains("missing"), "{}", missing.message);
    }

    #[test]
    fn shared_secrets_match_any_accepted_one() {
        let current = SecretString::from("new");
        let previous = SecretString::from("old");
        let h = "x-omneo-secret";
        assert!(verify_shared_secret(&headers(h, "old"), h, [&current, &previous]).is_ok());
        assert!(verify_shared_secret(&headers(h, "new"), h, [&current]).is_ok());
        for (given, accepted, why) in [
            (
                Some("old"),
                vec![&current],
                "the previous one after its grace",
            ),
            (Some("ne"), vec![&current], "a prefix"),
            (None, vec![&current], "missing"),
        ] {
            let sent = given.map_or_else(HeaderMap::new, |value| headers(h, value));
            let error = verify_shared_secret(&sent, h, accepted).unwrap_err();
            assert_eq!(error.status, StatusCode::UNAUTHORIZED, "{why}");
            assert_eq!(error.field.as_deref(), Some(h), "{why}");
        }
    }
}
