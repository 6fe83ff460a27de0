//! Builds the client application: the API handle, state, router with its layers, listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::map_response;
use axum::response::Response;
use common::server::{BODY_LIMIT_BYTES, Server};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::Api;
use crate::routes;
use crate::settings::Settings;
use crate::views::internal_error_page;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub api: Api,
    pub stripe_publishable_key: Option<Arc<str>>,
}

pub struct Application {
    server: Server,
    router: Router,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let state = AppState {
            api: Api::new(&settings.api_base_url).context("building the HTTP client")?,
            stripe_publishable_key: settings.stripe_publishable_key.map(Arc::from),
        };
        let router = with_layers(routes::router(state));
        let server = Server::bind(&settings.http)
            .await
            .with_context(|| format!("binding {}:{}", settings.http.host, settings.http.port))?;
        Ok(Self { server, router })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.server.run(self.router, shutdown, Vec::new()).await
    }
}

/// The same layers as `common::server::finish_router` (body limit, panics caught, request ids and
/// spans), except that failures are HTML pages, plus the headers a browser-facing site needs.
fn with_layers(router: Router) -> Router {
    router
        .layer(map_response(security_headers))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            internal_error_page()
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

/// Scripts only from ourselves and Stripe Checkout (whose iframe and images come from Stripe);
/// forms only post to ourselves; nobody frames us.
const CSP: &str = "default-src 'self'; script-src 'self' https://checkout.stripe.com; \
     frame-src https://checkout.stripe.com; connect-src 'self' https://checkout.stripe.com; \
     img-src 'self' data: https://*.stripe.com; style-src 'self' 'unsafe-inline'; \
     form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}
