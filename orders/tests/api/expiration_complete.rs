use common::bus::Outcome;
use common::events::{ExpirationComplete, OrderStatus};
use common::testing::{as_id, new_user_id, order_cancelled};
use orders::listeners::UNKNOWN_ORDER_DELIVERIES;
use orders::sweeper::sweep_once;

use crate::helpers::{
    TestApp, User, assert_retried, eventually, payment, spawn_app, spawn_app_in, spawn_app_with,
};

#[tokio::test]
async fn expiry_cancels_a_pending_order_and_announces_it_once() {
    let app = spawn_app().await;
    let (mut cancelled, _, id, ticket_id) = app.observed_pending_order().await;

    assert_eq!(app.expire(&id).await, Outcome::Ack);
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Cancelled, 1));
    assert_eq!(stored.reservation, format!("released:{id}"));
    assert_eq!(
        cancelled.next().await,
        order_cancelled(as_id(&id), as_id(&ticket_id), 1)
    );

    // A redelivered expiry finds nothing left to do.
    assert_eq!(app.expire(&id).await, Outcome::Ack);
    assert_eq!(app.stored_order(&id).await.version, 1);
    assert_eq!(
        app.cancellations_of(&mut cancelled, &id).await,
        Vec::<i64>::new()
    );

    app.order_ok(&User::new(), &ticket_id).await;
}

#[tokio::test]
async fn expiry_of_a_paid_order_is_ignored() {
    let app = spawn_app().await;
    let (mut cancelled, _, id, ticket_id) = app.observed_pending_order().await;
    assert_eq!(app.pay(&id).await, Outcome::Ack);

    assert_eq!(app.expire(&id).await, Outcome::Ack);
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Complete, 1));
    assert_eq!(stored.reservation, ticket_id);
    assert!(app.change(&id, 2).await.is_none());
    assert_eq!(
        app.cancellations_of(&mut cancelled, &id).await,
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn expiry_of_a_cancelled_order_announces_nothing_more() {
    let app = spawn_app().await;
    let (mut cancelled, user, id, _) = app.observed_pending_order().await;
    app.cancel_ok(&user, &id).await;

    assert_eq!(app.expire(&id).await, Outcome::Ack);
    assert_eq!(app.stored_order(&id).await.version, 1);
    assert!(app.change(&id, 2).await.is_none());
    // Only the owner's cancellation, version 1.
    assert_eq!(app.cancellations_of(&mut cancelled, &id).await, vec![1]);
}

#[tokio::test]
async fn expiry_of_an_order_not_stored_yet_is_retried() {
    let app = spawn_app().await;
    assert_retried(app.expire(&new_user_id()).await);
}

#[tokio::test]
async fn an_expiry_of_an_order_still_unknown_after_thirty_deliveries_goes_to_the_dead_letters() {
    // Only lost or deleted data leaves an order unknown this long: kept for an operator, not
    // redelivered forever.
    let app = spawn_app().await;
    let order_id = new_user_id();
    let last_retry = app
        .expire_delivered(&order_id, u64::MAX, UNKNOWN_ORDER_DELIVERIES - 1)
        .await;
    assert_retried(last_retry);
    assert!(matches!(
        app.expire_delivered(&order_id, u64::MAX, UNKNOWN_ORDER_DELIVERIES)
            .await,
        Outcome::Poison(_)
    ));
}

#[tokio::test]
async fn an_expiry_published_on_the_bus_cancels_the_order_and_frees_the_ticket() {
    let app = spawn_app_with_short_window().await;
    let (mut cancelled, user, id, ticket_id) = app.observed_pending_order().await;
    app.publish(&ExpirationComplete {
        order_id: as_id(&id),
    })
    .await;
    let event = cancelled.next().await;
    assert_eq!((event.id, event.version), (as_id(&id), 1));
    let shown = eventually("the order shown cancelled", || async {
        let reply = app.get_order(Some(&user), &id).await;
        (reply.body["status"] == "cancelled").then_some(reply.body)
    })
    .await;
    assert_eq!(shown["version"], 1);
    app.order_ok(&User::new(), &ticket_id).await;
}

async fn spawn_app_with_short_window() -> TestApp {
    crate::helpers::spawn_app_with(&[("EXPIRATION_WINDOW_SECONDS", "1")]).await
}

#[tokio::test]
async fn an_order_whose_expiration_never_arrives_is_cancelled_by_the_sweeper() {
    // No expiration service runs here: its Redis job was lost, as after a wiped volume.
    let app = spawn_app_with(&[
        ("EXPIRATION_WINDOW_SECONDS", "1"),
        ("EXPIRY_SWEEP_SECONDS", "1"),
        ("EXPIRY_SWEEP_GRACE_SECONDS", "0"),
    ])
    .await;
    let (mut cancelled, _, id, ticket_id) = app.observed_pending_order().await;

    let event = cancelled.next().await;

    assert_eq!((event.id, event.version), (as_id(&id), 1));
    assert_eq!(event.ticket.id, ticket_id);
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Cancelled, 1));
}

#[tokio::test]
async fn the_sweeper_cancels_only_overdue_orders_still_waiting_for_payment_and_each_once() {
    let app = spawn_app_with(&[("EXPIRATION_WINDOW_SECONDS", "1")]).await;
    let user = User::new();
    let (overdue, _) = app.pending_order(&user).await;
    let (paid, _) = app.pending_order(&user).await;
    let (cancelled_before, _) = app.pending_order(&user).await;
    app.pay(&paid).await;
    app.cancel_ok(&user, &cancelled_before).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    // Two replicas sweeping at once.
    let (a, b) = tokio::join!(
        sweep_once(&app.store, &app.bus, std::time::Duration::ZERO),
        sweep_once(&app.store, &app.bus, std::time::Duration::ZERO)
    );
    assert_eq!(a.expect("a sweep") + b.expect("a sweep"), 1);

    let stored = |id: &str| {
        let app = &app;
        let id = id.to_owned();
        async move { app.stored_order(&id).await }
    };
    let overdue = stored(&overdue).await;
    assert_eq!(
        (overdue.status, overdue.version),
        (OrderStatus::Cancelled, 1)
    );
    assert_eq!(stored(&paid).await.status, OrderStatus::Complete);
    assert_eq!(stored(&cancelled_before).await.version, 1);
}

#[tokio::test]
async fn the_sweeper_leaves_an_order_within_its_grace_to_the_expiration_service() {
    let app = spawn_app_with(&[("EXPIRATION_WINDOW_SECONDS", "1")]).await;
    let (id, _) = app.pending_order(&User::new()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let swept = sweep_once(&app.store, &app.bus, std::time::Duration::from_secs(30))
        .await
        .expect("a sweep");

    assert_eq!(swept, 0);
    assert_eq!(app.stored_order(&id).await.status, OrderStatus::Created);
}

#[tokio::test]
async fn after_an_outage_a_payment_held_back_behind_its_expiration_still_completes_the_order() {
    // The app has just started, which counts as an outage: expiry waits 3 s for held-back events.
    let app = spawn_app_with(&[("EXPIRY_SWEEP_GRACE_SECONDS", "3")]).await;
    let (_, id, _) = app.new_pending_order().await;

    // The expiration reaches orders first; the payment made in time arrives a second later.
    app.publish(&ExpirationComplete {
        order_id: as_id(&id),
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    app.publish(&payment(&id)).await;

    let order = eventually("the order is settled", || async {
        let order = app.stored_order(&id).await;
        (order.status != OrderStatus::Created).then_some(order)
    })
    .await;
    assert_eq!((order.status, order.version), (OrderStatus::Complete, 1));
}

#[tokio::test]
async fn an_expiry_waits_for_a_payment_of_the_order_published_before_it_and_not_applied_yet() {
    let app = spawn_app().await;
    let user = User::new();
    let (paid, _) = app.pending_order(&user).await;
    let (paid_too_late, _) = app.pending_order(&user).await;
    let (unpaid, _) = app.pending_order(&user).await;
    // With the listeners stopped, the payments wait in the stream, as behind a stalled database.
    app.stop();
    for order_id in [&paid, &paid_too_late] {
        app.bus
            .publish(&payment(order_id))
            .await
            .expect("payment published");
    }

    assert_retried(app.expire(&paid).await);
    assert_eq!(app.stored_order(&paid).await.status, OrderStatus::Created);
    // An expiry published before the payment does not wait for it; another order's payment holds
    // nothing up.
    assert_eq!(
        app.expire_published_at(&paid_too_late, 1).await,
        Outcome::Ack
    );
    assert_eq!(
        app.stored_order(&paid_too_late).await.status,
        OrderStatus::Cancelled
    );
    assert_eq!(app.expire(&unpaid).await, Outcome::Ack);
    assert_eq!(
        app.stored_order(&unpaid).await.status,
        OrderStatus::Cancelled
    );

    // Once the payment is applied the expiry finds the order paid and leaves it.
    let restarted = spawn_app_in(app.env.clone()).await;
    eventually("the waiting payment is applied", || async {
        (restarted.stored_order(&paid).await.status == OrderStatus::Complete).then_some(())
    })
    .await;
    assert_eq!(restarted.expire(&paid).await, Outcome::Ack);
    assert_eq!(
        restarted.stored_order(&paid).await.status,
        OrderStatus::Complete
    );
}
