//! What both simulators share: serving on a free loopback port, recording every request for
//! inspection, fault injection, and the control API mounted under `/_sim`.
//!
//! Control API (used by `make dev` users with curl, and by tests through the Rust methods):
//! - `POST /_sim/faults` `{"path": "/api/profile-import", "method": "POST"?, "count": 2, "status": 429,
//!   "retry_after": 1?, "delay_ms": 0?, "hold_ms": 0?, "drop_connection": false?, "probability": 0.05?}`
//!   — the next `count` matching calls answer `status` (with the simulator's real error body), or
//!   are delayed by `delay_ms` before they are handled (with no `status`: only slow), or are
//!   handled at once and their answer held back `hold_ms` (the remote did the work; its answer is
//!   slow or lost to a client timeout), or lose their connection before any answer
//!   (`drop_connection`: nothing was handled). With `probability`, each matching call is affected
//!   only with that chance, and only affected calls use up `count`: a rule of a large count and a
//!   small probability is a steady rate of faults (the soak's).
//! - `DELETE /_sim/faults` — clears faults.
//! - `GET /_sim/requests` — every request received so far (method, path, query, headers, body).
//! - `DELETE /_sim/requests` — forgets them.
//!
//! Each simulator adds routes of its own under `/_sim` (CX Manager actions and a look at its
//! data: see `omneo::control` and `klaviyo::control`), answering with [`pretty_json`]. None of
//! the `/_sim` routes needs a token, is recorded, or can be faulted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A simulator listening on loopback; stops when dropped.
pub struct SimServer {
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    handle: JoinHandle<()>,
}

impl SimServer {
    /// Serves `router` on `addr` (port 0 picks a free port).
    pub async fn spawn(router: Router, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            // The simulator lives until the server is dropped; a serve error ends it early.
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "simulator stopped");
            }
        });
        Ok(Self {
            url: format!("http://{addr}"),
            addr,
            handle,
        })
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// One injected misbehaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Path prefix the rule applies to, e.g. `/api/profile-import`.
    pub path: String,
    /// Only this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// How many matching calls it affects.
    #[serde(default = "one")]
    pub count: u32,
    /// Answer this status instead of the real one (with the simulator's error body).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds on a 429/503 answer.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Wait this long before handling the call (a slow call).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Handle the call at once, then hold its answer back this long.
    #[serde(default)]
    pub hold_ms: Option<u64>,
    /// Close the connection without answering, before the call is handled.
    #[serde(default)]
    pub drop_connection: bool,
    /// The chance (0 to 1) that a matching call is affected; always when absent.
    #[serde(default)]
    pub probability: Option<f64>,
}

fn one() -> u32 {
    1
}

impl FaultRule {
    /// The next `count` calls under `path` answer `status`.
    pub fn status(path: &str, status: u16, count: u32) -> Self {
        Self {
            path: path.into(),
            method: None,
            count,
            status: Some(status),
            retry_after: None,
            delay_ms: None,
            hold_ms: None,
            drop_connection: false,
            probability: None,
        }
    }

    /// The next `count` calls under `path` lose their connection before they are handled.
    pub fn dropped(path: &str, count: u32) -> Self {
        Self {
            status: None,
            drop_connection: true,
            ..Self::status(path, 0, count)
        }
    }

    /// The next `count` calls under `path` are delayed by `delay`.
    pub fn slow(path: &str, delay: Duration, count: u32) -> Self {
        let delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        Self {
            status: None,
            delay_ms,
            ..Self::status(path, 0, count)
        }
    }

    /// The next `count` calls under `path` are handled at once, and their answers held back
    /// `hold`: the work is done before the caller can know it.
    pub fn slow_answer(path: &str, hold: Duration, count: u32) -> Self {
        Self {
            delay_ms: None,
            hold_ms: Some(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)),
            ..Self::slow(path, Duration::ZERO, count)
        }
    }

    /// Restricts the rule to one method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Affects each matching call only with chance `probability` (see the module docs).
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = Some(probability);
        self
    }

    /// Whether this call is one the rule affects (rolls the dice of a probabilistic rule).
    fn fires(&self) -> bool {
        self.probability
            .is_none_or(|chance| rand::random::<f64>() < chance)
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.count > 0
            && path.starts_with(&self.path)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }
}

/// The fault rules of one simulator.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<FaultRule>>>);

impl Faults {
    /// Adds a rule.
    pub fn inject(&self, rule: FaultRule) {
        self.0.lock().expect("faults lock").push(rule);
    }

    /// The rules in force, with the uses each has left.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.0.lock().expect("faults lock").clone()
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.0.lock().expect("faults lock").clear();
    }

    /// Consumes one use of the first rule matching the call that fires for it.
    fn take(&self, method: &str, path: &str) -> Option<FaultRule> {
        let mut rules = self.0.lock().expect("faults lock");
        let rule = rules
            .iter_mut()
            .find(|r| r.matches(method, path) && r.fires())?;
        rule.count -= 1;
        let taken = rule.clone();
        rules.retain(|r| r.count > 0);
        Some(taken)
    }
}

/// A request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (empty when none).
    pub query: String,
    /// Headers, lowercase names (the last value when repeated).
    pub headers: BTreeMap<String, String>,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

impl RecordedRequest {
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Every request a simulator received, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<RecordedRequest>>>);

impl Recorder {
    /// A snapshot of everything received.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.0.lock().expect("recorder lock").clone()
    }

    /// The requests with this method whose path starts with `path`.
    pub fn matching(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path))
            .collect()
    }

    /// Forgets everything received.
    pub fn clear(&self) {
        self.0.lock().expect("recorder lock").clear();
    }

    fn push(&self, request: RecordedRequest) {
        self.0.lock().expect("recorder lock").push(request);
    }
}

/// Renders a simulator's error body for an injected status (each API has its own shape).
pub type ErrorRenderer = fn(StatusCode, Option<u64>) -> Response;

#[derive(Clone)]
struct Instruments {
    faults: Faults,
    recorder: Recorder,
    render_error: ErrorRenderer,
}

/// The largest body a simulator accepts.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Wraps a simulator's API router: mounts the `/_sim` control API, records every API request,
/// and applies injected faults before the real handler runs.
pub fn instrument(
    api: Router,
    faults: Faults,
    recorder: Recorder,
    render_error: ErrorRenderer,
) -> Router {
    let instruments = Instruments {
        faults,
        recorder,
        render_error,
    };
    let control = Router::new()
        .route("/_sim/faults", post(add_fault).delete(clear_faults))
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
        .with_state(instruments.clone());
    api.layer(middleware::from_fn_with_state(
        instruments,
        record_and_inject,
    ))
    .merge(control)
}

async fn record_and_inject(
    State(instruments): State<Instruments>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    instruments.recorder.push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    let fault = instruments.faults.take(&method, &path);
    if fault.as_ref().is_some_and(|f| f.drop_connection) {
        // Unwinding out of the connection's task closes its socket with no answer written, as a
        // remote that crashed or reset the connection would. `resume_unwind` skips the panic
        // hook: nothing is printed, the server keeps serving other connections.
        std::panic::resume_unwind(Box::new("simulated dropped connection"));
    }
    if let Some(fault) = &fault {
        if let Some(delay) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(status) = fault.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            return (instruments.render_error)(status, fault.retry_after);
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if let Some(hold) = fault.and_then(|f| f.hold_ms) {
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    response
}

/// A control-API answer: `value` as indented JSON with a final newline, readable with curl alone.
pub fn pretty_json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn add_fault(
    State(instruments): State<Instruments>,
    Json(rule): Json<FaultRule>,
) -> StatusCode {
    instruments.faults.inject(rule);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(instruments): State<Instruments>) -> StatusCode {
    instruments.faults.clear();
    StatusCode::NO_CONTENT
}

async fn list_requests(State(instruments): State<Instruments>) -> Json<Vec<RecordedRequest>> {
    Json(instruments.recorder.requests())
}

async fn clear_requests(State(instruments): State<Instruments>) -> StatusCode {
    instruments.recorder.clear();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_answer_is_a_rule_of_its_own() {
        let rule = FaultRule::slow_answer("/oauth/token", Duration::from_millis(1500), 2);
        assert_eq!(
            (rule.hold_ms, rule.delay_ms, rule.status, rule.count),
            (Some(1500), None, None, 2)
        );
    }

    #[test]
    fn probabilistic_rules_use_up_their_count_only_when_they_fire() {
        let faults = Faults::default();
        faults.inject(FaultRule::status("/api", 503, 1000).probability(0.2));
        let fired = (0..2000)
            .filter(|_| faults.take("GET", "/api/profiles").is_some())
            .count();
        assert!((300..500).contains(&fired), "fired {fired} of 2000 at 20 %");
        faults.clear();
        faults.inject(FaultRule::status("/api", 503, 5).probability(0.0));
        assert!(faults.take("GET", "/api/profiles").is_none());
    }

    #[test]
    fn fault_rules_are_consumed_in_order_and_by_method() {
        let faults = Faults::default();
        faults.inject(FaultRule::status("/api/events", 503, 2).method("post"));
        assert!(faults.take("GET", "/api/events").is_none());
        assert_eq!(
            faults.take("POST", "/api/events/x").unwrap().status,
            Some(503)
        );
        assert_eq!(
            faults.take("POST", "/api/events").unwrap().status,
            Some(503)
        );
        assert!(faults.take("POST", "/api/events").is_none());
    }
}
