use std::time::Duration;

use common::money::Price;
use mongodb::bson::oid::ObjectId;
use payments::routes::payments::{
    ALREADY_PAID, BEING_CONFIRMED, CANCELLED_ORDER, EXPIRED_ORDER, INVALID_VALUE,
    PROVIDER_UNAVAILABLE,
};
use payments::store::PaymentStatus;
use payments::stripe::{GENERIC_DECLINE, charge_idempotency_key, token_hash};
use reqwest::{Method, StatusCode};
use serde_json::json;
use wiremock::ResponseTemplate;

use common::events::OrderCreated;
use common::testing::{not_authorized, not_found, send};

use crate::helpers::{
    Reply, STRIPE_TEST_KEY, TestApp, User, errors, form, spawn_app, spawn_app_with, stripe_answers,
    stripe_charge_answer, stripe_charges_succeed, the_one_created, the_others_were_refused,
};

const DECLINED: &str = "Your card was declined.";

fn declined_body() -> serde_json::Value {
    json!({"error": {"type": "card_error", "message": DECLINED, "code": "card_declined",
                     "decline_code": "generic_decline"}})
}

fn field(form: &std::collections::HashMap<String, String>, name: &str) -> Option<String> {
    form.get(name).cloned()
}

fn header(request: &wiremock::Request, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn paying_an_order_charges_its_price_in_euro_cents_and_answers_201() {
    let app = spawn_app().await;
    let (user, order) = app.payable_order(1999, "ch_paid_1", Duration::ZERO).await;

    let body = app.pay_ok(&user, &order.id).await;

    assert_eq!(body["success"], true);
    let payment_id = body["id"].as_str().expect("a payment id").to_owned();
    assert!(ObjectId::parse_str(&payment_id).is_ok(), "{payment_id}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2));

    let requests = app.stripe_requests().await;
    assert_eq!(requests.len(), 1);
    let charge = &requests[0];
    assert_eq!(charge.url.path(), "/v1/charges");
    let sent = form(charge);
    assert_eq!(field(&sent, "amount").as_deref(), Some("1999"));
    assert_eq!(field(&sent, "currency").as_deref(), Some("eur"));
    assert_eq!(field(&sent, "source").as_deref(), Some("tok_visa"));
    assert_eq!(
        header(charge, "idempotency-key"),
        Some(charge_idempotency_key(&payment_id)),
        "keyed by the attempt, never by the token"
    );
    assert_eq!(
        field(&sent, "metadata[order_id]"),
        Some(order.id.to_string())
    );
    assert_eq!(
        field(&sent, "metadata[attempt_id]"),
        Some(payment_id.clone())
    );
    assert_eq!(
        header(charge, "authorization"),
        Some(format!("Bearer {STRIPE_TEST_KEY}"))
    );

    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(payment.payment_id, payment_id);
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.stripe_id.as_deref(), Some("ch_paid_1"));
    assert_eq!(payment.version, 2, "pending, sent, succeeded");
    assert_eq!(payment.amount_cents, 1999);
    assert_eq!(payment.attempts, 1);
    assert_eq!(payment.token_hash, token_hash("tok_visa"));
    assert!(
        !format!("{payment:?}").contains("tok_visa"),
        "the card token is dropped once the charge is settled"
    );
}

#[tokio::test]
async fn a_payment_publishes_payment_created_once_with_the_payment_order_and_charge_ids() {
    let app = spawn_app().await;
    let mut observed = app.observe_payments().await;
    let (user, order) = app.payable_order(2000, "ch_event_1", Duration::ZERO).await;

    let body = app.pay_ok(&user, &order.id).await;

    let event = tokio::time::timeout(Duration::from_secs(10), observed.recv())
        .await
        .expect("payment:created within 10 s")
        .expect("an event");
    assert_eq!(
        serde_json::to_value(&event).expect("json"),
        json!({"id": body["id"], "orderId": order.id, "stripeId": "ch_event_1"})
    );
    // Published by the request itself: the outbox has nothing left to send again.
    let relayed = app
        .payments
        .payments()
        .relay_once(&app.bus().await, Duration::ZERO)
        .await
        .expect("relay pass");
    assert_eq!(relayed.published, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), observed.recv())
            .await
            .is_err(),
        "a second payment:created was delivered"
    );
}

#[tokio::test]
async fn a_paid_order_cannot_be_paid_again() {
    let app = spawn_app().await;
    let (user, order) = app.payable_order(2000, "ch_once", Duration::ZERO).await;
    app.pay_ok(&user, &order.id).await;

    for token in ["tok_visa", "tok_mastercard"] {
        let reply = app.pay(&user, &order.id, token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{token}");
        assert_eq!(reply.body, errors(&[(ALREADY_PAID, None)]));
    }
    assert_eq!(app.stripe_requests().await.len(), 1);
    assert_eq!(app.payment_records(&order.id).await.len(), 1);
}

#[tokio::test]
async fn ten_concurrent_payments_for_one_order_charge_once() {
    let app = spawn_app().await;
    // A slow Stripe keeps the first claim pending while the others arrive.
    let (user, order) = app
        .payable_order(2000, "ch_race", Duration::from_millis(500))
        .await;

    let replies = app.pay_at_once(&[app.addr], &user, &order.id, 10).await;

    assert_eq!(
        app.stripe_requests().await.len(),
        1,
        "one charge reached Stripe"
    );
    let created = the_one_created(&replies);
    the_others_were_refused(&replies);
    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(
        created.body["id"].as_str(),
        Some(payment.payment_id.as_str())
    );
}

#[tokio::test]
async fn two_replicas_paying_one_order_at_once_charge_once() {
    let app = spawn_app().await;
    let (replica, _stop) = app.spawn_replica().await;
    let (user, order) = app
        .payable_order(3000, "ch_replicas", Duration::from_millis(300))
        .await;

    let replies = app
        .pay_at_once(&[app.addr, replica], &user, &order.id, 12)
        .await;

    the_one_created(&replies);
    assert!(
        replies.iter().all(|r| matches!(
            r.status,
            StatusCode::CREATED | StatusCode::CONFLICT | StatusCode::BAD_REQUEST
        )),
        "{replies:?}"
    );
    assert_eq!(
        app.stripe_requests().await.len(),
        1,
        "one charge reached Stripe"
    );
    assert_eq!(app.payment_records(&order.id).await.len(), 1);
}

/// A €20 order of a new buyer, paid with `token` while Stripe answers every charge with `status`
/// and `body`: the app, the buyer, the order and the answer.
async fn pay_while_stripe_answers(
    status: u16,
    body: serde_json::Value,
    token: &str,
) -> (TestApp, User, OrderCreated, Reply) {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(2000).await;
    stripe_answers(&app, status, body).await;
    let reply = app.pay(&user, &order.id, token).await;
    (app, user, order, reply)
}

#[tokio::test]
async fn a_declined_card_answers_400_with_stripes_message_and_leaves_the_order_unpaid() {
    let (app, _, order, reply) =
        pay_while_stripe_answers(402, declined_body(), "tok_chargeDeclined").await;

    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body, errors(&[(DECLINED, None)]));
    assert_eq!(app.stripe_requests().await.len(), 1);
    app.assert_not_paid(&order.id).await;
    let failed = &app.payment_records(&order.id).await[0];
    // The record keeps Stripe's whole answer for whoever investigates.
    assert_eq!(
        failed.failure.as_deref(),
        Some("402 card_error: Your card was declined.")
    );
}

#[tokio::test]
async fn after_a_decline_a_new_card_pays_the_order_as_a_new_attempt_under_a_new_key() {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(2000).await;
    stripe_charge_answer(ResponseTemplate::new(402).set_body_json(declined_body()))
        .up_to_n_times(1)
        .mount(&app.stripe)
        .await;
    stripe_charges_succeed(&app, "ch_second_card", 2000, Duration::ZERO).await;

    let declined = app.pay(&user, &order.id, "tok_chargeDeclined").await;
    assert_eq!(declined.status, StatusCode::BAD_REQUEST);
    app.pay_ok(&user, &order.id).await;

    let keys: Vec<_> = app
        .stripe_requests()
        .await
        .iter()
        .map(|r| header(r, "idempotency-key"))
        .collect();
    let records = app.payment_records(&order.id).await;
    assert_eq!(records.len(), 1, "one payment per order");
    assert_eq!(records[0].stripe_id.as_deref(), Some("ch_second_card"));
    assert_eq!(records[0].attempts, 2);
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "each attempt has its own key");
    assert_eq!(
        keys[1],
        Some(charge_idempotency_key(&records[0].payment_id))
    );
}

#[tokio::test]
async fn a_stripe_failure_after_the_request_left_is_being_confirmed_and_a_retry_is_not_charged() {
    let (app, user, order, first) = pay_while_stripe_answers(
        500,
        json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
        "tok_visa",
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(first.body, errors(&[(BEING_CONFIRMED, None)]));
    let retry = app.pay(&user, &order.id, "tok_mastercard").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{:?}", retry.body);
    assert_eq!(retry.body, errors(&[(BEING_CONFIRMED, None)]));

    assert_eq!(
        app.stripe_requests().await.len(),
        1,
        "the retry reached no Stripe"
    );
    let records = app.payment_records(&order.id).await;
    assert_eq!(records[0].status, PaymentStatus::Unknown);
    assert_eq!(
        records[0].source.as_deref(),
        Some("tok_visa"),
        "kept to repeat the keyed request"
    );
}

#[tokio::test]
async fn stripe_errors_that_charged_nothing_answer_in_our_words_and_leave_the_order_unpaid() {
    // (case, Stripe's status and body, card token, our status and message)
    let cases = [
        (
            "a rate-limited charge answers 502",
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
                             "message": "Too many requests hit the API too quickly."}}),
            "tok_visa",
            StatusCode::BAD_GATEWAY,
            PROVIDER_UNAVAILABLE,
        ),
        (
            "a rejected Stripe key is a generic 500 that does not leak Stripe's message",
            401,
            json!({"error": {"type": "invalid_request_error",
                             "message": "Invalid API Key provided: sk_test_****uite"}}),
            "tok_visa",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
        ),
        (
            "an invalid token answers 400 with a generic message, not Stripe's words",
            400,
            json!({"error": {"type": "invalid_request_error", "param": "source",
                             "message": "No such token: 'tok_bogus'", "code": "resource_missing"}}),
            "tok_bogus",
            StatusCode::BAD_REQUEST,
            GENERIC_DECLINE,
        ),
    ];
    for (case, stripe_status, stripe_body, token, status, message) in cases {
        let (app, _, order, reply) =
            pay_while_stripe_answers(stripe_status, stripe_body, token).await;

        assert_eq!(reply.status, status, "{case}");
        assert_eq!(reply.body, errors(&[(message, None)]), "{case}");
        app.assert_not_paid(&order.id).await;
    }
}

#[tokio::test]
async fn a_stripe_error_page_that_is_not_json_leaves_the_charge_being_confirmed() {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(2000).await;
    stripe_charge_answer(ResponseTemplate::new(503).set_body_string("<html>upstream down</html>"))
        .mount(&app.stripe)
        .await;

    let reply = app.pay(&user, &order.id, "tok_visa").await;

    // A 5xx may come after Stripe charged: only the reconciler's repeat can tell.
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body, errors(&[(BEING_CONFIRMED, None)]));
    assert_eq!(
        app.payment_records(&order.id).await[0].status,
        PaymentStatus::Unknown
    );
}

#[tokio::test]
async fn an_unreachable_stripe_answers_502_and_leaves_the_order_unpaid() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let app = spawn_app_with(|settings| {
        settings.stripe.api_base = format!("http://{closed}/");
    })
    .await;
    let (user, order) = app.order_of_new_buyer(2000).await;

    let reply = app.pay(&user, &order.id, "tok_visa").await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, errors(&[(PROVIDER_UNAVAILABLE, None)]));
    app.assert_not_paid(&order.id).await;
}

#[tokio::test]
async fn anonymous_payments_are_refused_with_401_before_validation() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"token": "tok_visa", "orderId": "64b7f0c2a1b2c3d4e5f60718"}),
    ] {
        let reply = app.post_payment(None, &body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body, not_authorized());
    }
    assert!(app.stripe_requests().await.is_empty());
}

#[tokio::test]
async fn a_missing_or_empty_token_or_order_id_is_an_invalid_value() {
    let app = spawn_app().await;
    let user = User::new();
    let both = errors(&[
        (INVALID_VALUE, Some("token")),
        (INVALID_VALUE, Some("orderId")),
    ]);
    let cases = [
        (json!({}), both.clone()),
        (json!({"token": "", "orderId": "  "}), both.clone()),
        (json!({"token": 42, "orderId": null}), both),
        (
            json!({"token": "tok_visa"}),
            errors(&[(INVALID_VALUE, Some("orderId"))]),
        ),
        (
            json!({"orderId": "64b7f0c2a1b2c3d4e5f60718"}),
            errors(&[(INVALID_VALUE, Some("token"))]),
        ),
    ];
    for (body, expected) in cases {
        let reply = app.post_payment(Some(&user.cookie), &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.body, expected, "{body}");
    }
}

#[tokio::test]
async fn a_malformed_or_unknown_order_id_is_404() {
    let app = spawn_app().await;
    let user = User::new();
    for order_id in ["not-an-id", "12-char-str!", "64b7f0c2a1b2c3d4e5f60718"] {
        let reply = app.pay(&user, order_id, "tok_visa").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{order_id}");
        assert_eq!(reply.body, not_found(), "{order_id}");
    }
    assert!(app.stripe_requests().await.is_empty());
}

#[tokio::test]
async fn another_users_order_cannot_be_paid() {
    let app = spawn_app().await;
    let owner = User::new();
    let order = app.order_for(&owner, Price::from_cents(2000)).await;

    let reply = app.pay(&User::new(), &order.id, "tok_visa").await;

    app.assert_refused_uncharged(
        &reply,
        StatusCode::UNAUTHORIZED,
        not_authorized(),
        &order.id,
    )
    .await;
}

#[tokio::test]
async fn a_cancelled_order_cannot_be_paid() {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(2000).await;
    app.cancel(&order).await;

    let reply = app.pay(&user, &order.id, "tok_visa").await;

    let cancelled = errors(&[(CANCELLED_ORDER, None)]);
    app.assert_refused_uncharged(&reply, StatusCode::BAD_REQUEST, cancelled, &order.id)
        .await;
    assert_eq!(CANCELLED_ORDER, "Canncelled order unabled for payment.");
}

#[tokio::test]
async fn an_order_past_its_expiry_is_not_charged_even_before_the_expiration_arrives() {
    let app = spawn_app().await;
    let user = User::new();
    let mut event = crate::helpers::order_created_event(&user.id, Price::from_cents(2000));
    event.expires_at = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let outcome = payments::listeners::order_created::handle(&app.orders, event.clone())
        .await
        .expect("order:created applies");
    assert_eq!(outcome, common::bus::Outcome::Ack);

    let reply = app.pay(&user, &event.id, "tok_visa").await;

    let expired = errors(&[(EXPIRED_ORDER, None)]);
    app.assert_refused_uncharged(&reply, StatusCode::BAD_REQUEST, expired, &event.id)
        .await;
}

#[tokio::test]
async fn an_order_known_only_from_the_bus_can_be_paid() {
    let app = spawn_app().await;
    let user = User::new();
    let order = crate::helpers::order_created_event(&user.id, Price::from_cents(1500));
    app.bus().await.publish(&order).await.expect("published");
    crate::helpers::eventually("the replica", || async { app.replica(&order.id).await }).await;
    stripe_charges_succeed(&app, "ch_bus", 1500, Duration::ZERO).await;

    app.pay_ok(&user, &order.id).await;

    assert_eq!(
        field(&form(&app.stripe_requests().await[0]), "amount").as_deref(),
        Some("1500")
    );
}

#[tokio::test]
async fn unknown_routes_are_404_and_the_service_reports_ready() {
    let app = spawn_app().await;
    let reply = app.get("/api/payments").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, not_found());

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(ready.body, json!({"status": "ready", "deadLetters": 0}));
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
}

/// `GET path` as `user`.
async fn get_as(app: &TestApp, user: &User, path: &str) -> Reply {
    send(
        &app.client,
        Method::GET,
        &app.url(path),
        Some(&user.cookie),
        None,
    )
    .await
}

#[tokio::test]
async fn the_owner_sees_where_the_payment_of_their_order_stands_and_nobody_else_does() {
    let app = spawn_app().await;
    let (user, order) = app.order_of_new_buyer(2000).await;
    let path = format!("/api/payments/{}", order.id);

    let before = get_as(&app, &user, &path).await;
    before.expect_not_found("no attempt yet");

    stripe_charge_answer(ResponseTemplate::new(402).set_body_json(declined_body()))
        .up_to_n_times(1)
        .mount(&app.stripe)
        .await;
    app.pay(&user, &order.id, "tok_chargeDeclined").await;
    let failed = get_as(&app, &user, &path).await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    assert_eq!(
        failed.body,
        json!({"orderId": order.id.to_string(), "status": "failed", "attempts": 1})
    );

    stripe_charges_succeed(&app, "ch_state", 2000, Duration::ZERO).await;
    app.pay_ok(&user, &order.id).await;
    let paid = get_as(&app, &user, &path).await;
    assert_eq!(
        paid.body,
        json!({"orderId": order.id.to_string(), "status": "succeeded", "attempts": 2})
    );

    let stranger = get_as(&app, &User::new(), &path).await;
    assert_eq!(
        (stranger.status, stranger.body),
        (StatusCode::UNAUTHORIZED, not_authorized())
    );
    assert_eq!(app.get(&path).await.status, StatusCode::UNAUTHORIZED);
    for missing in [
        "/api/payments/64b7f0c2a1b2c3d4e5f60718",
        "/api/payments/nope",
    ] {
        let reply = get_as(&app, &user, missing).await;
        reply.expect_not_found(missing);
    }
}

#[tokio::test]
async fn each_step_of_a_payment_decides_on_the_record_as_stored_and_reads_the_change_log_only_after_its_commit()
 {
    let app = spawn_app().await;
    app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(1500).await;
    common::store::query_log::clear(app.db.name());

    app.pay_ok(&user, &order.id).await;

    // Recorded at version 0, marked sent at 1, settled at 2. Each commit looks for the version
    // after its own (a writer that landed before it); none reads the change it is about to
    // succeed, since the record as stored was up to date.
    let change_reads: Vec<_> = common::store::query_log::queries_in(app.db.name())
        .into_iter()
        .filter(|query| query.collection == "payments_changes" && query.command == "find")
        .map(|query| query.filter)
        .collect();
    let change = |version: i64| mongodb::bson::doc! { "_id": format!("{}:{version}", order.id) };
    assert_eq!(change_reads, vec![change(2), change(3)]);
    // The order replica likewise: read as stored, then, right before the charge, one lookup of
    // the version after it (a cancellation the stored record may not show yet).
    let order_change_reads: Vec<_> = common::store::query_log::queries_in(app.db.name())
        .into_iter()
        .filter(|query| query.collection == "orders_changes" && query.command == "find")
        .map(|query| query.filter)
        .collect();
    assert_eq!(order_change_reads, vec![change(1)]);
}
