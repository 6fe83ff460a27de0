//! What firing an expiry leaves on the metrics port.

use std::time::Duration;

use common::testing::metric_samples;

use crate::helpers::{TestContext, millis_from_now, new_order_id};

#[tokio::test]
async fn a_fired_expiry_shows_its_lateness_the_queue_depth_and_the_handled_event() {
    let ctx = TestContext::new().await;
    let mut observer = ctx.observe().await;
    let app = ctx.spawn_app().await;
    let bus = ctx.bus().await;

    let order_id = new_order_id();
    ctx.publish_order_created(&bus, &order_id, millis_from_now(-1000))
        .await;
    observer
        .stream
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    let text = app.metrics().await;

    let has = |series: &str, labels: &[&str]| !metric_samples(&text, series, labels).is_empty();
    assert!(has("expiration_lateness_seconds_count", &[]), "{text}");
    assert!(has("expiration_queue_depth", &[]), "{text}");
    assert!(
        has(
            "events_handled_total{",
            &[
                r#"consumer="expiration-service_order-created""#,
                r#"outcome="ack""#
            ]
        ),
        "{text}"
    );
}
