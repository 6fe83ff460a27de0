//! Builds the client application: the API handle, state, router with its layers, listener.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::FromRef;
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::{from_fn, map_response};
use axum::response::Response;
use axum_csrf::CsrfConfig;
use common::server::{App, Background, Server, with_standard_layers};

use crate::api::Api;
use crate::cross_site::refuse_cross_site_posts;
use crate::csrf;
use crate::routes;
use crate::settings::Settings;
use crate::views::internal_error_page;

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub api: Api,
    pub stripe_publishable_key: Option<Arc<str>>,
    /// Where the order page loads Stripe.js from (with a publishable key only).
    pub stripe_js_url: Arc<str>,
    /// How forms' CSRF tokens are made and checked (see `csrf`).
    pub csrf: CsrfConfig,
}

/// Builds the service; nothing runs beside its server: no listeners or relays.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let state = AppState {
        api: Api::new(&settings.api_base_url, settings.client_address_key)
            .context("building the HTTP client")?,
        stripe_publishable_key: settings.stripe_publishable_key.map(Arc::from),
        stripe_js_url: Arc::from(settings.stripe_js_url.as_str()),
        csrf: csrf::config(&settings.csrf_key, settings.cookie_secure),
    };
    let csp = content_security_policy(&settings.stripe_js_url)?;
    let router = with_layers(routes::router(state), csp);
    let server = Server::bind(&settings.http).await?;
    Ok(App::new(server, router, Background::new()))
}

/// The standard layers (body limit, panics caught, request ids and spans), with failures as HTML
/// pages, plus the headers a browser-facing site needs.
fn with_layers(router: Router, csp: HeaderValue) -> Router {
    let router = router
        .layer(from_fn(refuse_cross_site_posts))
        .layer(map_response(move |response| {
            let csp = csp.clone();
            async move { security_headers(response, csp) }
        }));
    with_standard_layers(router, || {
        tracing::error!("a request handler panicked");
        internal_error_page()
    })
}

/// Scripts only from ourselves and Stripe.js (`STRIPE_JS_URL`'s origin; Stripe's card fields and
/// 3-D Secure are iframes of js.stripe.com and hooks.stripe.com, and Stripe.js talks to
/// api.stripe.com, as Stripe's CSP guide lists); forms only post to ourselves; nobody frames us.
pub fn content_security_policy(stripe_js: &reqwest::Url) -> anyhow::Result<HeaderValue> {
    let origin = stripe_js.origin().ascii_serialization();
    // Another origin (the browser tests' stub) is allowed beside Stripe's own.
    let other = if origin == "https://js.stripe.com" {
        String::new()
    } else {
        format!(" {origin}")
    };
    let policy = format!(
        "default-src 'self'; script-src 'self' https://js.stripe.com{other}; \
         frame-src https://js.stripe.com https://hooks.stripe.com{other}; \
         connect-src 'self' https://api.stripe.com{other}; \
         img-src 'self' data: https://*.stripe.com; style-src 'self' 'unsafe-inline'; \
         form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).context("the Content-Security-Policy header")
}

fn security_headers(mut response: Response, csp: HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, csp);
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}
