//! `GET /metrics` on the metrics port: what a request, an event and a readiness check leave there;
//! and the public port never serves it.

use common::testing::{metric_samples, scrape_metrics};
use reqwest::StatusCode;

use crate::helpers::{new_order_id, order_created, spawn_app};

#[tokio::test]
async fn the_metrics_port_counts_requests_by_matched_route_and_events_by_outcome() {
    let app = spawn_app().await;
    let (_, id) = app.new_ticket().await;
    app.infra
        .bus
        .publish(&order_created(&id, new_order_id()))
        .await
        .expect("publishing");
    // Polls GET /api/tickets/{id} until the listener has reserved the ticket.
    app.wait_for_ticket(&id, |t| t["orderId"].is_string()).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    let text = scrape_metrics(&app.client, app.metrics_addr).await;

    let got = metric_samples(
        &text,
        "http_requests_total{",
        &[
            r#"method="GET""#,
            r#"route="/api/tickets/{id}""#,
            r#"status="200""#,
        ],
    );
    assert!(
        !got.is_empty(),
        "no GET /api/tickets/{{id}} count in:\n{text}"
    );
    assert!(
        !text.contains(&id),
        "a raw ticket id is a metric label:\n{text}"
    );
    let created = metric_samples(
        &text,
        "http_requests_total{",
        &[r#"route="/api/tickets""#, r#"status="201""#],
    );
    assert!(
        !created.is_empty(),
        "no POST /api/tickets count in:\n{text}"
    );
    assert!(
        !metric_samples(
            &text,
            "http_request_duration_seconds_bucket{",
            &[r#"route="/api/tickets/{id}""#]
        )
        .is_empty(),
        "{text}"
    );
    let handled = metric_samples(
        &text,
        "events_handled_total{",
        &[
            r#"consumer="tickets-service_order-created""#,
            r#"subject="order:created""#,
            r#"outcome="ack""#,
        ],
    );
    assert!(!handled.is_empty(), "no handled order:created in:\n{text}");
    assert!(
        !metric_samples(
            &text,
            "event_lag_seconds_count{",
            &[r#"subject="order:created""#]
        )
        .is_empty(),
        "{text}"
    );
    for dependency in ["database", "event bus"] {
        let up = metric_samples(
            &text,
            "dependency_up{",
            &[&format!(r#"dependency="{dependency}""#)],
        );
        assert!(
            up.iter().any(|line| line.ends_with(" 1")),
            "{dependency} not up in:\n{text}"
        );
    }
    assert!(
        !metric_samples(
            &text,
            "outbox_published_total{",
            &[r#"collection="tickets""#, r#"by="writer""#]
        )
        .is_empty(),
        "{text}"
    );
}

#[tokio::test]
async fn the_public_port_answers_404_for_metrics() {
    let app = spawn_app().await;

    let reply = app.get("/metrics").await;

    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.body,
        serde_json::json!({ "errors": [{ "message": "Not Found" }] })
    );
}
