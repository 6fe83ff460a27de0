//! The client's metrics are on its metrics port only: its catch-all never renders them.

use common::testing::{metric_samples, scrape_metrics};
use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn metrics_are_served_on_the_metrics_port_and_the_public_port_answers_the_404_page() {
    let app = spawn_app().await;
    app.given_anonymous().await;

    let stylesheet = app.get("/static/app.css", None).await;
    assert_eq!(stylesheet.status, StatusCode::OK);
    let public = app.get("/metrics", None).await;
    assert_eq!(public.status, StatusCode::NOT_FOUND);
    public.assert_contains(&["<h1>Page not found</h1>"]);
    public.assert_lacks(&["http_requests_total"]);

    let text = scrape_metrics(&app.browser, app.metrics_addr).await;
    let counted = |route: &str, status: &str| {
        !metric_samples(
            &text,
            "http_requests_total{",
            &[
                &format!(r#"route="{route}""#),
                &format!(r#"status="{status}""#),
            ],
        )
        .is_empty()
    };
    assert!(counted("/static/app.css", "200"), "{text}");
    assert!(counted("unmatched", "404"), "{text}");
}
