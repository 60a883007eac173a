//! The runtime every function shares: `/health`, JSON fallbacks, the 256 KiB limit, request spans
//! in Cloud Logging's format, no secrets in logs, graceful shutdown (in process and on SIGTERM to a
//! real process), and serving through the AWS Lambda runtime API.
//!
//! Tests that need a separate process re-run this test binary on [`child_process`] with
//! `RUNTIME_TEST_CHILD` naming what the child does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use shared::config::LogFormat;
use shared::runtime::http::{self, BODY_LIMIT_BYTES, DRAIN_TIMEOUT};
use shared::runtime::{serve_function, telemetry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::support::LogBuffer;
use tracing_subscriber::EnvFilter;

/// Generous bound for anything that should happen "soon" on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);
const PROJECT: &str = "test-project";
const TRACE: &str = "105445aa7843bc8bf206b12000100000";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Captures this thread's log output (the tests run on a current-thread runtime, so the server's
/// tasks log here too) at `filter`, until the guard drops.
fn capture_logs(format: LogFormat, filter: &str) -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let subscriber = telemetry::subscriber(
        format,
        Some(PROJECT.to_owned()),
        EnvFilter::new(filter),
        buffer.clone(),
    );
    (buffer, tracing::subscriber::set_default(subscriber))
}

/// Serves `routes` wrapped by [`http::wrap`] on a random port until the test ends.
async fn spawn(routes: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(
        listener,
        http::wrap("test-fn", routes),
        std::future::pending(),
        DRAIN_TIMEOUT,
    ));
    format!("http://{addr}")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    (status, response.json().await.unwrap())
}

/// Sends raw bytes with `Connection: close` and returns the status and JSON body of the answer.
async fn raw_request(base: &str, request: Vec<u8>) -> (u16, Value) {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Routes, fallbacks, body limit

#[tokio::test]
async fn health_answers_ok_with_the_function_name() {
    let base = spawn(Router::new()).await;
    let (status, body) = json_of(reqwest::get(format!("{base}/health")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["function"], "test-fn");
    assert!(body["version"].is_string());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_json_error_format() {
    let base = spawn(Router::new().route("/things", get(|| async { "things" }))).await;
    let client = reqwest::Client::new();

    let (status, body) = json_of(client.get(format!("{base}/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let (status, body) = json_of(client.post(format!("{base}/things")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let (status, body) = json_of(
        client
            .delete(format!("{base}/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

fn body_length_echo() -> Router {
    Router::new().route(
        "/echo",
        post(|body: Bytes| async move { body.len().to_string() }),
    )
}

fn assert_payload_too_large((status, body): (u16, Value)) {
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("262144") && message.contains("256 KiB"),
        "{message}"
    );
}

#[tokio::test]
async fn a_body_at_the_limit_reaches_the_handler() {
    let base = spawn(body_length_echo()).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/echo"))
        .body(vec![b'a'; BODY_LIMIT_BYTES])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), BODY_LIMIT_BYTES.to_string());
}

#[tokio::test]
async fn an_announced_body_over_the_limit_is_refused_before_it_is_sent() {
    let base = spawn(body_length_echo()).await;
    // `Expect: 100-continue`: the server answers from the headers alone, so no body is sent.
    let request = format!(
        "POST /echo HTTP/1.1\r\nhost: test\r\nconnection: close\r\nexpect: 100-continue\r\n\
         content-length: {}\r\n\r\n",
        BODY_LIMIT_BYTES + 1
    );
    assert_payload_too_large(raw_request(&base, request.into_bytes()).await);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused() {
    let base = spawn(body_length_echo()).await;
    let size = BODY_LIMIT_BYTES + 1;
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nhost: test\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{size:x}\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'a', size));
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_payload_too_large(raw_request(&base, request).await);
}

// ---------------------------------------------------------------------------------------------
// Request spans and Cloud Logging lines

async fn tenant_task(Path(tenant): Path<String>) -> &'static str {
    let task = tracing::info_span!("task", task_name = "outbound-sync-1");
    task.in_scope(|| tracing::info!(%tenant, "task handled"));
    tracing::warn!(%tenant, "something odd");
    "done"
}

fn line_with<'a>(lines: &'a [Value], message: &str, trace: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message && l["logging.googleapis.com/trace"] == trace)
        .unwrap_or_else(|| panic!("no {message:?} line with trace {trace} in {lines:#?}"))
}

#[tokio::test]
async fn request_spans_name_route_status_latency_and_trace_in_cloud_logging_format() {
    let (logs, _guard) = capture_logs(LogFormat::Json, "info");
    let base = spawn(Router::new().route("/{tenant}/tasks", post(tenant_task))).await;
    let client = reqwest::Client::new();
    let trace_field = format!("projects/{PROJECT}/traces/{TRACE}");
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_trace_field = format!("projects/{PROJECT}/traces/{parent_trace}");

    let response = client
        .post(format!("{base}/acme/tasks"))
        .header("x-cloud-trace-context", format!("{TRACE}/12345;o=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client
        .post(format!("{base}/globex/tasks"))
        .header(
            "traceparent",
            format!("00-{parent_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let lines = logs.json_lines();
    for line in &lines {
        assert!(line.get("level").is_none(), "{line}");
        line["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("time is not RFC 3339 ({e}): {line}"));
    }

    let finished = line_with(&lines, "request finished", &trace_field);
    assert_eq!(finished["severity"], "INFO");
    assert_eq!(finished["method"], "POST");
    assert_eq!(finished["path"], "/{tenant}/tasks");
    assert_eq!(finished["status"], 200);
    assert!(finished["latency_ms"].is_u64(), "{finished}");
    assert_eq!(
        finished["logging.googleapis.com/spanId"],
        format!("{:016x}", 12345)
    );
    assert!(finished.get("trace_id").is_none(), "{finished}");

    let handled = line_with(&lines, "task handled", &trace_field);
    assert_eq!(handled["severity"], "INFO");
    assert_eq!(handled["tenant"], "acme");
    assert_eq!(handled["task_name"], "outbound-sync-1");
    assert_eq!(handled["path"], "/{tenant}/tasks");
    let odd = line_with(&lines, "something odd", &trace_field);
    assert_eq!(odd["severity"], "WARNING");

    let finished = line_with(&lines, "request finished", &parent_trace_field);
    assert_eq!(finished["path"], "/{tenant}/tasks");
    assert_eq!(
        finished["logging.googleapis.com/spanId"],
        "00f067aa0ba902b7"
    );
    assert_eq!(
        line_with(&lines, "task handled", &parent_trace_field)["tenant"],
        "globex"
    );

    let unmatched = lines
        .iter()
        .find(|l| l["message"] == "request finished" && l["status"] == 404)
        .expect("the 404 is logged");
    assert_eq!(unmatched["path"], "unmatched");
    assert!(unmatched.get("logging.googleapis.com/trace").is_none());
}

// ---------------------------------------------------------------------------------------------
// No secrets in logs

const SECRETS: [&str; 5] = [
    "sk-bearer-7f3a9c1e",
    "omneo-secret-51d2b7",
    "oauth-code-a8e1f0",
    "oauth-state-c44b92",
    "body-token-9e0d3a",
];

async fn webhook(Path(tenant): Path<String>, headers: HeaderMap, body: Bytes) -> &'static str {
    tracing::info!(%tenant, bytes = body.len(), "webhook received");
    tracing::debug!(%tenant, has_secret = headers.contains_key("x-omneo-secret"), "verifying");
    tracing::trace!(%tenant, "verified");
    "accepted"
}

async fn callback(Query(query): Query<HashMap<String, String>>) -> &'static str {
    tracing::info!(
        has_code = query.contains_key("code"),
        has_state = query.contains_key("state"),
        "oauth callback"
    );
    "installed"
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    for format in [LogFormat::Json, LogFormat::Pretty] {
        let (logs, _guard) = capture_logs(format, "trace");
        let base = spawn(
            Router::new()
                .route("/{tenant}/webhook", post(webhook))
                .route("/oauth/callback", get(callback)),
        )
        .await;
        let client = reqwest::Client::new();
        let [bearer, omneo, code, state, body_token] = SECRETS;
        let query = [("code", code), ("state", state)];
        let body = json!({"access_token": body_token, "data": "x"}).to_string();
        let mut oversized = body.clone().into_bytes();
        oversized.resize(BODY_LIMIT_BYTES + 10, b' ');
        let requests = [
            (
                client
                    .post(format!("{base}/acme/webhook"))
                    .body(body.clone()),
                200,
            ),
            (client.get(format!("{base}/oauth/callback")), 200),
            (
                client.get(format!("{base}/nowhere")).body(body.clone()),
                404,
            ),
            (client.get(format!("{base}/health")), 200),
            (
                client.post(format!("{base}/acme/webhook")).body(oversized),
                413,
            ),
        ];
        let count = requests.len();
        for (request, expected) in requests {
            let response = request
                .query(&query)
                .bearer_auth(bearer)
                .header("x-omneo-secret", omneo)
                .header("cookie", format!("session={bearer}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), expected, "{format:?}");
        }

        let text = logs.text();
        assert_eq!(
            text.matches("request finished").count(),
            count,
            "every request is logged ({format:?}):\n{text}"
        );
        assert!(
            text.contains("webhook received") && text.contains("acme"),
            "{text}"
        );
        assert!(text.contains("verified"), "trace level is on: {text}");
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} leaked ({format:?}):\n{text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

struct SlowRoute {
    started: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

async fn slow(State(route): State<Arc<SlowRoute>>) -> &'static str {
    route.started.send(()).unwrap();
    route.release.notified().await;
    "finished"
}

fn slow_router() -> (Router, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let route = Arc::new(SlowRoute {
        started,
        release: release.clone(),
    });
    let router = Router::new().route("/slow", get(slow)).with_state(route);
    (http::wrap("test-fn", router), started_rx, release)
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_lets_in_flight_requests_finish() {
    let (router, mut started, release) = slow_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        DRAIN_TIMEOUT,
    ));

    let in_flight = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the slow request starts")
        .unwrap();
    stop.send(()).unwrap();

    tokio::time::timeout(PATIENCE, async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Queued on the listener as it closed: not served either; try again.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("unexpected connect error: {e}"),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the listener closes after the shutdown signal");
    assert!(
        !server.is_finished(),
        "the server waits for the in-flight request"
    );

    release.notify_one();
    let response = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_abandons_requests_that_outlast_the_drain_timeout() {
    let (router, mut started, _never_released) = slow_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        Duration::from_millis(100),
    ));
    let _stuck = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the slow request starts")
        .unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("serve returns although a request never finishes")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Child processes: SIGTERM, AWS Lambda, configuration errors

const CHILD_MODE_VAR: &str = "RUNTIME_TEST_CHILD";
const CHILD_FUNCTION: &str = "child-fn";

/// Entry point of the child processes the tests below spawn (`RUNTIME_TEST_CHILD` = `serve`:
/// serve a function on a random port until SIGTERM; `run_function`: the whole `main` of a binary).
#[test]
#[ignore = "entry point of child processes spawned by other runtime tests"]
fn child_process() {
    let mode = std::env::var(CHILD_MODE_VAR).expect("only run as a child of the runtime tests");
    match mode.as_str() {
        "serve" => {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                telemetry::init(LogFormat::Json, None).unwrap();
                let addr = SocketAddr::from(([127, 0, 0, 1], 0));
                serve_function(CHILD_FUNCTION, Router::new(), addr)
                    .await
                    .unwrap();
            });
        }
        "run_function" => {
            let code = shared::runtime::run_function(CHILD_FUNCTION, |_app| Router::new());
            let status = (0..=2u8)
                .find(|&n| code == ExitCode::from(n))
                .expect("run_function exits with 0, 1 or 2");
            std::process::exit(status.into());
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn child(mode: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "runtime::child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_MODE_VAR, mode)
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn sigterm_makes_a_serving_process_exit_cleanly() {
    let mut process = child("serve")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(process.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["message"] == "listening"
            {
                return entry["address"].as_str().unwrap().to_owned();
            }
        }
        panic!("the child exited without listening");
    })
    .await
    .expect("the child starts listening");

    let (status, body) = json_of(
        reqwest::get(format!("http://{address}/health"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["function"]), (200, &json!(CHILD_FUNCTION)));

    let pid = process.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(PATIENCE, process.wait())
        .await
        .expect("the child exits after SIGTERM")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit}");

    let mut rest = Vec::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains("shutdown signal received") && l.contains("SIGTERM")),
        "{rest:#?}"
    );
}

#[tokio::test]
async fn a_configuration_problem_is_one_line_on_stderr_and_exit_code_2() {
    let output = child("run_function")
        .env_clear()
        .env(CHILD_MODE_VAR, "run_function")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("environment variable"))
        .collect();
    assert_eq!(
        lines,
        [format!(
            "{CHILD_FUNCTION}: missing required environment variable OAUTH_CALLBACK_URL (or PUBLIC_URL)"
        )],
        "{stderr}"
    );
}

/// A fake of the Lambda runtime API: one API Gateway HTTP API (v2) event, then the answer.
struct FakeLambda {
    handed_out: AtomicBool,
    answers: mpsc::UnboundedSender<Result<(String, Bytes), String>>,
}

const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

async fn next_invocation(State(fake): State<Arc<FakeLambda>>) -> Response {
    if fake.handed_out.swap(true, Ordering::SeqCst) {
        // One event only: the child waits here until the test ends it.
        std::future::pending::<()>().await;
    }
    let deadline = jiff::Timestamp::now().as_millisecond() + 60_000;
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/health",
        "rawQueryString": "",
        "headers": {"host": "abc123.execute-api.us-east-1.amazonaws.com", "user-agent": "test"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": "GET", "path": "/health", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.1", "userAgent": "test"},
            "requestId": "apigw-request-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "21/Apr/2026:15:08:21 +0000",
            "timeEpoch": 1_776_784_101_067_u64
        },
        "isBase64Encoded": false
    });
    (
        [
            ("lambda-runtime-aws-request-id", REQUEST_ID.to_owned()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                format!("arn:aws:lambda:us-east-1:123456789012:function:{CHILD_FUNCTION}"),
            ),
        ],
        Json(event),
    )
        .into_response()
}

async fn invocation_response(
    State(fake): State<Arc<FakeLambda>>,
    Path(id): Path<String>,
    body: Bytes,
) -> axum::http::StatusCode {
    fake.answers.send(Ok((id, body))).unwrap();
    axum::http::StatusCode::ACCEPTED
}

async fn reported_error(
    State(fake): State<Arc<FakeLambda>>,
    body: Bytes,
) -> axum::http::StatusCode {
    let _ = fake
        .answers
        .send(Err(String::from_utf8_lossy(&body).into_owned()));
    axum::http::StatusCode::ACCEPTED
}

#[tokio::test]
async fn on_lambda_the_same_router_answers_through_the_runtime_api() {
    let (answers, mut answered) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeLambda {
        handed_out: AtomicBool::new(false),
        answers,
    });
    let api = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(invocation_response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(reported_error),
        )
        .route("/2018-06-01/runtime/init/error", post(reported_error))
        .with_state(fake);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api).await });

    let mut process = child("serve")
        .env("AWS_LAMBDA_RUNTIME_API", api_addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", CHILD_FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let answer = tokio::time::timeout(PATIENCE, answered.recv())
        .await
        .expect("the child answers the invocation")
        .unwrap();
    process.kill().await.unwrap();
    let (id, body) = answer.unwrap_or_else(|error| panic!("the child reported an error: {error}"));
    assert_eq!(id, REQUEST_ID);

    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["statusCode"], 200, "{response}");
    let payload = response["body"].as_str().unwrap();
    let payload = if response["isBase64Encoded"] == true {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    } else {
        payload.to_owned()
    };
    let health: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["function"], CHILD_FUNCTION);
}

// ---------------------------------------------------------------------------------------------
// The queue delay of pushed tasks (what infra/alerts.tf's task_queue_delay metric reads)

#[tokio::test]
async fn a_pushed_tasks_request_line_names_its_queue_and_how_late_it_started() {
    use secrecy::ExposeSecret as _;
    let (logs, _guard) = capture_logs(LogFormat::Json, "info");
    let key = shared::crypto::new_keyring_spec("k1");
    let vars: HashMap<&str, String> = [
        ("PUBLIC_URL", "http://127.0.0.1:9".to_owned()),
        ("KLAVIYO_CLIENT_ID", "client".to_owned()),
        ("KLAVIYO_CLIENT_SECRET", "client-secret".to_owned()),
        ("ENCRYPTION_KEY", key.expose_secret().to_owned()),
        ("OPERATOR_TOKEN", "operator-token-of-some-length".to_owned()),
        ("STORE", "memory".to_owned()),
        ("QUEUE", "local".to_owned()),
    ]
    .into();
    let config = shared::config::Config::from_env(&|name: &str| vars.get(name).cloned()).unwrap();
    let app = shared::app::App::from_config(config).await.unwrap();
    let base = spawn(shared::functions::outbound_task::router(app)).await;
    let scheduled = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3);
    let eta = format!("{}.000000", scheduled.as_second());
    let response = reqwest::Client::new()
        .post(format!("{base}/tasks/outbound"))
        .header("x-cloudtasks-queuename", "acme-klaviyo-outbound")
        .header("x-cloudtasks-taskname", "late-task-1")
        .header("x-cloudtasks-taskretrycount", "0")
        .header("x-cloudtasks-tasketa", eta)
        .json(&shared::queue::TaskEnvelope {
            tenant: shared::domain::TenantId::parse("acme").unwrap(),
            work: shared::queue::Work::SyncProfile(shared::queue::SyncProfile {
                profile_id: shared::domain::OmneoProfileId::parse("p-1").unwrap(),
            }),
        })
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        response.text().await.unwrap()
    );

    let lines = logs.json_lines();
    let finished = lines
        .iter()
        .find(|l| l["message"] == "request finished" && l["path"] == "/tasks/outbound")
        .unwrap_or_else(|| panic!("no request line for the task in {lines:#?}"));
    assert_eq!(finished["queue"], "acme-klaviyo-outbound");
    let delay = finished["queue_delay_ms"].as_u64().expect("queue_delay_ms");
    assert!(
        (2_000..120_000).contains(&delay),
        "scheduled 3 s (to the second) before it was pushed, waited {delay} ms"
    );
}
