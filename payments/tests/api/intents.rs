//! Paying through the page's checkout: a PaymentIntent created and confirmed with the buyer's
//! PaymentMethod, against the ledger-keeping Stripe double (which makes intents, asks 3-D Secure
//! of `pm_card_threeDSecure2Required`, and declines `pm_card_chargeDeclined`).

use std::time::Duration;

use common::events::OrderCreated;
use common::testing::stripe_double::{
    AUTHENTICATION_FAILED, Behaviour, DECLINE_MESSAGE, DECLINED_PAYMENT_METHOD, StripeDouble,
    THREE_D_SECURE_PAYMENT_METHOD,
};
use common::testing::{not_authorized, send};
use payments::routes::payments::{AWAITING_AUTHENTICATION, BEING_CONFIRMED, INVALID_VALUE};
use payments::store::{PaymentStatus, Via};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{
    TestApp, User, errors, money_holds, settled, spawn_app, spawn_app_with_stripe_timeout,
    the_one_created, the_others_were_refused,
};

const VISA: &str = "pm_card_visa";

/// A fresh app, its Stripe double, and an order of a new buyer at `cents`.
async fn app_with_order(cents: i64) -> (TestApp, StripeDouble, User, OrderCreated) {
    let app = spawn_app().await;
    let double = app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(cents).await;
    (app, double, user, order)
}

/// Pays with the 3-D Secure card and checks the `requires_action` answer: the intent's id.
async fn pay_needing_authentication(
    app: &TestApp,
    double: &StripeDouble,
    user: &User,
    order: &OrderCreated,
) -> String {
    let reply = app
        .pay_intent(user, &order.id, THREE_D_SECURE_PAYMENT_METHOD)
        .await;
    let intents = double.intents_of(&order.id.to_string());
    assert_eq!(intents.len(), 1, "{intents:?}");
    let intent = intents[0].id.clone();
    assert_eq!(
        (reply.status, &reply.body),
        (
            StatusCode::OK,
            &json!({"status": "requires_action", "clientSecret": format!("{intent}_secret_double")})
        )
    );
    intent
}

#[tokio::test]
async fn a_payment_method_pays_the_order_with_one_confirmed_intent_keyed_by_the_attempt() {
    let (app, double, user, order) = app_with_order(2550).await;
    let mut payments = app.observe_payments().await;

    let reply = app.pay_intent(&user, &order.id, VISA).await;

    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(
        reply.body,
        json!({"success": true, "id": payment.payment_id})
    );
    let intents = double.intents();
    assert_eq!(intents.len(), 1, "{intents:?}");
    let intent = &intents[0];
    assert_eq!(intent.amount, 2550);
    assert_eq!(intent.payment_method, VISA);
    assert_eq!(intent.order_id, Some(order.id.to_string()));
    assert_eq!(
        intent.attempt_id.as_deref(),
        Some(payment.payment_id.as_str())
    );
    assert_eq!(
        intent.idempotency_key,
        Some(format!("intent-{}", payment.payment_id))
    );
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.via, Via::Intent);
    assert_eq!(payment.stripe_id.as_deref(), Some(intent.id.as_str()));
    assert_eq!(
        payment.source, None,
        "the payment method is dropped once paid"
    );
    let created = payments.next().await;
    assert_eq!(created.stripe_id, intent.id);
    assert_eq!(created.order_id, order.id);
    assert!(double.requests() == 1, "no charge besides the intent");
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_card_asking_for_3d_secure_answers_requires_action_and_is_paid_once_checked_after_it() {
    let (app, double, user, order) = app_with_order(1800).await;

    let intent = pay_needing_authentication(&app, &double, &user, &order).await;
    let waiting = app.the_one_payment(&order.id).await;
    assert_eq!(waiting.status, PaymentStatus::RequiresAction);
    assert_eq!(waiting.intent_id.as_deref(), Some(intent.as_str()));
    assert_eq!(waiting.stripe_id, None, "not paid yet");
    // Checking before the buyer has authenticated says so again.
    let early = app.check_intent(&user, &order.id).await;
    assert_eq!(early.status, StatusCode::OK, "{:?}", early.body);
    assert_eq!(early.body["status"], "requires_action");
    // Paying again meanwhile (the buyer closed the authentication) reopens the same intent.
    let again = app.pay_intent(&user, &order.id, VISA).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &early.body));
    // A card token meanwhile is refused: one payment per order.
    let token = app.pay(&user, &order.id, "tok_visa").await;
    assert_eq!(
        (token.status, token.body),
        (
            StatusCode::CONFLICT,
            errors(&[(AWAITING_AUTHENTICATION, None)])
        )
    );
    assert_eq!(double.intents().len(), 1, "one intent per order");

    assert!(double.authenticate(&intent, true), "3-D Secure passes");
    let checked = app.check_intent(&user, &order.id).await;

    assert_eq!(checked.status, StatusCode::CREATED, "{:?}", checked.body);
    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(
        checked.body,
        json!({"success": true, "id": payment.payment_id})
    );
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.stripe_id, Some(intent));
    assert_eq!(double.intents().len(), 1);
    assert_eq!(double.charges().len(), 1);
    let after = app.check_intent(&user, &order.id).await;
    assert_eq!(
        after.status,
        StatusCode::CREATED,
        "checking again changes nothing"
    );
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_failed_3d_secure_is_a_400_in_stripes_words_and_the_order_can_be_paid_again() {
    let (app, double, user, order) = app_with_order(900).await;
    let intent = pay_needing_authentication(&app, &double, &user, &order).await;

    assert!(double.authenticate(&intent, false), "3-D Secure fails");
    let checked = app.check_intent(&user, &order.id).await;

    assert_eq!(
        (checked.status, checked.body),
        (
            StatusCode::BAD_REQUEST,
            errors(&[(AUTHENTICATION_FAILED, None)])
        )
    );
    let failed = app.the_one_payment(&order.id).await;
    assert_eq!(failed.status, PaymentStatus::Failed);
    assert_eq!(failed.stripe_id, None);
    assert!(double.charges().is_empty());
    let paid = app.pay_intent(&user, &order.id, VISA).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.body);
    assert_eq!(double.intents().len(), 2, "a new attempt, a new intent");
    assert_eq!(app.the_one_payment(&order.id).await.attempts, 2);
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_declined_payment_method_is_a_400_with_stripes_message_and_charges_nothing() {
    let (app, double, user, order) = app_with_order(1000).await;

    let reply = app
        .pay_intent(&user, &order.id, DECLINED_PAYMENT_METHOD)
        .await;

    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::BAD_REQUEST, errors(&[(DECLINE_MESSAGE, None)]))
    );
    assert!(double.charges().is_empty());
    app.assert_not_paid(&order.id).await;
}

#[tokio::test]
async fn an_intent_whose_answer_is_lost_is_reconciled_by_repeating_its_keyed_creation() {
    let app = spawn_app_with_stripe_timeout(Duration::from_millis(500)).await;
    let double = app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(1500).await;
    double.set(Behaviour::FailsAfterProcessing);

    let reply = app.pay_intent(&user, &order.id, VISA).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::ACCEPTED, &errors(&[(BEING_CONFIRMED, None)]))
    );
    assert_eq!(
        app.the_one_payment(&order.id).await.status,
        PaymentStatus::Unknown
    );
    double.set(Behaviour::Normal {
        delay: Duration::ZERO,
    });

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(double.intents().len(), 1, "{:?}", double.intents());
    assert_eq!(payment.stripe_id, Some(double.intents()[0].id.clone()));
    assert!(double.requests() >= 2, "the reconciler asked again");
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn ten_concurrent_payments_with_payment_methods_make_one_intent() {
    let (app, double, user, order) = app_with_order(2000).await;
    // A slow Stripe keeps the first attempt open while the others arrive.
    double.set(Behaviour::Normal {
        delay: Duration::from_millis(500),
    });

    let replies = futures::future::join_all((0..10).map(|i| {
        app.pay_intent(
            &user,
            &order.id,
            if i == 0 { VISA } else { "pm_card_mastercard" },
        )
    }))
    .await;

    assert_eq!(double.intents().len(), 1, "{:?}", double.intents());
    the_one_created(&replies);
    the_others_were_refused(&replies);
    assert_eq!(
        app.the_one_payment(&order.id).await.status,
        PaymentStatus::Succeeded
    );
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_paid_intent_whose_order_is_cancelled_is_refunded_once_by_its_payment_intent() {
    let (app, double, user, order) = app_with_order(3000).await;
    let paid = app.pay_intent(&user, &order.id, VISA).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.body);

    app.cancel(&order).await;

    let payment = app
        .payment_when(&order.id, |s| s == PaymentStatus::Refunded)
        .await;
    let refunds = double.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(Some(refunds[0].charge_id.clone()), payment.stripe_id);
    assert_eq!(
        refunds[0].idempotency_key,
        payment.stripe_id.map(|pi| format!("refund-{pi}"))
    );
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn an_intent_authenticated_after_its_order_was_cancelled_is_refunded() {
    let (app, double, user, order) = app_with_order(1200).await;
    let intent = pay_needing_authentication(&app, &double, &user, &order).await;
    app.cancel(&order).await;
    // The buyer finishes 3-D Secure anyway, before anyone cancelled the intent at Stripe.
    assert!(double.authenticate(&intent, true));

    app.check_intent(&user, &order.id).await;

    let payment = app
        .payment_when(&order.id, |s| s == PaymentStatus::Refunded)
        .await;
    assert_eq!(payment.stripe_id, Some(intent.clone()));
    assert_eq!(double.refunds().len(), 1);
    assert_eq!(double.refunds()[0].charge_id, intent);
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn an_intent_left_waiting_for_3d_secure_after_its_order_is_cancelled_is_cancelled_by_the_reconciler()
 {
    let app = spawn_app_with_stripe_timeout(Duration::from_millis(300)).await;
    let double = app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(700).await;
    let intent = pay_needing_authentication(&app, &double, &user, &order).await;

    app.cancel(&order).await;

    let payment = app.payment_when(&order.id, settled).await;
    assert_eq!(payment.status, PaymentStatus::Failed);
    assert_eq!(payment.stripe_id, None);
    assert_eq!(
        double.intents_of(&order.id.to_string())[0].status,
        "canceled"
    );
    assert!(
        !double.authenticate(&intent, true),
        "too late to authenticate"
    );
    assert!(double.charges().is_empty());
    money_holds(&app, &double).await;
}

#[tokio::test]
async fn a_payment_intent_needs_a_signed_in_buyer_a_payment_method_and_an_order_id() {
    let (app, _double, user, order) = app_with_order(500).await;
    let url = app.url("/api/payments/intents");

    let anonymous = send(
        &app.client,
        Method::POST,
        &url,
        None,
        Some(&json!({"orderId": order.id.to_string(), "paymentMethod": VISA})),
    )
    .await;
    assert_eq!(
        (anonymous.status, anonymous.body),
        (StatusCode::UNAUTHORIZED, not_authorized())
    );
    for (body, expected) in [
        (
            json!({}),
            errors(&[
                (INVALID_VALUE, Some("paymentMethod")),
                (INVALID_VALUE, Some("orderId")),
            ]),
        ),
        (
            json!({"orderId": order.id.to_string(), "paymentMethod": "  "}),
            errors(&[(INVALID_VALUE, Some("paymentMethod"))]),
        ),
        (
            json!({"paymentMethod": VISA, "token": "tok_visa"}),
            errors(&[(INVALID_VALUE, Some("orderId"))]),
        ),
    ] {
        let reply = send(
            &app.client,
            Method::POST,
            &url,
            Some(&user.cookie),
            Some(&body),
        )
        .await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::BAD_REQUEST, &expected),
            "{body}"
        );
    }
    let stranger = app.pay_intent(&User::new(), &order.id, VISA).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    let unknown = app
        .pay_intent(&user, "64b7f0c2a1b2c3d4e5f60718", VISA)
        .await;
    unknown.expect_not_found("an order payments does not know");
    let no_attempt = app.check_intent(&user, &order.id).await;
    no_attempt.expect_not_found("nothing to check before any attempt");
    assert!(
        app.stripe_requests().await.is_empty(),
        "nothing reached Stripe"
    );
}
