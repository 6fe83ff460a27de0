//! What a settled payment leaves in the process's metrics.

use std::time::Duration;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_succeeded_charge_is_counted_as_a_succeeded_attempt() {
    let app = spawn_app().await;
    let (user, order) = app.payable_order(500, "ch_counted_1", Duration::ZERO).await;

    app.pay_ok(&user, &order.id).await;

    // The recorder is the process's (the one the app's metrics port renders).
    let text = common::metrics::install(None).render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("payment_attempts_total{")
                && line.contains(r#"status="succeeded""#)),
        "{text}"
    );
}
