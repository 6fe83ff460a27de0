//! The payment saga against the ledger-keeping Stripe double: uncertain answers reconciled, charges
//! not cut by their requests, refunds of orders cancelled during their charge, and the money
//! invariant over the double's ledger.

use std::time::Duration;

use common::testing::stripe_double::{Behaviour, StripeDouble};
use payments::routes::payments::{ALREADY_PAID, BEING_CONFIRMED, IN_PROGRESS, REFUNDED};
use payments::saga::ReconcileTiming;
use payments::store::{Order, PaymentStatus};
use reqwest::StatusCode;
use serde_json::json;

use common::events::OrderCreated;

use crate::helpers::{
    TestApp, User, errors, money_holds, settled, spawn_app, spawn_app_with_stripe_timeout,
    the_one_created,
};

/// Moves the replica's window to close `millis` from now (already closed when negative), and
/// returns the replica as the saga will be handed it.
async fn window_closing_in(app: &TestApp, order: &OrderCreated, millis: i64) -> Order {
    let mut replica = app.replica(&order.id).await.expect("replica");
    replica.expires_at =
        mongodb::bson::DateTime::from_millis(chrono::Utc::now().timestamp_millis() + millis);
    app.orders
        .collection()
        .replace_one(mongodb::bson::doc! { "_id": replica.id }, &replica)
        .await
        .expect("the replica's window moves");
    replica
}

/// An order of a new buyer, and the Stripe double answering new requests as `behaviour` says.
async fn order_with_stripe(
    app: &TestApp,
    cents: i64,
    behaviour: Behaviour,
) -> (StripeDouble, User, OrderCreated) {
    let double = app.stripe_double().await;
    double.set(behaviour);
    let (user, order) = app.order_of_new_buyer(cents).await;
    (double, user, order)
}

/// A fresh app with [`order_with_stripe`].
async fn app_with_order(
    cents: i64,
    behaviour: Behaviour,
) -> (TestApp, StripeDouble, User, OrderCreated) {
    let app = spawn_app().await;
    let (double, user, order) = order_with_stripe(&app, cents, behaviour).await;
    (app, double, user, order)
}

/// Stripe processes requests at once and answers after `delay`.
fn answering_after(delay: Duration) -> Behaviour {
    Behaviour::Normal { delay }
}

/// A POST /api/payments whose client gives up after 150 ms, long before Stripe answers.
async fn pay_and_walk_away(app: &TestApp, user: &User, order: &OrderCreated) {
    let impatient = app
        .client
        .post(app.url("/api/payments"))
        .header(reqwest::header::COOKIE, &user.cookie)
        .json(&json!({ "orderId": order.id, "token": "tok_visa" }))
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(
        impatient.is_err(),
        "the client gave up before Stripe answered"
    );
}

#[tokio::test]
async fn a_charge_answered_after_the_timeout_is_confirmed_by_the_reconciler_and_a_retry_with_a_new_token_is_not_charged()
 {
    let app = spawn_app_with_stripe_timeout(Duration::from_millis(300)).await;
    // Stripe charges at once but its answer comes after our timeout.
    let (double, user, order) =
        order_with_stripe(&app, 2500, answering_after(Duration::from_secs(2))).await;

    let first = app.pay(&user, &order.id, "tok_visa").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(first.body, errors(&[(BEING_CONFIRMED, None)]));
    double.set(Behaviour::Normal {
        delay: Duration::ZERO,
    });
    // The buyer's card form makes a new token for the retry.
    let retry = app.pay(&user, &order.id, "tok_visa_second_try").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{:?}", retry.body);
    assert_eq!(retry.body, errors(&[(BEING_CONFIRMED, None)]));

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(
        double.charges().len(),
        1,
        "one charge, {:?}",
        double.charges()
    );
    assert_eq!(payment.stripe_id, Some(double.charges()[0].id.clone()));
    assert_eq!(payment.source, None, "the token is dropped once settled");
    assert!(double.requests() >= 2, "the reconciler asked again");
    let again = app.pay(&user, &order.id, "tok_visa_third_try").await;
    assert_eq!(again.body, errors(&[(ALREADY_PAID, None)]));
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn stripe_failing_after_charging_then_recovering_settles_the_attempt_once() {
    let app = spawn_app_with_stripe_timeout(Duration::from_millis(500)).await;
    let (double, user, order) =
        order_with_stripe(&app, 1200, Behaviour::FailsAfterProcessing).await;

    let reply = app.pay(&user, &order.id, "tok_visa").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    // Down for a while: the reconciler keeps asking, and keeps the attempt open.
    double.set(Behaviour::Down);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored = app.payment_records(&order.id).await;
    assert_eq!(stored[0].status, PaymentStatus::Unknown);
    double.set(Behaviour::Normal {
        delay: Duration::ZERO,
    });

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(double.charges().len(), 1);
    assert_eq!(double.charges_of(&order.id.to_string()).len(), 1);
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_charge_does_not_cut_the_charge() {
    let (app, double, user, order) =
        app_with_order(4000, answering_after(Duration::from_millis(800))).await;

    pay_and_walk_away(&app, &user, &order).await;

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.stripe_id, Some(double.charges()[0].id.clone()));
    assert_eq!(double.charges().len(), 1);
}

#[tokio::test]
async fn stopping_the_service_waits_for_a_charge_whose_client_has_gone() {
    let (app, double, user, order) =
        app_with_order(4000, answering_after(Duration::from_millis(1000))).await;
    pay_and_walk_away(&app, &user, &order).await;

    app.stop().await;

    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded, "{payment:?}");
    assert_eq!(double.charges().len(), 1);
}

#[tokio::test]
async fn an_order_cancelled_during_a_slow_charge_is_refunded_once() {
    let (app, double, user, order) =
        app_with_order(3300, answering_after(Duration::from_millis(800))).await;

    let (reply, ()) = tokio::join!(app.pay(&user, &order.id, "tok_visa"), async {
        // The order expires (or its buyer cancels it) while Stripe is charging.
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.cancel(&order).await;
    });

    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.body, errors(&[(REFUNDED, None)]));
    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Refunded);
    let charges = double.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(double.refunds().len(), 1);
    assert_eq!(payment.refund_id, charges[0].refund_id);
    // A redelivered cancellation refunds nothing more, and paying again says why.
    app.cancel(&order).await;
    assert_eq!(double.refunds().len(), 1);
    let again = app.pay(&user, &order.id, "tok_visa").await;
    assert_eq!(again.body, errors(&[(REFUNDED, None)]));
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_paid_order_cancelled_afterwards_is_refunded_once_even_when_the_cancellation_comes_twice()
{
    let (app, double, user, order) = app_with_order(1000, answering_after(Duration::ZERO)).await;
    app.pay_ok(&user, &order.id).await;

    // The orders service cancelled the order before it heard of the payment.
    app.cancel(&order).await;
    app.cancel(&order).await;

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(double.refunds().len(), 1);
    assert_eq!(
        double.refunds()[0].idempotency_key.as_deref(),
        Some(format!("refund-{}", double.charges()[0].id).as_str())
    );
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_refund_stripe_cannot_make_now_is_made_by_the_reconciler() {
    let app = spawn_app_with_stripe_timeout(Duration::from_millis(300)).await;
    let (double, user, order) =
        order_with_stripe(&app, 1000, answering_after(Duration::ZERO)).await;
    app.pay_ok(&user, &order.id).await;
    double.set(Behaviour::Down);

    app.cancel(&order).await;
    assert_eq!(
        app.payment_records(&order.id).await[0].status,
        PaymentStatus::Refunding
    );
    double.set(Behaviour::Normal {
        delay: Duration::ZERO,
    });

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(double.refunds().len(), 1);
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn twenty_concurrent_payments_with_twenty_tokens_charge_once() {
    let (app, double, user, order) =
        app_with_order(2000, answering_after(Duration::from_millis(300))).await;

    let replies = app.pay_at_once(&[app.addr], &user, &order.id, 20).await;

    the_one_created(&replies);
    for refused in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert!(
            refused.body == errors(&[(IN_PROGRESS, None)])
                || refused.body == errors(&[(ALREADY_PAID, None)]),
            "{refused:?}"
        );
    }
    assert_eq!(double.charges().len(), 1);
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_reconciler_pass_leaves_young_attempts_alone() {
    let (app, double, user, order) =
        app_with_order(2000, answering_after(Duration::from_millis(600))).await;
    let timing = ReconcileTiming::for_stripe_timeout(Duration::from_secs(2));
    let (reply, pass) = tokio::join!(app.pay(&user, &order.id, "tok_visa"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.saga.reconcile_once(&timing).await.expect("a pass")
    });
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!((pass.settled, pass.unresolved), (0, 0), "{pass:?}");
    let next_due = pass.next_due.expect("one open attempt, too young to touch");
    assert!(
        next_due > Duration::from_secs(6) && next_due <= timing.horizon,
        "due when its own request cannot be running any more: {next_due:?}"
    );
    assert_eq!(double.requests(), 1);
}

#[tokio::test]
async fn an_attempt_that_never_reached_stripe_is_failed_by_the_reconciler_without_a_charge() {
    let (app, double, user, order) = app_with_order(1500, answering_after(Duration::ZERO)).await;
    let replica = app.replica(&order.id).await.expect("replica");
    // The process recorded the attempt and stopped before sending it (or could not reach the
    // database to mark it sent).
    app.payments
        .begin(
            &app.bus().await,
            &replica,
            payments::store::Via::Charge,
            "tok_visa",
            payments::stripe::token_hash("tok_visa"),
        )
        .await
        .expect("an attempt");

    let timing = ReconcileTiming {
        horizon: Duration::ZERO,
        ..ReconcileTiming::for_stripe_timeout(Duration::from_secs(1))
    };
    let pass = app.saga.reconcile_once(&timing).await.expect("a pass");

    assert_eq!((pass.settled, pass.unresolved), (1, 0), "{pass:?}");
    assert_eq!(double.requests(), 0, "nothing sent for the first time late");
    app.assert_not_paid(&order.id).await;
    // The buyer can pay again.
    app.pay_ok(&user, &order.id).await;
    assert_eq!(double.charges().len(), 1);
}

#[tokio::test]
async fn an_order_whose_window_closes_while_its_attempt_is_recorded_is_not_charged() {
    let (app, double, _, order) = app_with_order(1500, answering_after(Duration::ZERO)).await;
    // The route checked the window a moment ago; it has closed since.
    let replica = window_closing_in(&app, &order, -1).await;

    let outcome = app
        .saga
        .pay(&replica, payments::store::Via::Charge, "tok_visa")
        .await
        .expect("paid");

    assert!(
        matches!(outcome, payments::saga::PayOutcome::Expired),
        "{outcome:?}"
    );
    assert_eq!(double.requests(), 0);
    app.assert_not_paid(&order.id).await;
}

#[tokio::test]
async fn an_order_cancelled_after_the_route_read_it_is_not_charged() {
    let (app, double, _, order) = app_with_order(1500, answering_after(Duration::ZERO)).await;
    // The route read the order open; its cancellation is applied before the attempt is recorded.
    let read = app.replica(&order.id).await.expect("replica");
    app.cancel(&order).await;

    let outcome = app
        .saga
        .pay(&read, payments::store::Via::Charge, "tok_visa")
        .await
        .expect("answered");

    assert!(
        matches!(outcome, payments::saga::PayOutcome::OrderCancelled),
        "{outcome:?}"
    );
    assert_eq!(double.requests(), 0, "nothing sent to Stripe");
    app.assert_not_paid(&order.id).await;
}

#[tokio::test]
async fn a_charge_that_settles_after_the_window_closed_is_answered_as_being_confirmed_not_paid() {
    let (app, double, _, order) =
        app_with_order(1500, answering_after(Duration::from_millis(1500))).await;
    // The window closes while Stripe is still answering: the order's expiry may win in orders.
    let replica = window_closing_in(&app, &order, 700).await;

    let outcome = app
        .saga
        .pay(&replica, payments::store::Via::Charge, "tok_visa")
        .await
        .expect("charged");

    assert!(
        matches!(outcome, payments::saga::PayOutcome::Confirming),
        "{outcome:?}"
    );
    assert_eq!(double.charges().len(), 1);
    assert_eq!(
        app.the_one_payment(&order.id).await.status,
        PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn a_charge_whose_payment_event_cannot_reach_the_stream_in_time_is_answered_as_being_confirmed_not_paid()
 {
    let (app, double, user, order) = app_with_order(1500, answering_after(Duration::ZERO)).await;
    // The stream is gone (the broker lost it): `payment:created` stays in the outbox, and the
    // order's expiry could reach the orders service before it.
    let nats = async_nats::connect(app.settings.backend.nats.url.as_str())
        .await
        .expect("a NATS connection");
    async_nats::jetstream::new(nats)
        .delete_stream(&app.settings.backend.nats.stream)
        .await
        .expect("the stream is deleted");

    let reply = app.pay(&user, &order.id, "tok_visa").await;

    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(double.charges().len(), 1);
    assert_eq!(
        app.the_one_payment(&order.id).await.status,
        PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn a_declined_card_fails_the_attempt_without_a_charge_and_a_new_card_pays() {
    let (app, double, user, order) = app_with_order(1500, answering_after(Duration::ZERO)).await;

    let declined = app
        .pay(
            &user,
            &order.id,
            common::testing::stripe_double::DECLINED_TOKEN,
        )
        .await;
    assert_eq!(declined.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        declined.body,
        errors(&[(common::testing::stripe_double::DECLINE_MESSAGE, None)])
    );
    assert_eq!(double.charges(), Vec::new());
    app.pay_ok(&user, &order.id).await;

    assert_eq!(double.charges_of(&order.id.to_string()).len(), 1);
    assert_eq!(
        app.payment_records(&order.id).await[0].attempts,
        2,
        "the declined attempt and the paid one"
    );
}
