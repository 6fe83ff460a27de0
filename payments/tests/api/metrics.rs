//! What a settled payment leaves in the process's metrics.

use std::time::Duration;

use common::money::Price;
use reqwest::StatusCode;

use crate::helpers::{User, spawn_app, stripe_charges_succeed};

#[tokio::test]
async fn a_succeeded_charge_is_counted_as_a_succeeded_attempt() {
    let app = spawn_app().await;
    let user = User::new();
    let order = app
        .order_for(&user, Price::from_euros(5.0).expect("price"))
        .await;
    stripe_charges_succeed(&app, "ch_counted_1", 500, Duration::ZERO).await;

    let reply = app.pay(&user, &order.id, "tok_visa").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    // The recorder is the process's (the one the app's metrics port renders).
    let text = common::metrics::install(None).render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("payment_attempts_total{")
                && line.contains(r#"status="succeeded""#)),
        "{text}"
    );
}
