//! What every HTTP service shares: health and readiness routes, the 404 fallback, request spans,
//! a body limit, panics answered as 500, background tasks that stop with the server, and graceful
//! shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::{from_fn, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_cookies::CookieManagerLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::bus::{Delivery, EventBus, ListenerOptions, Outcome, listen};
use crate::error::{ApiError, ErrorBody, ErrorEntry, not_found};
use crate::events::Event;
use crate::settings::{Env, HttpSettings, SettingsError};

/// The largest request body any route accepts.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// A readiness probe: each dependency's name and whether it answers.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<(&'static str, bool)>> + Send>> + Send + Sync>;

/// How long shutdown waits for each background task before giving up on it.
const BACKGROUND_STOP_BOUND: Duration = Duration::from_secs(20);

/// Facts `/readyz` reports beside `"status": "ready"` (e.g. `deadLetters`) that do not decide
/// readiness.
pub type ReadinessDetails = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = serde_json::Map<String, serde_json::Value>> + Send>>
        + Send
        + Sync,
>;

/// Wraps a service's API routes with everything every service has.
pub fn finish_router(api: Router, readiness: ReadinessCheck) -> Router {
    finish_router_with_details(
        api,
        readiness,
        Arc::new(|| Box::pin(async { serde_json::Map::new() })),
    )
}

/// [`finish_router`], with details added to a ready answer.
pub fn finish_router_with_details(
    api: Router,
    readiness: ReadinessCheck,
    details: ReadinessDetails,
) -> Router {
    let health = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(move || ready(readiness.clone(), details.clone())),
        );
    let routes = api
        .merge(health)
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        // The jar the session extractors (`extract::CurrentUser`, `RequireAuth`) read.
        .layer(CookieManagerLayer::new());
    with_standard_layers(routes, || {
        ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
    })
    // Outermost, so that every answer (413s and caught panics too) carries them.
    .layer(map_response(api_security_headers))
}

/// The APIs answer JSON only: nothing in them may be sniffed as HTML, run as a script, framed, or
/// leak the page a request came from.
async fn api_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The layers every router gets (body limit, panics answered with `panic_response`, request spans
/// and request ids, request metrics), for routers that bring their own fallback and failure pages.
pub fn with_standard_layers<F>(router: Router, panic_response: F) -> Router
where
    F: Fn() -> Response + Clone + Send + Sync + 'static,
{
    // The route a request matched, for the request metrics (a router without routes has none).
    let router = if router.has_routes() {
        router.route_layer(from_fn(crate::metrics::tag_matched_route))
    } else {
        router
    };
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(CatchPanicLayer::custom(move |_| panic_response()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(log_response),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Outside the panic catcher and body limit, so that their answers are counted too.
        .layer(from_fn(crate::metrics::record_requests))
}

/// The span of a request: the child of the trace context in its `traceparent`/`tracestate`
/// headers, or the root of a new trace. Probes get a debug span, neither logged nor traced.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz") {
        return tracing::debug_span!("probe", path);
    }
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!("request", method = %request.method(), path, request_id);
    crate::telemetry::continue_from_http(&span, request.headers());
    span
}

/// One line per answered request (not per probe), inside its span, so with its trace id.
fn log_response<B>(response: &Response<B>, latency: Duration, span: &tracing::Span) {
    if span.metadata().is_some_and(|m| m.name() == "request") {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = latency.as_millis() as u64,
            "request answered"
        );
    }
}

/// A readiness probe from an async check listing each dependency and whether it answers.
pub fn readiness<F, Fut>(check: F) -> ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<(&'static str, bool)>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// Ready when the database answers a ping.
pub fn database_readiness(db: mongodb::Database) -> ReadinessCheck {
    readiness(move || {
        let db = db.clone();
        async move { vec![("database", crate::store::ping(&db).await)] }
    })
}

/// Ready when the database answers a ping and the event bus is connected.
pub fn database_and_bus_readiness(db: mongodb::Database, bus: EventBus) -> ReadinessCheck {
    readiness(move || {
        let (db, bus) = (db.clone(), bus.clone());
        async move {
            vec![
                ("database", crate::store::ping(&db).await),
                ("event bus", bus.is_connected()),
            ]
        }
    })
}

/// `deadLetters`: how many events this service's consumers (queue group) moved to the
/// dead-letter stream; absent while the bus cannot say.
pub fn dead_letter_details(bus: EventBus, queue_group: &'static str) -> ReadinessDetails {
    Arc::new(move || {
        let bus = bus.clone();
        Box::pin(async move {
            let mut details = serde_json::Map::new();
            if bus.is_connected()
                && let Ok(Ok(count)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    bus.dead_letter_count(queue_group),
                )
                .await
            {
                metrics::gauge!("dead_letters", "queue_group" => queue_group).set(count as f64);
                details.insert("deadLetters".to_owned(), count.into());
            }
            details
        })
    })
}

async fn ready(readiness: ReadinessCheck, details: ReadinessDetails) -> axum::response::Response {
    let checks = readiness().await;
    crate::metrics::record_dependencies(&checks);
    let down: Vec<ErrorEntry> = checks
        .iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| ErrorEntry::new(format!("{name} is not reachable")))
        .collect();
    if down.is_empty() {
        let mut body = details().await;
        body.insert("status".to_owned(), "ready".into());
        Json(serde_json::Value::Object(body)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody { errors: down }),
        )
            .into_response()
    }
}

/// A bound HTTP listener, and the metrics listener beside it. Bind with port 0 in tests and read
/// the ports back.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
}

impl Server {
    /// Binds `host:port` and `host:metrics_port` (installing the metrics recorder if no one has);
    /// a failure names the address.
    pub async fn bind(settings: &HttpSettings) -> std::io::Result<Self> {
        let (listener, addr) = bind(settings, settings.port).await?;
        let (metrics, metrics_addr) = bind(settings, settings.metrics_port).await?;
        crate::metrics::install(None);
        Ok(Self {
            listener,
            addr,
            metrics,
            metrics_addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serves until `shutdown` is cancelled: stops accepting, lets in-flight requests finish, and
    /// stops the background tasks (event listeners, relays), then waits for them.
    pub async fn run(
        self,
        router: Router,
        shutdown: CancellationToken,
        mut background: Background,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, metrics = %self.metrics_addr, "listening");
        let metrics = crate::metrics::router(crate::metrics::install(None));
        let metrics_stop = background.token();
        let metrics_listener = self.metrics;
        background.push(tokio::spawn(async move {
            let served = axum::serve(metrics_listener, metrics)
                .with_graceful_shutdown(metrics_stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "the metrics server failed");
            }
        }));
        let stop = background.token();
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // Watching `stop` too lets this future end with `run` when `shutdown` never fires.
            tokio::select! {
                _ = shutdown.cancelled() => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        })
        .await;
        // Stop and wait for the background tasks even when serving failed.
        background.stop().await;
        tracing::info!("stopped");
        served
    }
}

/// Binds `settings.host:port`; a failure names the address.
async fn bind(settings: &HttpSettings, port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let bound = async {
        let listener = TcpListener::bind((settings.host, port)).await?;
        let addr = listener.local_addr()?;
        Ok((listener, addr))
    };
    bound.await.map_err(|err: std::io::Error| {
        let address = format!("{}:{port}", settings.host);
        std::io::Error::new(err.kind(), format!("binding {address}: {err}"))
    })
}

/// A service ready to run: its bound listener, its finished router and the tasks beside it. Each
/// service's `app::build` makes one.
pub struct App {
    server: Server,
    router: Router,
    background: Background,
}

impl App {
    pub fn new(server: Server, router: Router, background: Background) -> Self {
        Self {
            server,
            router,
            background,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Where `GET /metrics` is served (`METRICS_PORT`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.metrics_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops the background tasks and waits for them.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.server
            .run(self.router, shutdown, self.background)
            .await
    }
}

/// The tasks a service runs beside its HTTP server (event listeners, outbox relay, poller) and the
/// token they watch. `Server::run` stops them when it stops serving; dropping an unrun
/// `Background` (a failed `build`, an application never run) stops them too, so they never
/// outlive their application.
#[derive(Debug)]
pub struct Background {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _stop_on_drop: DropGuard,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        // The tasks record metrics from their start, which may be before the server binds.
        crate::metrics::install(None);
        let stop = CancellationToken::new();
        Self {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            tasks: Vec::new(),
        }
    }

    /// The token to hand to a task (`listen`, `spawn_relay`, …); cancelled when the tasks must stop.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Adds a task that watches `token()`; shutdown waits for it.
    pub fn push(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Starts a durable listener of `E` for `queue_group` (see [`listen`]): each event is handed to
    /// `handler` with its own clone of `context` (what the handler needs: stores, bus, …).
    /// Shutdown stops it and waits for the events in hand.
    pub async fn listen<E, C, H, Fut>(
        &mut self,
        bus: &EventBus,
        queue_group: &str,
        context: C,
        handler: H,
    ) -> anyhow::Result<()>
    where
        E: Event,
        C: Clone + Send + Sync + 'static,
        H: Fn(C, E, Delivery) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Outcome>> + Send + 'static,
    {
        let task = listen::<E, _, _>(
            bus,
            ListenerOptions {
                concurrency: bus.handlers_per_subject(),
                ..ListenerOptions::new(queue_group)
            },
            self.token(),
            move |event, delivery| handler(context.clone(), event, delivery),
        )
        .await?;
        self.push(task);
        Ok(())
    }

    /// Cancels the token and waits for every task, each for at most 20 s.
    async fn stop(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(BACKGROUND_STOP_BOUND, task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 20 s");
            }
        }
    }
}

impl Extend<JoinHandle<()>> for Background {
    fn extend<I: IntoIterator<Item = JoinHandle<()>>>(&mut self, tasks: I) {
        self.tasks.extend(tasks);
    }
}

/// The whole of a service's `main`: JSON logs, its settings from the process environment (a
/// missing or invalid one is named in the error), `build`, then serving until SIGTERM or SIGINT.
pub async fn run_service<S, B, Fut>(
    name: &'static str,
    settings: fn(&Env) -> Result<S, SettingsError>,
    build: B,
) -> anyhow::Result<()>
where
    B: FnOnce(S) -> Fut,
    Fut: Future<Output = anyhow::Result<App>>,
{
    let env = Env::from_process();
    crate::telemetry::try_init(name, &env)?;
    // Before `build`, so that every series carries the service's name.
    crate::metrics::install(Some(name));
    let app = build(settings(&env)?).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let served = app.run_until_stopped(shutdown).await;
    // The spans of the last requests and events, when they are exported.
    if let Err(err) = tokio::task::spawn_blocking(crate::telemetry::shutdown).await {
        tracing::warn!(error = %err, "flushing the span exporter failed");
    }
    served?;
    Ok(())
}

/// Cancels the token on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    fn app(up: bool) -> Router {
        let api = Router::new().route("/api/things", post(|| async { "made" }));
        finish_router(
            api,
            Arc::new(move || Box::pin(async move { vec![("database", up)] })),
        )
    }

    async fn call(app: Router, method: &str, uri: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap_or_default();
        crate::test_support::respond(app, request).await
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_404_in_the_error_shape() {
        let expected = (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"message":"Not Found"}]}"#.to_owned(),
        );
        assert_eq!(call(app(true), "GET", "/api/nothing").await, expected);
        assert_eq!(call(app(true), "DELETE", "/api/things").await, expected);
    }

    #[tokio::test]
    async fn every_api_answer_carries_the_security_headers() {
        for (method, uri) in [
            ("POST", "/api/things"),
            ("GET", "/api/nothing"),
            ("GET", "/readyz"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap_or_default();
            let response = app(true)
                .oneshot(request)
                .await
                .unwrap_or_else(|e| match e {});
            let headers = response.headers();
            for (name, value) in [
                ("x-content-type-options", "nosniff"),
                (
                    "content-security-policy",
                    "default-src 'none'; frame-ancestors 'none'",
                ),
                ("x-frame-options", "DENY"),
                ("referrer-policy", "no-referrer"),
            ] {
                assert_eq!(
                    headers.get(name).and_then(|v| v.to_str().ok()),
                    Some(value),
                    "{method} {uri}: {name}"
                );
            }
        }
    }

    #[tokio::test]
    async fn readiness_reports_each_unreachable_dependency() {
        assert_eq!(
            call(app(true), "GET", "/readyz").await,
            (StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
        );
        assert_eq!(
            call(app(false), "GET", "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"errors":[{"message":"database is not reachable"}]}"#.to_owned()
            )
        );
        assert_eq!(call(app(false), "GET", "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_are_counted_by_matched_route_never_by_raw_path() {
        let handle = crate::metrics::install(None);
        let api = Router::new().route("/api/counted/{id}", get(|| async { "one" }));
        let app = finish_router(api, readiness(|| async { Vec::new() }));
        call(app.clone(), "GET", "/api/counted/abc123").await;
        call(app, "GET", "/api/uncounted/abc123").await;

        let text = handle.render();
        assert!(
            text.lines()
                .any(|line| line.starts_with("http_requests_total")
                    && line.contains(r#"route="/api/counted/{id}""#)
                    && line.contains(r#"status="200""#)),
            "{text}"
        );
        assert!(text.contains(r#"route="unmatched""#), "{text}");
        assert!(!text.contains("abc123"), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    async fn buggy_handler() -> &'static str {
        panic!("a bug in a handler")
    }

    #[tokio::test]
    async fn a_handler_panic_is_a_generic_500_in_the_error_shape() {
        let api = Router::new().route("/api/boom", get(buggy_handler));
        let app = finish_router(api, readiness(|| async { Vec::new() }));
        assert_eq!(
            call(app, "GET", "/api/boom").await,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"errors":[{"message":"Something went wrong"}]}"#.to_owned()
            )
        );
    }

    #[tokio::test]
    async fn standard_layers_answer_panics_with_the_callers_response_and_tag_requests() {
        let router = Router::new()
            .route("/boom", get(buggy_handler))
            .route("/echo", post(|body: String| async move { body }));
        let app = with_standard_layers(router, || {
            (StatusCode::IM_A_TEAPOT, "caller's page").into_response()
        });

        assert_eq!(
            call(app.clone(), "GET", "/boom").await,
            (StatusCode::IM_A_TEAPOT, "caller's page".to_owned())
        );

        let response = app
            .clone()
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri("/echo")
                    .body(Body::from("hi"))
                    .unwrap_or_default(),
            )
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-request-id"));

        let oversized = Request::builder()
            .method("POST")
            .uri("/echo")
            .body(Body::from(vec![b'x'; BODY_LIMIT_BYTES + 1]))
            .unwrap_or_default();
        let response = app.oneshot(oversized).await.unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A task that, once the background's token is cancelled, takes `linger` to finish and then
    /// says so on the returned channel.
    fn lingering_task(background: &mut Background, linger: Duration) -> oneshot::Receiver<()> {
        let (finished, finished_rx) = oneshot::channel();
        let token = background.token();
        background.push(tokio::spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(linger).await;
            let _ = finished.send(());
        }));
        finished_rx
    }

    #[tokio::test]
    async fn a_background_dropped_without_running_stops_its_tasks() {
        let mut background = Background::new();
        let finished = lingering_task(&mut background, Duration::ZERO);

        drop(background);

        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("the task stops once its background is dropped")
            .expect("the task finishes rather than being dropped");
    }

    /// One plain HTTP/1.1 GET on a fresh connection; the whole reply, head and body.
    async fn get_over_tcp(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the server accepts connections");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .await
            .expect("response read");
        reply
    }

    async fn bound_server() -> Server {
        let settings = HttpSettings {
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
            metrics_port: 0,
        };
        Server::bind(&settings).await.expect("binding a free port")
    }

    #[tokio::test]
    async fn run_serves_until_shutdown_then_waits_for_the_background_tasks() {
        let server = bound_server().await;
        let addr = server.addr();
        let mut background = Background::new();
        let token = background.token();
        let mut finished = lingering_task(&mut background, Duration::from_millis(200));
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(server.run(
            Router::new().route("/ping", get(|| async { "pong" })),
            shutdown.clone(),
            background,
        ));

        let reply = get_over_tcp(addr, "/ping").await;
        assert!(reply.ends_with("pong"), "unexpected reply: {reply}");
        assert!(!token.is_cancelled());

        shutdown.cancel();
        let served = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic");

        assert!(served.is_ok());
        assert!(token.is_cancelled());
        assert_eq!(
            finished.try_recv(),
            Ok(()),
            "run returned before its background task finished"
        );
    }

    #[tokio::test]
    async fn the_metrics_port_serves_metrics_while_the_server_runs_and_stops_with_it() {
        let server = bound_server().await;
        let (addr, metrics_addr) = (server.addr(), server.metrics_addr());
        assert_ne!(addr, metrics_addr);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(server.run(
            Router::new().route("/ping", get(|| async { "pong" })),
            shutdown.clone(),
            Background::new(),
        ));
        assert!(get_over_tcp(addr, "/ping").await.ends_with("pong"));

        let scraped = get_over_tcp(metrics_addr, "/metrics").await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(scraped.contains("text/plain; version=0.0.4"), "{scraped}");
        assert!(
            get_over_tcp(addr, "/metrics")
                .await
                .starts_with("HTTP/1.1 404")
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
            .expect("served");
        assert!(tokio::net::TcpStream::connect(metrics_addr).await.is_err());
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_the_address() {
        let taken = bound_server().await;
        let settings = HttpSettings {
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: taken.addr().port(),
            metrics_port: 0,
        };

        let err = match Server::bind(&settings).await {
            Ok(_) => panic!("a port that is already bound cannot be bound again"),
            Err(err) => err,
        };

        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let expected = format!("binding 127.0.0.1:{}: ", settings.port);
        assert!(err.to_string().starts_with(&expected), "{err}");
    }

    #[tokio::test]
    async fn dropping_a_running_server_stops_its_background_tasks() {
        let server = bound_server().await;
        let addr = server.addr();
        let background = Background::new();
        let token = background.token();
        let running = tokio::spawn(server.run(
            Router::new().route("/ping", get(|| async { "pong" })),
            CancellationToken::new(),
            background,
        ));
        assert!(get_over_tcp(addr, "/ping").await.ends_with("pong"));

        running.abort();
        let _ = running.await;

        assert!(token.is_cancelled());
    }
}
