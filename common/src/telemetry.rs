//! Logs and traces through `tracing`.
//!
//! Logs are JSON lines filtered by `RUST_LOG` (default `info`); a line written inside a traced
//! span carries its `trace_id` at the top level. Traces follow the W3C trace context
//! (`traceparent`, `tracestate`): a request's span is the child of the context in its headers (or
//! the root of a new trace), calls and events carry the context of the span that makes them
//! (HTTP headers, NATS message headers, the outbox's pending events), and a listener's span is
//! the child of the context in the message it handles. Trace ids are made and passed on whether
//! or not spans are exported; they are exported over OTLP (HTTP/protobuf) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`settings::TracingSettings`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::{Level, Subscriber};
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, OtelData};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, filter};

use crate::settings::{Env, SettingsError, TracingSettings};

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// How long shutdown waits for the exporter to send the spans it holds.
const EXPORT_FLUSH_BOUND: Duration = Duration::from_secs(5);

/// The tracer provider of the process, kept to flush it at shutdown (only when exporting).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once, reading `OTEL_EXPORTER_OTLP_ENDPOINT` from the process's
/// environment; later calls are no-ops (tests call it from many places). A bad endpoint is logged
/// and nothing is exported (`run_service` refuses to start with one: [`try_init`]).
pub fn init(service: &'static str) {
    if let Err(err) = try_init(service, &Env::from_process()) {
        tracing::error!(error = %err, "spans are not exported");
    }
}

/// [`init`], failing on a bad `OTEL_EXPORTER_OTLP_ENDPOINT` (after installing the subscriber
/// without an exporter, so that the failure can be logged).
pub fn try_init(service: &'static str, env: &Env) -> Result<(), SettingsError> {
    let settings = TracingSettings::from_env(env);
    let endpoint = settings
        .as_ref()
        .ok()
        .and_then(|settings| settings.otlp_endpoint.as_deref());
    let (provider, exporter_problem) = match endpoint.map(|url| exporting_provider(service, url)) {
        None => (local_provider(service), None),
        Some(Ok(provider)) => (provider, None),
        Some(Err(problem)) => (local_provider(service), Some(problem)),
    };
    let exporting = endpoint.is_some() && exporter_problem.is_none();
    if install(service, &provider) {
        if exporting {
            let _ = PROVIDER.set(provider);
        }
        tracing::info!(service, exporting, endpoint, "logging initialised");
        if let Some(problem) = exporter_problem {
            tracing::error!(error = %problem, "spans are not exported");
        }
    }
    settings.map(drop)
}

/// A provider that exports its spans in batches (from a thread of its own) to `endpoint`.
fn exporting_provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|err| format!("cannot export spans to {endpoint}: {err}"))?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_batch_exporter(exporter)
        .build())
}

/// A provider without processors: ids are made and propagated, nothing is recorded elsewhere,
/// and no thread runs.
fn local_provider(service: &'static str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource(service))
        .build()
}

fn resource(service: &'static str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build()
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL; traces go to its `/v1/traces`.
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// Installs the subscriber: JSON lines with trace ids filtered by `RUST_LOG`, and spans of level
/// info and above turned into OpenTelemetry spans whatever `RUST_LOG` says (so that propagation
/// does not depend on the log level), with warnings and errors as their events.
fn install(service: &'static str, provider: &SdkTracerProvider) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .event_format(json_lines())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(otel_layer(service, provider))
        .with(logs)
        .try_init()
        .is_ok()
}

/// The layer that makes OpenTelemetry spans of `tracing`'s spans.
pub fn otel_layer<S>(
    service: &'static str,
    provider: &SdkTracerProvider,
) -> impl tracing_subscriber::Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(filter::filter_fn(|metadata| {
            if metadata.is_span() {
                *metadata.level() <= Level::INFO
            } else {
                *metadata.level() <= Level::WARN
            }
        }))
}

/// A subscriber that traces as the services do (without an exporter) and logs nothing: for tests
/// of propagation (`tracing::subscriber::set_default` on a current-thread runtime).
pub fn tracing_only_subscriber(service: &'static str) -> impl Subscriber + Send + Sync {
    tracing_subscriber::registry().with(otel_layer(service, &local_provider(service)))
}

/// Sends the spans the exporter still holds (a no-op without an exporter). Blocking: call it
/// from a blocking thread.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(err) = provider.shutdown_with_timeout(EXPORT_FLUSH_BOUND)
    {
        tracing::warn!(error = %err, "could not export the last spans");
    }
}

/// Formats each line with the inner (JSON) format, adding `"trace_id"` when the line is written
/// inside a traced span.
struct WithTraceId<F>(F);

/// The services' log lines: JSON with the current span and the trace id, without the target.
fn json_lines() -> WithTraceId<Format<Json>> {
    WithTraceId(
        tracing_subscriber::fmt::format()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false),
    )
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.lookup_current().and_then(|current| {
            current.scope().find_map(|span| {
                span.extensions()
                    .get::<OtelData>()
                    .and_then(OtelData::trace_id)
                    .filter(|id| *id != opentelemetry::TraceId::INVALID)
            })
        });
        let Some(trace_id) = trace_id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, "{object},\"trace_id\":\"{trace_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

/// The trace context of a span as its two W3C headers; empty outside any traced span. Stored with
/// the outbox's pending events, so that an event published later still carries its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of the current span.
    pub fn current() -> Self {
        Self::of(&tracing::Span::current())
    }

    /// The context of `span` (its trace, with `span` as the parent of whatever receives it).
    pub fn of(span: &tracing::Span) -> Self {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return Self::default();
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        Self {
            traceparent: carrier.remove(TRACEPARENT),
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none()
    }

    /// The trace id (32 hex digits) of `traceparent`, if it has one.
    pub fn trace_id(&self) -> Option<&str> {
        let traceparent = self.traceparent.as_deref()?;
        traceparent.split('-').nth(1)
    }

    /// The headers, as HTTP headers (for reqwest and other `http` clients).
    pub fn http_headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in self.pairs() {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// The context a NATS message's headers carry (empty if none).
    pub fn from_nats(headers: &async_nats::HeaderMap) -> Self {
        let header = |name| {
            headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .filter(|value| !value.is_empty())
        };
        Self {
            traceparent: header(TRACEPARENT),
            tracestate: header(TRACESTATE),
        }
    }

    /// Adds the headers to a NATS message's headers.
    pub fn add_to_nats(&self, headers: &mut async_nats::HeaderMap) {
        for (name, value) in self.pairs() {
            headers.insert(name, value);
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TRACEPARENT, self.traceparent.as_deref()),
            (TRACESTATE, self.tracestate.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
    }
}

/// Makes `span` the child of the trace context in HTTP `headers`, when they carry a valid one
/// (else `span` stays the root of a new trace). Call it before the span is first entered.
pub fn continue_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    continue_from(span, &HttpHeaders(headers));
}

/// Makes `span` the child of the trace context in a NATS message's headers, if any.
pub fn continue_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        continue_from(span, &NatsHeaders(headers));
    }
}

/// Makes `span` the child of a trace context kept with a job (the outbox's events, expiry jobs),
/// if it holds one.
pub fn continue_from_stored(span: &tracing::Span, trace: &TraceContext) {
    if !trace.is_empty() {
        continue_from(span, trace);
    }
}

fn continue_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    if !parent.span().span_context().is_valid() {
        return;
    }
    if let Err(err) = span.set_parent(parent) {
        // Only when the subscriber has no OpenTelemetry layer (tests without logging): the span
        // then has no trace to continue anyway.
        tracing::debug!(error = %err, "cannot continue the caller's trace");
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.pairs().map(|(name, _)| name).collect()
    }
}

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` with a subscriber that traces as the services do (no exporter), and JSON logs
    /// written to the returned buffer.
    fn traced<T>(f: impl FnOnce() -> T) -> (T, String) {
        let provider = local_provider("test");
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = Arc::clone(&buffer);
            move || BufferWriter(Arc::clone(&buffer))
        };
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .event_format(json_lines())
            .with_writer(writer);
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer("test", &provider))
            .with(logs);
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.lock().map(|b| b.clone()).unwrap_or_default());
        (value, text.unwrap_or_default())
    }

    struct BufferWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for BufferWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn http_headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, http::HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_span_continues_the_trace_of_the_http_headers_and_passes_it_on_as_its_child() {
        let (passed_on, _) = traced(|| {
            let span = tracing::info_span!("request");
            continue_from_http(
                &span,
                &http_headers(&[(TRACEPARENT, CALLER), (TRACESTATE, "vendor=1")]),
            );
            span.in_scope(TraceContext::current)
        });
        assert_eq!(passed_on.trace_id(), Some(TRACE_ID));
        let traceparent = passed_on.traceparent.clone().unwrap();
        assert!(traceparent.starts_with("00-") && traceparent.ends_with("-01"));
        assert_ne!(
            traceparent, CALLER,
            "the span passed on is the request's, not the caller's"
        );
        assert_eq!(passed_on.tracestate.as_deref(), Some("vendor=1"));

        let injected = passed_on.http_headers();
        assert_eq!(
            injected.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(traceparent.as_str())
        );
        assert_eq!(
            injected.get(TRACESTATE).and_then(|v| v.to_str().ok()),
            Some("vendor=1")
        );
    }

    #[test]
    fn without_a_valid_traceparent_a_span_begins_a_trace_of_its_own() {
        for headers in [
            http_headers(&[]),
            http_headers(&[(TRACEPARENT, "00-not-a-trace-01")]),
            http_headers(&[(
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
        ] {
            let (passed_on, _) = traced(|| {
                let span = tracing::info_span!("request");
                continue_from_http(&span, &headers);
                span.in_scope(TraceContext::current)
            });
            let trace_id = passed_on.trace_id().unwrap().to_owned();
            assert_eq!(trace_id.len(), 32, "{passed_on:?}");
            assert_ne!(trace_id, TRACE_ID);
            assert_ne!(trace_id, "0".repeat(32));
        }
    }

    #[test]
    fn outside_any_span_there_is_no_trace_to_pass_on() {
        let (passed_on, _) = traced(TraceContext::current);
        assert!(passed_on.is_empty());
        assert!(passed_on.http_headers().is_empty());
        let mut headers = async_nats::HeaderMap::new();
        passed_on.add_to_nats(&mut headers);
        assert!(headers.get(TRACEPARENT).is_none());
        assert!(TraceContext::from_nats(&headers).is_empty());
    }

    #[test]
    fn a_listener_span_continues_the_trace_in_the_nats_headers() {
        let (handled_in, _) = traced(|| {
            let publisher = tracing::info_span!("request");
            continue_from_http(&publisher, &http_headers(&[(TRACEPARENT, CALLER)]));
            let mut headers = async_nats::HeaderMap::new();
            publisher
                .in_scope(TraceContext::current)
                .add_to_nats(&mut headers);

            assert_eq!(
                TraceContext::from_nats(&headers),
                publisher.in_scope(TraceContext::current)
            );
            let listener = tracing::info_span!("event");
            continue_from_nats(&listener, Some(&headers));
            listener.in_scope(TraceContext::current)
        });
        assert_eq!(handled_in.trace_id(), Some(TRACE_ID));

        let (unheaded, _) = traced(|| {
            let listener = tracing::info_span!("event");
            continue_from_nats(&listener, None);
            listener.in_scope(TraceContext::current)
        });
        assert_ne!(unheaded.trace_id(), Some(TRACE_ID));
        assert!(!unheaded.is_empty(), "a new trace begins");
    }

    #[test]
    fn a_span_continues_a_stored_trace_and_begins_its_own_without_one() {
        let stored = traced(|| {
            let span = tracing::info_span!("request");
            continue_from_http(&span, &http_headers(&[(TRACEPARENT, CALLER)]));
            span.in_scope(TraceContext::current)
        })
        .0;
        let (continued, _) = traced(|| {
            let span = tracing::info_span!("expiry");
            continue_from_stored(&span, &stored);
            span.in_scope(TraceContext::current)
        });
        assert_eq!(continued.trace_id(), Some(TRACE_ID));
        assert_ne!(continued, stored);

        let (own, _) = traced(|| {
            let span = tracing::info_span!("expiry");
            continue_from_stored(&span, &TraceContext::default());
            span.in_scope(TraceContext::current)
        });
        assert!(own.trace_id().is_some_and(|id| id != TRACE_ID), "{own:?}");
    }

    #[test]
    fn log_lines_in_a_traced_span_carry_the_trace_id_and_others_do_not() {
        let ((), logs) = traced(|| {
            tracing::info!("before");
            let span = tracing::info_span!("request", path = "/api/orders");
            continue_from_http(&span, &http_headers(&[(TRACEPARENT, CALLER)]));
            span.in_scope(|| {
                tracing::info!("in the request");
                tracing::info_span!("create_order").in_scope(|| tracing::warn!("nested"));
            });
        });
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{logs}");
        assert_eq!(lines[0]["fields"]["message"], "before");
        assert!(lines[0].get("trace_id").is_none(), "{logs}");
        for line in &lines[1..] {
            assert_eq!(line["trace_id"], TRACE_ID, "{logs}");
        }
        assert_eq!(lines[1]["span"]["path"], "/api/orders");
        assert_eq!(lines[2]["span"]["name"], "create_order");
    }

    #[test]
    fn the_trace_context_is_stored_only_when_there_is_one() {
        let stored = serde_json::to_value(TraceContext::default()).unwrap();
        assert_eq!(stored, serde_json::json!({}));
        let read: TraceContext = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(read.is_empty());
        let kept = TraceContext {
            traceparent: Some(CALLER.to_owned()),
            tracestate: None,
        };
        let stored = serde_json::to_value(&kept).unwrap();
        assert_eq!(stored, serde_json::json!({ "traceparent": CALLER }));
        assert_eq!(
            serde_json::from_value::<TraceContext>(stored).unwrap(),
            kept
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_an_endpoint_spans_are_exported_over_otlp_http_protobuf() {
        use wiremock::matchers::{method, path};
        let collector = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .respond_with(wiremock::ResponseTemplate::new(200))
            .mount(&collector)
            .await;
        let provider = exporting_provider("test", &format!("{}/", collector.uri())).unwrap();
        let subscriber = tracing_subscriber::registry().with(otel_layer("test", &provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            continue_from_http(&span, &http_headers(&[(TRACEPARENT, CALLER)]));
            span.in_scope(|| tracing::warn!("something to see"));
        });
        // What shutdown does: the batch is sent before it returns.
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_FLUSH_BOUND))
            .await
            .unwrap()
            .unwrap();

        let received = collector.received_requests().await.unwrap();
        assert_eq!(received.len(), 1, "{received:?}");
        let request = &received[0];
        assert_eq!(
            request
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/x-protobuf")
        );
        // The protobuf holds the trace id as its 16 bytes, and the service's name as text.
        let trace_id: Vec<u8> = (0..TRACE_ID.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&TRACE_ID[i..i + 2], 16).unwrap())
            .collect();
        assert!(request.body.windows(16).any(|w| w == trace_id.as_slice()));
        assert!(request.body.windows(4).any(|w| w == b"test"));
    }

    #[test]
    fn spans_go_to_the_collectors_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
    }
}
