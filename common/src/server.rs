//! What every HTTP service shares: health and readiness routes, the 404 fallback, request spans,
//! a body limit, panics answered as 500, and graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, ErrorBody, ErrorEntry, not_found};
use crate::settings::HttpSettings;

/// The largest request body any route accepts.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// A readiness probe: each dependency's name and whether it answers.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<(&'static str, bool)>> + Send>> + Send + Sync>;

/// Wraps a service's API routes with everything every service has.
pub fn finish_router(api: Router, readiness: ReadinessCheck) -> Router {
    let health = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(move || ready(readiness.clone())));
    api.merge(health)
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn ready(readiness: ReadinessCheck) -> axum::response::Response {
    let checks = readiness().await;
    let down: Vec<ErrorEntry> = checks
        .iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| ErrorEntry::new(format!("{name} is not reachable")))
        .collect();
    if down.is_empty() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody { errors: down }),
        )
            .into_response()
    }
}

/// A bound HTTP listener. Bind with port 0 in tests and read the port back.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    pub async fn bind(settings: &HttpSettings) -> std::io::Result<Self> {
        let listener = TcpListener::bind((settings.host, settings.port)).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled: stops accepting, lets in-flight requests finish, then
    /// waits for the background tasks (event listeners, relays), which watch the same token.
    pub async fn run(
        self,
        router: Router,
        shutdown: CancellationToken,
        background: Vec<JoinHandle<()>>,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "listening");
        let token = shutdown.clone();
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
        // Stop and wait for the background tasks even when serving failed.
        shutdown.cancel();
        for task in background {
            if tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 20 s");
            }
        }
        tracing::info!("stopped");
        served
    }
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
    use http_body_util::BodyExt;
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
        let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
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
}
