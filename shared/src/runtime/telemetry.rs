//! Log lines (product.md §9, platform.md "Cloud Run"): one JSON object per line that Cloud Logging
//! reads — `severity`, `message`, `time`, the fields of the event and of every span around it
//! flattened to the top level, and the trace of the request that caused it — or human-readable
//! lines for local use.
//!
//! A span field named [`TRACE_ID_FIELD`] (and [`SPAN_ID_FIELD`]) becomes Cloud Logging's
//! `logging.googleapis.com/trace` (`projects/{project}/traces/{id}`) and
//! `logging.googleapis.com/spanId`; the request span of [`super::http`] records them from the
//! `X-Cloud-Trace-Context` or `traceparent` header ([`TraceContext`]).
//!
//! `tracing-stackdriver` was considered: it nests span fields under `span`/`spans` instead of
//! flattening them, renames fields to camelCase, and can only fill the trace field through
//! OpenTelemetry, so this small formatter is used instead.

use std::fmt;

use axum::http::HeaderMap;
use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::Visit;
use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// The span field whose value becomes `logging.googleapis.com/trace`.
pub const TRACE_ID_FIELD: &str = "trace_id";
/// The span field whose value becomes `logging.googleapis.com/spanId`.
pub const SPAN_ID_FIELD: &str = "span_id";

/// Installs the process-wide subscriber writing to stdout, filtered by `RUST_LOG` (default `info`).
/// `project` is the Google Cloud project the trace field names; without it the bare trace id is written.
pub fn init(format: LogFormat, project: Option<String>) -> anyhow::Result<()> {
    tracing::subscriber::set_global_default(subscriber(
        format,
        project,
        env_filter(),
        std::io::stdout,
    ))
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// The filter from `RUST_LOG`, `info` when it is unset; invalid directives are skipped.
pub fn env_filter() -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy()
}

/// A subscriber writing `format` lines to `writer` (stdout in production, a buffer in tests).
///
/// Whatever `filter` says, `lambda_runtime` is capped at `debug`: at `trace` it logs every raw
/// invocation event, which carries request headers, query strings and bodies — tokens included.
pub fn subscriber<W>(
    format: LogFormat,
    project: Option<String>,
    filter: EnvFilter,
    writer: W,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging { project })
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };
    tracing_subscriber::registry()
        .with(output)
        .with(filter.add_directive(no_raw_lambda_events()))
}

fn no_raw_lambda_events() -> Directive {
    "lambda_runtime=debug"
        .parse()
        .expect("a constant, valid directive")
}

/// The JSON event formatter: one Cloud Logging entry per event.
struct CloudLogging {
    project: Option<String>,
}

impl<S> FormatEvent<S, JsonFields> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut entry = Map::new();
        // Outer spans first, so an inner span's field of the same name wins, and the event's own over all.
        for span in ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
        {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                continue;
            };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                entry.extend(fields);
            }
        }
        event.record(&mut JsonVisitor(&mut entry));

        if let Some(trace_id) = entry.remove(TRACE_ID_FIELD) {
            let trace_id = string_of(trace_id);
            let trace = match &self.project {
                Some(project) => format!("projects/{project}/traces/{trace_id}"),
                None => trace_id,
            };
            entry.insert("logging.googleapis.com/trace".into(), trace.into());
        }
        if let Some(span_id) = entry.remove(SPAN_ID_FIELD) {
            entry.insert(
                "logging.googleapis.com/spanId".into(),
                string_of(span_id).into(),
            );
        }
        let metadata = event.metadata();
        entry.insert("severity".into(), severity(metadata.level()).into());
        entry.insert("time".into(), jiff::Timestamp::now().to_string().into());
        entry.insert("target".into(), metadata.target().into());
        entry
            .entry("message")
            .or_insert_with(|| Value::String(String::new()));

        let line = serde_json::to_string(&entry).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

fn string_of(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Cloud Logging's `LogSeverity` name of a level.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        let chain = crate::api_error::ErrorChain(value).to_string();
        self.0.insert(field.name().into(), chain.into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The trace a request belongs to, from its `X-Cloud-Trace-Context: TRACE/SPAN;o=1` or
/// `traceparent: 00-TRACE-SPAN-01` header. Only well-formed ids are kept, so a header can put
/// nothing else into a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits (Cloud Logging's `spanId` format), when the header carried one.
    pub span_id: Option<String>,
}

impl TraceContext {
    /// The trace of a request: `X-Cloud-Trace-Context` first (what Cloud Run sets), else `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        header("x-cloud-trace-context")
            .and_then(Self::from_cloud_trace_context)
            .or_else(|| header("traceparent").and_then(Self::from_traceparent))
    }

    /// Parses `TRACE_ID[/SPAN_ID][;o=OPTIONS]`, where the span id is decimal.
    pub fn from_cloud_trace_context(value: &str) -> Option<Self> {
        let ids = value.split(';').next()?.trim();
        let (trace, span) = match ids.split_once('/') {
            Some((trace, span)) => (trace, Some(span)),
            None => (ids, None),
        };
        let trace_id = hex_id(trace, 32)?;
        let span_id = span
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s != 0)
            .map(|s| format!("{s:016x}"));
        Some(Self { trace_id, span_id })
    }

    /// Parses a W3C `traceparent`: `VERSION-TRACE_ID-PARENT_ID-FLAGS`.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if hex_id(version, 2).is_none_or(|v| v == "ff") || hex_id(flags, 2).is_none() {
            return None;
        }
        Some(Self {
            trace_id: hex_id(trace, 32)?,
            span_id: Some(hex_id(span, 16)?),
        })
    }
}

/// `value` lowercased when it is exactly `len` hex digits and not all zeros (an invalid id).
fn hex_id(value: &str, len: usize) -> Option<String> {
    let valid = value.len() == len
        && value.bytes().all(|b| b.is_ascii_hexdigit())
        && (len == 2 || value.bytes().any(|b| b != b'0'));
    valid.then(|| value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "105445aa7843bc8bf206b12000100000";

    #[test]
    fn cloud_trace_context_converts_the_decimal_span_id_to_hex() {
        let context = TraceContext::from_cloud_trace_context(&format!("{TRACE}/1;o=1")).unwrap();
        assert_eq!(context.trace_id, TRACE);
        assert_eq!(context.span_id.as_deref(), Some("0000000000000001"));
        let bare = TraceContext::from_cloud_trace_context(TRACE).unwrap();
        assert_eq!(bare.span_id, None);
    }

    #[test]
    fn traceparent_yields_trace_and_span() {
        let context = TraceContext::from_traceparent(&format!(
            "00-{}-00F067AA0BA902B7-01",
            TRACE.to_uppercase()
        ))
        .unwrap();
        assert_eq!(context.trace_id, TRACE);
        assert_eq!(context.span_id.as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn malformed_or_hostile_headers_are_ignored() {
        for value in [
            "",
            "nothex-nothex",
            "00000000000000000000000000000000/1;o=1",
            "105445aa7843bc8bf206b1200010000/1",
            "secret-token\"injected",
        ] {
            assert_eq!(
                TraceContext::from_cloud_trace_context(value),
                None,
                "{value}"
            );
        }
        for value in [
            format!("00-{TRACE}-0000000000000000-01"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{TRACE}-00f067aa0ba902b7"),
            format!("00-{TRACE}x-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(TraceContext::from_traceparent(&value), None, "{value}");
        }
    }

    #[test]
    fn cloud_trace_context_wins_over_traceparent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            TraceContext::from_headers(&headers).unwrap().trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        headers.insert(
            "x-cloud-trace-context",
            format!("{TRACE}/7").parse().unwrap(),
        );
        assert_eq!(
            TraceContext::from_headers(&headers).unwrap().trace_id,
            TRACE
        );
    }
}
