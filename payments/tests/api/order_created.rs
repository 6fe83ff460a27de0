use common::bus::Outcome;
use common::events::{OrderCreated, OrderStatus};
use common::money::Price;
use common::testing::dead_letters_a_malformed_id;
use mongodb::bson::oid::ObjectId;
use payments::listeners::order_created;

use crate::helpers::{User, eventually, order_created_event, spawn_app};

#[tokio::test]
async fn order_created_stores_a_replica_with_the_price_in_integer_cents() {
    let app = spawn_app().await;
    // As it arrives on the wire: a price of euros that is not exact in binary floating point.
    let event: OrderCreated = serde_json::from_value(serde_json::json!({
        "id": ObjectId::new().to_hex(),
        "version": 0,
        "status": "created",
        "userId": "64b7f0c2a1b2c3d4e5f60718",
        "expiresAt": "2030-01-02T03:04:05.678Z",
        "ticket": { "id": ObjectId::new().to_hex(), "price": 19.99 }
    }))
    .expect("an order:created payload");

    let outcome = order_created::handle(&app.orders, event.clone())
        .await
        .expect("handled");

    assert_eq!(outcome, Outcome::Ack);
    let order = app.replica(&event.id).await.expect("the replica");
    assert_eq!(order.id, event.id.oid());
    assert_eq!(order.version, 0);
    assert_eq!(order.status, OrderStatus::Created);
    assert_eq!(order.user_id, "64b7f0c2a1b2c3d4e5f60718");
    assert_eq!(order.price_cents, 1999);
    assert_eq!(order.expires_at_utc(), event.expires_at);
    assert_eq!(
        common::time::to_iso_millis(&order.expires_at_utc()),
        "2030-01-02T03:04:05.678Z"
    );
}

#[tokio::test]
async fn a_redelivered_order_created_is_acknowledged_and_changes_nothing() {
    let app = spawn_app().await;
    let user = User::new();
    let event = order_created_event(&user.id, Price::from_cents(1000));
    assert_eq!(
        order_created::handle(&app.orders, event.clone())
            .await
            .expect("first"),
        Outcome::Ack
    );
    let stored = app.replica(&event.id).await;

    let mut again = event.clone();
    again.ticket.price = Price::from_cents(1);
    assert_eq!(
        order_created::handle(&app.orders, again)
            .await
            .expect("redelivery"),
        Outcome::Ack
    );

    assert_eq!(app.replica(&event.id).await, stored);
    assert_eq!(app.replica_count().await, 1);
}

#[tokio::test]
async fn an_order_created_with_a_malformed_id_is_dead_lettered_instead_of_redelivered_forever() {
    let app = spawn_app().await;
    let event = order_created_event(&User::new().id, Price::from_cents(1000));
    dead_letters_a_malformed_id(&app.bus().await, &event, "payments-service").await;
    assert_eq!(app.replica_count().await, 0);
}

#[tokio::test]
async fn order_created_published_on_the_bus_reaches_the_replica() {
    let app = spawn_app().await;
    let event = order_created_event(&User::new().id, Price::from_cents(2550));

    app.bus().await.publish(&event).await.expect("published");

    let order = eventually("the replica of the published order", || async {
        app.replica(&event.id).await
    })
    .await;
    assert_eq!((order.version, order.price_cents), (0, 2550));
}
