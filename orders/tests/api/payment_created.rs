use common::bus::Outcome;
use common::events::{OrderStatus, TicketUpdated};
use common::money::Price;
use common::testing::{as_id, id_of, new_user_id};
use futures::future::join_all;
use orders::listeners::{UNKNOWN_ORDER_DELIVERIES, ticket_updated};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{User, assert_reply, assert_retried, errors, eventually, payment, spawn_app};

#[tokio::test]
async fn a_payment_completes_the_order_with_a_new_version_and_no_event() {
    let app = spawn_app().await;
    let (user, id, ticket_id) = app.new_pending_order().await;

    assert_eq!(app.pay(&id).await, Outcome::Ack);
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Complete, 1));
    assert_eq!(
        stored.reservation, ticket_id,
        "a paid order keeps its ticket"
    );
    let change = app.change(&id, 1).await.expect("the change to version 1");
    assert_eq!(change.get_array("events").map(Vec::len), Ok(0));
    let shown = app.get_order(Some(&user), &id).await.body;
    assert_eq!(
        (&shown["status"], &shown["version"]),
        (&json!("complete"), &json!(1))
    );
}

#[tokio::test]
async fn a_repeated_payment_is_acknowledged_without_a_new_version() {
    let app = spawn_app().await;
    let (id, _) = app.pending_order(&User::new()).await;
    for _ in 0..2 {
        assert_eq!(app.pay(&id).await, Outcome::Ack);
    }
    assert_eq!(app.stored_order(&id).await.version, 1);
    assert!(app.change(&id, 2).await.is_none());
}

#[tokio::test]
async fn a_payment_for_a_cancelled_order_is_acknowledged_and_the_order_stays_cancelled() {
    let app = spawn_app().await;
    let (user, id, ticket_id) = app.new_pending_order().await;
    app.cancel_ok(&user, &id).await;

    assert_eq!(app.pay(&id).await, Outcome::Ack);
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Cancelled, 1));
    // The released ticket is not silently taken back.
    app.order_ok(&User::new(), &ticket_id).await;
}

#[tokio::test]
async fn a_payment_handled_from_a_remembered_order_that_was_cancelled_since_leaves_it_cancelled() {
    let app = spawn_app().await;
    let (user, id, _) = app.new_pending_order().await;
    // The listener's store saw the order awaiting payment; then another replica cancelled it.
    app.store.remember(&app.stored_order(&id).await);
    app.cancel_ok(&user, &id).await;

    assert_eq!(app.pay(&id).await, Outcome::Ack);

    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Cancelled, 1));
    assert!(app.change(&id, 2).await.is_none(), "no version after it");
    let remembered = app.store.recent_order(stored.id).expect("remembered");
    assert_eq!(
        (remembered.status, remembered.version),
        (OrderStatus::Cancelled, 1),
        "the listener remembers the order as it found it"
    );
}

#[tokio::test]
async fn a_payment_handled_from_a_remembered_order_completes_it_without_reading_it_first() {
    let app = spawn_app().await;
    let (_, id, _) = app.new_pending_order().await;
    app.store.remember(&app.stored_order(&id).await);
    app.forget_queries();

    assert_eq!(app.pay(&id).await, Outcome::Ack);

    let reads_of_the_order: Vec<_> = app
        .queries()
        .into_iter()
        .filter(|query| query.command == "find" && query.collection == "orders")
        .collect();
    assert!(
        reads_of_the_order.is_empty(),
        "the version claim needs no read of the order first: {reads_of_the_order:?}"
    );
    let lookups_of_changes: Vec<_> = app
        .queries()
        .into_iter()
        .filter(|query| query.command == "find" && query.collection == "orders_changes")
        .collect();
    assert!(
        lookups_of_changes.is_empty(),
        "no version can follow a paid order, so none is looked for: {lookups_of_changes:?}"
    );
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Complete, 1));
}

#[tokio::test]
async fn an_order_is_remembered_at_its_new_version_as_soon_as_the_version_is_claimed() {
    let app = spawn_app().await;
    let (_, id, _) = app.new_pending_order().await;
    let current = app.stored_order(&id).await;
    // Committed through the store alone, as a writer that stopped before its own `remember` did.
    app.store
        .orders()
        .commit_unpublished(
            &current,
            &current.with_status(OrderStatus::Complete),
            vec![],
        )
        .await
        .expect("commit");

    let remembered = app.store.recent_order(current.id).expect("remembered");
    assert_eq!(
        (remembered.status, remembered.version),
        (OrderStatus::Complete, 1)
    );
}

#[tokio::test]
async fn a_payment_for_an_order_not_stored_yet_is_retried() {
    let app = spawn_app().await;
    assert_retried(app.pay(&new_user_id()).await);
}

#[tokio::test]
async fn a_payment_for_an_order_still_unknown_after_thirty_deliveries_goes_to_the_dead_letters() {
    let app = spawn_app().await;
    let order_id = new_user_id();
    assert_retried(
        app.pay_delivered(&order_id, UNKNOWN_ORDER_DELIVERIES - 1)
            .await,
    );
    assert!(matches!(
        app.pay_delivered(&order_id, UNKNOWN_ORDER_DELIVERIES).await,
        Outcome::Poison(_)
    ));
}

#[tokio::test]
async fn an_expiry_racing_a_payment_makes_exactly_one_transition() {
    let app = spawn_app().await;
    let user = User::new();
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(app.pending_order(&user).await);
    }
    let races = orders.iter().map(|(id, _)| {
        let app = &app;
        async move {
            let (expiry, paid) = tokio::join!(app.expire(id), app.pay(id));
            assert_eq!(expiry, Outcome::Ack);
            assert_eq!(paid, Outcome::Ack);
        }
    });
    join_all(races).await;

    let (mut cancelled, mut complete) = (0, 0);
    for (id, ticket_id) in &orders {
        let order = app.stored_order(id).await;
        assert_eq!(order.version, 1, "one transition for {id}");
        assert!(
            app.change(id, 2).await.is_none(),
            "no second version of {id}"
        );
        let events = app
            .change(id, 1)
            .await
            .expect("change 1")
            .get_array("events")
            .map(Vec::len)
            .expect("events");
        match order.status {
            OrderStatus::Cancelled => {
                cancelled += 1;
                assert_eq!(order.reservation, format!("released:{id}"));
                assert_eq!(events, 1, "order:cancelled with the cancellation");
            }
            OrderStatus::Complete => {
                complete += 1;
                assert_eq!(&order.reservation, ticket_id);
                assert_eq!(events, 0);
            }
            other => panic!("{id} ended {other:?}"),
        }
    }
    eprintln!("expiry vs payment, 20 races: {cancelled} cancelled first, {complete} paid first");
}

#[tokio::test]
async fn a_payment_published_on_the_bus_completes_the_order_which_then_cannot_be_cancelled() {
    let app = spawn_app().await;
    let (user, id, _) = app.new_pending_order().await;
    app.publish(&payment(&id)).await;
    eventually("the order shown complete", || async {
        let reply = app.get_order(Some(&user), &id).await;
        (reply.body["status"] == "complete").then_some(())
    })
    .await;
    let reply = app.delete_order(Some(&user), &id).await;
    assert_reply(
        reply,
        StatusCode::BAD_REQUEST,
        errors(&[("Cannot cancel an order that has been paid.", None)]),
    );
}

/// `ticket:updated` of the reservation of `ticket_id` (version 1) by `order_id`, as the tickets
/// service publishes it.
fn reservation(ticket_id: &str, order_id: &str, title: &str, cents: i64) -> TicketUpdated {
    TicketUpdated {
        id: as_id(ticket_id),
        version: 1,
        title: title.to_owned(),
        price: Price::from_cents(cents),
        user_id: new_user_id(),
        order_id: Some(as_id(order_id)),
    }
}

#[tokio::test]
async fn a_paid_order_is_shown_without_a_read_once_this_replica_applied_its_tickets_reservation() {
    let app = spawn_app().await;
    let ticket = app.ticket("Gig", 1500).await;
    let ticket_id = ticket.id.to_hex();
    let user = User::new();
    let created = app.order_ok(&user, &ticket_id).await;
    let id = id_of(&created);
    // The app, not the test's store, applies the reservation and the payment.
    app.publish(&reservation(&ticket_id, &id, "Gig", 1500))
        .await;
    eventually("the reservation applied", || async {
        let reply = app.get_order(Some(&user), &id).await;
        (reply.body["ticket"]["version"] == 1).then_some(())
    })
    .await;
    app.publish(&payment(&id)).await;
    eventually("the order shown complete", || async {
        let reply = app.get_order(Some(&user), &id).await;
        (reply.body["status"] == "complete").then_some(())
    })
    .await;
    app.forget_queries();

    let shown = app.get_order(Some(&user), &id).await.body;

    let mentions_it: Vec<_> = app
        .queries()
        .into_iter()
        .filter(|query| {
            let filter = query.filter.to_string();
            filter.contains(&id) || filter.contains(&ticket_id)
        })
        .collect();
    assert!(
        mentions_it.is_empty(),
        "a paid order and its reserved ticket never change again: {mentions_it:?}"
    );
    let mut reserved_ticket = created["ticket"].clone();
    reserved_ticket["version"] = json!(1);
    assert_eq!(
        (&shown["status"], &shown["version"], &shown["ticket"]),
        (&json!("complete"), &json!(1), &reserved_ticket)
    );
    // And never to anyone else.
    let stranger = app.get_order(Some(&User::new()), &id).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_paid_order_shows_the_reservation_another_replica_applied_after_this_one_showed_it() {
    let app = spawn_app().await;
    let ticket = app.ticket("Gig", 1500).await;
    let ticket_id = ticket.id.to_hex();
    let user = User::new();
    let id = id_of(&app.order_ok(&user, &ticket_id).await);
    // Paid before the ticket's reservation reached the replica (events of two services): the app
    // shows the paid order with the ticket as it stands, and remembers both.
    assert_eq!(app.pay(&id).await, Outcome::Ack);
    let shown = app.get_order(Some(&user), &id).await.body;
    assert_eq!(
        (&shown["status"], &shown["ticket"]["version"]),
        (&json!("complete"), &json!(0))
    );
    // Another replica (the test's store) applies the reservation.
    let applied = ticket_updated::handle(&app.store, reservation(&ticket_id, &id, "Gig", 1500))
        .await
        .expect("reservation handled");
    assert_eq!(applied, Outcome::Ack);

    let shown = app.get_order(Some(&user), &id).await.body;
    assert_eq!(
        (&shown["status"], &shown["ticket"]["version"]),
        (&json!("complete"), &json!(1)),
        "a ticket remembered from before its reservation is read again: {shown}"
    );
}
