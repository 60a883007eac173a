//! Sending one call with the retry policy: the loop both clients go through.

use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use super::error::{ErrorKind, RemoteError, Service, classify_status, parse_retry_after};
use super::retry::{Failure, RetryPolicy};

/// The largest answer either API may give: Klaviyo's largest pages (100 profiles with their
/// subscriptions, 1000 events) stay far below it; anything larger is refused, not buffered.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or timed out.
    #[error("transport error")]
    Transport(#[source] reqwest::Error),
    /// The body is larger than the caller accepts.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Reads an answer's body, refusing one larger than `limit` bytes (announced or streamed).
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Transport(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether repeating a request whose outcome is unknown is harmless (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Repeating it cannot do harm: retried on every transient failure.
    Safe,
    /// A repeat may act twice: retried only when the remote certainly did not act on it.
    Unsafe,
}

/// An `Authorization: Bearer …` header value, marked sensitive so it is never printed.
pub(crate) fn bearer(token: &SecretString) -> Result<HeaderValue, ErrorKind> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            ErrorKind::InvalidRequest("the token contains characters a header cannot carry".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The HTTP client, retry policy and error dialect of one remote API.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    http: reqwest::Client,
    policy: RetryPolicy,
    service: Service,
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status (2xx).
    pub status: StatusCode,
    body: Vec<u8>,
    service: Service,
    call: String,
    attempts: u32,
}

impl Answer {
    /// The body as JSON of type `T`; an unreadable body is an [`ErrorKind::InvalidResponse`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, RemoteError> {
        serde_json::from_slice(&self.body).map_err(|error| RemoteError {
            service: self.service,
            call: self.call.clone(),
            attempts: self.attempts,
            kind: ErrorKind::InvalidResponse(error.to_string()),
        })
    }

    /// An [`ErrorKind::InvalidResponse`] about this answer.
    pub fn invalid(&self, why: impl Into<String>) -> RemoteError {
        RemoteError {
            service: self.service,
            call: self.call.clone(),
            attempts: self.attempts,
            kind: ErrorKind::InvalidResponse(why.into()),
        }
    }
}

impl Remote {
    /// A remote reached through `http` with `policy`.
    pub fn new(http: reqwest::Client, policy: RetryPolicy, service: Service) -> Self {
        Self {
            http,
            policy,
            service,
        }
    }

    /// An error about a call that never went out (e.g. a bad token or URL).
    pub fn refuse(&self, method: &Method, url: &Url, kind: ErrorKind) -> RemoteError {
        RemoteError {
            service: self.service,
            call: format!("{method} {}", url.path()),
            attempts: 0,
            kind,
        }
    }

    /// Sends a call, retrying as the policy and `idempotency` allow; a non-2xx final answer is
    /// the classified error.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &HeaderMap,
        body: Option<Vec<u8>>,
        idempotency: Idempotency,
    ) -> Result<Answer, RemoteError> {
        let call = format!("{method} {}", url.path());
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let kind = match self.attempt(&method, &url, headers, body.as_ref()).await {
                Ok((status, body)) => {
                    return Ok(Answer {
                        status,
                        body,
                        service: self.service,
                        call,
                        attempts,
                    });
                }
                Err(kind) => kind,
            };
            let error = RemoteError {
                service: self.service,
                call: call.clone(),
                attempts,
                kind,
            };
            let unit = rand::rng().random_range(-1.0..=1.0);
            let delay = self.policy.next_delay(
                attempts,
                started.elapsed(),
                failure_of(&error, idempotency),
                unit,
            );
            let Some(delay) = delay else {
                return Err(error);
            };
            tracing::warn!(
                service = %self.service,
                call = %call,
                attempt = attempts,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error.kind,
                "remote call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: the status and body of a 2xx answer, or how it failed.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ErrorKind> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(self.policy.attempt_timeout);
        if let Some(body) = body {
            request = request.body(body.clone());
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            let body =
                read_capped(response, MAX_ANSWER_BYTES)
                    .await
                    .map_err(|error| match error {
                        ReadError::Transport(error) => transport(error),
                        too_large @ ReadError::TooLarge { .. } => {
                            ErrorKind::InvalidResponse(too_large.to_string())
                        }
                    })?;
            return Ok((status, body));
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        // An error body that cannot be read is classified by its status alone.
        let body = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        Err(classify_status(self.service, status, retry_after, &body))
    }
}

/// What the policy should make of a failed attempt.
fn failure_of(error: &RemoteError, idempotency: Idempotency) -> Failure {
    use super::Disposition;
    let repeatable = idempotency == Idempotency::Safe || error.certainly_not_processed();
    match error.disposition() {
        Disposition::RetryAfter(after) if repeatable => Failure::RetryAfter(after),
        Disposition::Retryable if repeatable => Failure::Transient,
        _ => Failure::Final,
    }
}

/// Classifies a reqwest failure, dropping the URL (its query may hold an email).
fn transport(error: reqwest::Error) -> ErrorKind {
    let error = error.without_url();
    if error.is_timeout() {
        ErrorKind::Timeout(error)
    } else if error.is_connect() {
        ErrorKind::Connect(error)
    } else {
        ErrorKind::Transport(error)
    }
}

/// `base` with `segments` appended to its path, each percent-encoded (ids cannot escape).
pub(crate) fn endpoint<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// A 404 read as "there is none".
pub(crate) fn found<T>(result: Result<T, RemoteError>) -> Result<Option<T>, RemoteError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn failed(status: u16, retry_after: Option<u64>) -> RemoteError {
        RemoteError {
            service: Service::Omneo,
            call: "POST /api/v3/rewards".into(),
            attempts: 1,
            kind: classify_status(
                Service::Omneo,
                StatusCode::from_u16(status).unwrap(),
                retry_after.map(std::time::Duration::from_secs),
                b"",
            ),
        }
    }

    #[test]
    fn unsafe_requests_are_repeated_only_when_certainly_not_processed() {
        let after = std::time::Duration::from_secs(2);
        for idempotency in [Idempotency::Safe, Idempotency::Unsafe] {
            assert_eq!(
                failure_of(&failed(429, Some(2)), idempotency),
                Failure::RetryAfter(after)
            );
            assert_eq!(
                failure_of(&failed(429, None), idempotency),
                Failure::Transient
            );
            assert_eq!(failure_of(&failed(422, None), idempotency), Failure::Final);
            assert_eq!(failure_of(&failed(401, None), idempotency), Failure::Final);
        }
        assert_eq!(
            failure_of(&failed(503, None), Idempotency::Safe),
            Failure::Transient
        );
        // A 503 may come after the reward was issued: the task layer decides, not a blind retry.
        let unknown = failed(503, None);
        assert_eq!(failure_of(&unknown, Idempotency::Unsafe), Failure::Final);
        assert!(unknown.may_have_been_processed());
    }

    #[test]
    fn bearer_headers_are_sensitive_and_never_printed() {
        let value = bearer(&SecretString::from("pk_live_secret")).unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("pk_live_secret"));
        let bad = bearer(&SecretString::from("bad\ntoken")).unwrap_err();
        assert!(!bad.to_string().contains("bad"));
    }
}
