use common::bus::Outcome;
use common::events::{Id, TicketUpdated};
use common::money::Price;
use common::testing::{as_id, id_of, new_user_id};
use orders::listeners::ticket_updated::handle;
use serde_json::json;

use crate::helpers::{TestApp, User, assert_retried, eventually, spawn_app};

fn updated(id: &str, version: i64, title: &str, cents: i64) -> TicketUpdated {
    TicketUpdated {
        id: as_id(id),
        version,
        title: title.to_owned(),
        price: Price::from_cents(cents),
        user_id: new_user_id(),
        order_id: None,
    }
}

/// Hands `event` straight to the listener.
async fn apply(app: &TestApp, event: TicketUpdated) -> Outcome {
    handle(&app.store, event).await.expect("handled")
}

/// The replica as (title, price in cents, version), to check in one assertion.
async fn replica_of(app: &TestApp, id: &str) -> (String, i64, i64) {
    let replica = app.replica(id).await.expect("replica");
    (replica.title, replica.price, replica.version)
}

#[tokio::test]
async fn the_next_version_of_a_ticket_is_applied_to_the_replica() {
    let app = spawn_app().await;
    let id = app.ticket("Old", 1000).await.id.to_hex();
    let mut event = updated(&id, 1, "New", 1550);
    // The tickets service's reservation marker is not the orders service's business.
    event.order_id = Some(Id::new());
    assert_eq!(apply(&app, event).await, Outcome::Ack);
    assert_eq!(replica_of(&app, &id).await, ("New".to_owned(), 1550, 1));
}

#[tokio::test]
async fn an_order_shows_its_ticket_at_the_version_another_replica_applied_after_this_one_read_it() {
    let app = spawn_app().await;
    let id = app.ticket("Gig", 1000).await.id.to_hex();
    let owner = User::new();
    // The app reads the ticket to take the order, and remembers it at version 0.
    let order_id = id_of(&app.order_ok(&owner, &id).await);
    assert_eq!(
        app.get_order(Some(&owner), &order_id).await.body["ticket"]["version"],
        json!(0)
    );

    // Another replica of the orders service (the test's own store) applies version 1.
    assert_eq!(
        apply(&app, updated(&id, 1, "Gig", 1000)).await,
        Outcome::Ack
    );

    let shown = app.get_order(Some(&owner), &order_id).await.body;
    assert_eq!(shown["ticket"]["version"], json!(1));
}

#[tokio::test]
async fn an_update_already_applied_or_older_is_acknowledged_without_change() {
    let app = spawn_app().await;
    let id = app.ticket("Old", 1000).await.id.to_hex();
    // Each row is acknowledged; only the first changes the replica.
    for (case, event) in [
        ("version 1", updated(&id, 1, "One", 1100)),
        ("version 1 again", updated(&id, 1, "Again", 9900)),
        ("version 0", updated(&id, 0, "Older", 9900)),
    ] {
        assert_eq!(apply(&app, event).await, Outcome::Ack, "{case}");
    }
    assert_eq!(replica_of(&app, &id).await, ("One".to_owned(), 1100, 1));
}

#[tokio::test]
async fn an_update_ahead_of_the_replica_waits_for_the_missing_one() {
    let app = spawn_app().await;
    let id = app.ticket("Zero", 1000).await.id.to_hex();
    assert_retried(apply(&app, updated(&id, 2, "Two", 1200)).await);
    assert_eq!(app.replica(&id).await.map(|t| t.version), Some(0));

    assert_eq!(
        apply(&app, updated(&id, 1, "One", 1100)).await,
        Outcome::Ack
    );
    assert_eq!(
        apply(&app, updated(&id, 2, "Two", 1200)).await,
        Outcome::Ack
    );
    let replica = app.replica(&id).await.expect("replica");
    assert_eq!((replica.title.as_str(), replica.version), ("Two", 2));
}

#[tokio::test]
async fn an_update_for_a_ticket_not_replicated_yet_is_retried() {
    let app = spawn_app().await;
    assert_retried(apply(&app, updated(&new_user_id(), 1, "One", 1000)).await);
}

#[tokio::test]
async fn updates_published_out_of_order_are_applied_in_version_order() {
    let app = spawn_app().await;
    let id = app.ticket("Zero", 1000).await.id.to_hex();
    app.publish(&updated(&id, 2, "Two", 1200)).await;
    app.publish(&updated(&id, 1, "One", 1100)).await;
    // Version 2 is only applicable after version 1: it must come back and be applied last.
    let replica = eventually("version 2 applied", || async {
        app.replica(&id).await.filter(|t| t.version == 2)
    })
    .await;
    assert_eq!((replica.title.as_str(), replica.price), ("Two", 1200));
}

#[tokio::test]
async fn orders_show_the_current_title_and_price_of_their_ticket() {
    let app = spawn_app().await;
    let user = User::new();
    let id = app.ticket("Old", 1000).await.id.to_hex();
    let order = app.order_ok(&user, &id).await;
    assert_eq!(
        apply(&app, updated(&id, 1, "Renamed", 1234)).await,
        Outcome::Ack
    );
    let shown = app
        .get_order(Some(&user), order["id"].as_str().expect("id"))
        .await;
    assert_eq!(
        shown.body["ticket"],
        json!({"id": id, "title": "Renamed", "price": 12.34, "version": 1})
    );
    let listed = app.list_orders(Some(&user)).await;
    assert_eq!(listed.body[0]["ticket"], shown.body["ticket"]);
}

#[tokio::test]
async fn a_late_duplicate_that_rolled_the_replica_back_is_repaired_before_the_next_update() {
    let app = spawn_app().await;
    let id = app.ticket("v0", 1000).await.id.to_hex();
    for (version, title) in [(1, "v1"), (2, "v2")] {
        assert_eq!(
            apply(&app, updated(&id, version, title, 1000)).await,
            Outcome::Ack
        );
    }
    // A duplicate of version 1, redelivered after the ack wait, read the replica at version 0 and
    // writes back by `_id` after version 2 landed (FerretDB's read-modify-write update).
    let oid = common::store::parse_object_id(&id).expect("id");
    app.store
        .tickets()
        .records()
        .replace_one(
            mongodb::bson::doc! { "_id": oid },
            orders::store::Ticket {
                id: oid,
                title: "v1".into(),
                price: 1000,
                version: 1,
            },
        )
        .await
        .expect("the late write");

    // Readers see version 2 again, and version 3 applies instead of waiting forever for 2.
    assert_eq!(app.replica(&id).await.map(|t| t.version), Some(2));
    assert_eq!(apply(&app, updated(&id, 3, "v3", 1000)).await, Outcome::Ack);
    let replica = app.replica(&id).await.expect("replica");
    assert_eq!((replica.title.as_str(), replica.version), ("v3", 3));
}

#[tokio::test]
async fn concurrent_duplicates_of_each_version_leave_the_replica_at_the_last_one() {
    let app = spawn_app().await;
    let id = app.ticket("v0", 1000).await.id.to_hex();
    for version in 1..=5 {
        let title = format!("v{version}");
        let duplicates = (0..4).map(|_| apply(&app, updated(&id, version, &title, 1000)));
        for outcome in futures::future::join_all(duplicates).await {
            assert_eq!(outcome, Outcome::Ack);
        }
    }
    let replica = app.replica(&id).await.expect("replica");
    assert_eq!((replica.title.as_str(), replica.version), ("v5", 5));
    let raw = app
        .count("tickets", mongodb::bson::doc! { "version": 5 })
        .await;
    assert_eq!(raw, 1, "the stored document itself is at version 5");
}
