use common::bus::Outcome;
use common::events::{OrderCreated, OrderStatus};
use common::money::Price;
use mongodb::bson::doc;
use payments::listeners::order_cancelled;
use payments::listeners::order_created;

use crate::helpers::{
    TestApp, User, eventually, order_cancelled_event, order_created_event, spawn_app,
};

/// Hands the listener the `order:cancelled` of `order` at `version`.
async fn cancel_at(app: &TestApp, order: &OrderCreated, version: i64) -> Outcome {
    order_cancelled::handle(
        &app.orders,
        &app.saga,
        order_cancelled_event(order, version),
    )
    .await
    .expect("handled")
}

#[tokio::test]
async fn the_next_version_of_an_order_cancels_the_replica() {
    let app = spawn_app().await;
    let order = app.order_for(&User::new(), Price::from_cents(1000)).await;

    let outcome = cancel_at(&app, &order, 1).await;

    assert_eq!(outcome, Outcome::Ack);
    let replica = app.replica(&order.id).await.expect("replica");
    assert_eq!(
        (replica.status, replica.version),
        (OrderStatus::Cancelled, 1)
    );
    assert_eq!(replica.price_cents, 1000, "the rest of the replica is kept");
}

#[tokio::test]
async fn a_cancellation_ahead_of_the_replica_is_retried_and_changes_nothing() {
    let app = spawn_app().await;
    let unknown = order_created_event(&User::new().id, Price::from_cents(1000));
    let (_, known) = app.order_of_new_buyer(1000).await;
    let cases = [
        ("an order not known yet", &unknown, 1),
        ("a version skipped", &known, 2),
    ];
    for (case, order, version) in cases {
        let before = app.replica(&order.id).await;

        let outcome = cancel_at(&app, order, version).await;

        assert!(matches!(outcome, Outcome::Retry(_)), "{case}: {outcome:?}");
        assert_eq!(app.replica(&order.id).await, before, "{case}");
    }
    assert_eq!(app.replica(&unknown.id).await, None, "still not known");
}

#[tokio::test]
async fn an_already_applied_cancellation_is_acknowledged_and_changes_nothing() {
    let app = spawn_app().await;
    let order = app.order_for(&User::new(), Price::from_cents(1000)).await;
    app.cancel(&order).await;
    let cancelled = app.replica(&order.id).await;

    for version in [1, 0] {
        let outcome = cancel_at(&app, &order, version).await;
        assert_eq!(outcome, Outcome::Ack, "version {version}");
    }
    assert_eq!(app.replica(&order.id).await, cancelled);
}

#[tokio::test]
async fn a_stale_cancellation_does_not_roll_a_newer_replica_back() {
    let app = spawn_app().await;
    let user = User::new();
    let mut event = order_created_event(&user.id, Price::from_cents(1000));
    event.version = 3;
    order_created::handle(&app.orders, event.clone())
        .await
        .expect("created at version 3");

    let outcome = cancel_at(&app, &event, 2).await;

    assert_eq!(outcome, Outcome::Ack);
    let replica = app.replica(&event.id).await.expect("replica");
    assert_eq!((replica.status, replica.version), (OrderStatus::Created, 3));
}

#[tokio::test]
async fn a_cancellation_published_before_its_order_is_applied_once_the_order_arrives() {
    let app = spawn_app().await;
    let bus = app.bus().await;
    let order = order_created_event(&User::new().id, Price::from_cents(1000));

    bus.publish(&order_cancelled_event(&order, 1))
        .await
        .expect("cancellation published");
    bus.publish(&order).await.expect("order published");

    let replica = eventually("the cancelled replica", || async {
        app.replica(&order.id)
            .await
            .filter(|o| o.status == OrderStatus::Cancelled)
    })
    .await;
    assert_eq!(replica.version, 1);
    assert_eq!(app.replica_count().await, 1);
}

#[tokio::test]
async fn a_late_duplicate_that_rolled_a_cancelled_replica_back_cannot_make_it_payable() {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(1000).await;
    app.cancel(&order).await;
    // A duplicate of order:created or of an older state, applied read-modify-write by another
    // replica of this service, writes version 0 back after the cancellation landed.
    let id = order.id.oid();
    let mut stale = app.replica(&order.id).await.expect("replica");
    stale.status = OrderStatus::Created;
    stale.version = 0;
    app.orders
        .collection()
        .replace_one(doc! { "_id": id }, &stale)
        .await
        .expect("the late write");

    let reply = app.pay(&user, &order.id, "tok_visa").await;

    let cancelled = crate::helpers::errors(&[(payments::routes::payments::CANCELLED_ORDER, None)]);
    app.assert_refused_uncharged(
        &reply,
        reqwest::StatusCode::BAD_REQUEST,
        cancelled,
        &order.id,
    )
    .await;
    let replica = app.replica(&order.id).await.expect("replica");
    assert_eq!(
        (replica.status, replica.version),
        (OrderStatus::Cancelled, 1)
    );
}
