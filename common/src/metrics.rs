//! Prometheus metrics: the process's recorder, the `GET /metrics` router served on its own port
//! (`METRICS_PORT`, never the public one, so the ingress and the client's catch-all cannot
//! publish it), and the HTTP middleware every router gets.
//!
//! What is recorded, and where:
//! - `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,route}`:
//!   [`record_requests`], in `server::with_standard_layers`; `route` is axum's matched route
//!   (`/api/tickets/{id}`), `unmatched` for what no route matched.
//! - `events_handled_total{consumer,subject,outcome}`, `event_lag_seconds{subject}`,
//!   `event_handling_seconds{subject,outcome}`: the bus listener.
//! - `outbox_waiting{collection}`, `outbox_published_total{collection,by}`: the outbox.
//! - `dependency_up{dependency}`, `dead_letters{queue_group}`: each readiness check (`/readyz`).
//! - Services record their own beside these (payments' `payment_attempts_total`, expiration's
//!   queue depth and lateness); the README's "Metrics" section lists them all.
//!
//! A service run by `server::run_service` adds `service="<name>"` to every series.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of every `*_seconds` histogram: a millisecond to a minute.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The route label of a request no route matched (the 404 fallback), so that probed paths cannot
/// make new series.
pub const UNMATCHED: &str = "unmatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed by the first call (with `service` as a label of every
/// series, when given); later calls reuse it, since tests build many applications in one process.
pub fn install(service: Option<&'static str>) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            if let Some(service) = service {
                builder = builder.add_global_label("service", service);
            }
            let recorder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            {
                Ok(builder) => builder.build_recorder(),
                // Only an empty bucket list is refused; the summaries it falls back to still render.
                Err(err) => {
                    tracing::warn!(error = %err, "histogram buckets refused; using summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if let Err(err) = metrics::set_global_recorder(recorder) {
                // Something else recorded first; /metrics still answers, only without our series.
                tracing::warn!(error = %err, "another metrics recorder is installed");
            }
            handle
        })
        .clone()
}

/// `GET /metrics`: the Prometheus text of every series. Everything else is 404.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                // Histograms are folded in on render too; upkeep keeps memory flat between scrapes.
                handle.run_upkeep();
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// Route layer: copies the route a request matched into its response, where [`record_requests`]
/// (outside the routing, which only then has run) finds it.
pub(crate) async fn tag_matched_route(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// Counts and times every request by method, matched route and status.
pub(crate) async fn record_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The standard methods by name; any other (clients may send anything) as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `dependency_up{dependency}`: 1 when the dependency answered its readiness check, else 0.
pub fn record_dependencies(checks: &[(&'static str, bool)]) {
    for (name, up) in checks {
        metrics::gauge!("dependency_up", "dependency" => *name).set(if *up { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_reuses_the_first_recorder() {
        let first = install(None);
        let second = install(Some("ignored"));
        metrics::counter!("installing_twice_test_total").increment(1);
        assert!(first.render().contains("installing_twice_test_total"));
        assert!(second.render().contains("installing_twice_test_total"));
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap_or_default()),
            "other"
        );
    }
}
