use common::bus::{Delivery, Outcome};
use common::events::{OrderStatus, PaymentUpdated};
use common::testing::{as_id, new_user_id};
use orders::listeners::UNKNOWN_ORDER_DELIVERIES;
use orders::listeners::payment_updated::handle;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, User, assert_retried, spawn_app};

fn delivery(attempt: i64) -> Delivery {
    Delivery {
        attempt,
        sequence: 1,
    }
}

fn update(order_id: &str, status: &str, version: i64) -> PaymentUpdated {
    PaymentUpdated {
        id: new_user_id(),
        order_id: as_id(order_id),
        version,
        status: status.to_owned(),
        stripe_id: Some("ch_refunded".into()),
        refund_id: (status == "refunded").then(|| "re_1".to_owned()),
    }
}

async fn cancelled_order(app: &TestApp, user: &User) -> String {
    let ticket_id = app.ticket("Gig", 1000).await.id.to_hex();
    let order = app.order_ok(user, &ticket_id).await;
    let id = order["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.delete_order(Some(user), &id).await.status,
        StatusCode::NO_CONTENT
    );
    id
}

#[tokio::test]
async fn a_refund_of_a_cancelled_orders_charge_is_shown_on_the_order_once() {
    let app = spawn_app().await;
    let user = User::new();
    let id = cancelled_order(&app, &user).await;

    for _ in 0..2 {
        assert_eq!(
            handle(
                &app.store,
                &app.bus,
                update(&id, "refunded", 3),
                delivery(1)
            )
            .await
            .expect("handled"),
            Outcome::Ack
        );
    }

    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Cancelled, 2));
    let refund = stored.refund.expect("the refund is recorded");
    assert_eq!(refund.stripe_id.as_deref(), Some("ch_refunded"));
    let shown = app.get_order(Some(&user), &id).await.body;
    assert_eq!(
        (&shown["status"], &shown["refunded"]),
        (&json!("cancelled"), &json!(true))
    );
}

#[tokio::test]
async fn other_payment_states_change_nothing_and_an_unrefunded_order_shows_no_refund_field() {
    let app = spawn_app().await;
    let user = User::new();
    let id = cancelled_order(&app, &user).await;

    for status in ["pending", "unknown", "failed", "succeeded", "refunding"] {
        assert_eq!(
            handle(&app.store, &app.bus, update(&id, status, 1), delivery(1))
                .await
                .expect("handled"),
            Outcome::Ack,
            "{status}"
        );
    }

    assert_eq!(app.stored_order(&id).await.version, 1);
    let shown = app.get_order(Some(&user), &id).await.body;
    assert_eq!(shown.get("refunded"), None, "{shown}");
}

#[tokio::test]
async fn a_refund_for_an_order_not_known_yet_is_retried() {
    let app = spawn_app().await;
    let outcome = handle(
        &app.store,
        &app.bus,
        update(&new_user_id(), "refunded", 3),
        delivery(1),
    )
    .await
    .expect("handled");
    assert_retried(outcome);
}

#[tokio::test]
async fn a_refund_for_an_order_still_unknown_after_thirty_deliveries_goes_to_the_dead_letters() {
    let app = spawn_app().await;
    let order_id = new_user_id();
    let handled = |attempt| {
        handle(
            &app.store,
            &app.bus,
            update(&order_id, "refunded", 3),
            delivery(attempt),
        )
    };
    assert_retried(
        handled(UNKNOWN_ORDER_DELIVERIES - 1)
            .await
            .expect("handled"),
    );
    assert!(matches!(
        handled(UNKNOWN_ORDER_DELIVERIES).await.expect("handled"),
        Outcome::Poison(_)
    ));
}
