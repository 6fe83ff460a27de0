//! Issue 4: a paid order completes, and the expiration that still fires for it later changes
//! nothing: the order stays complete and keeps its ticket.

use chrono::Utc;
use common::events::Subject;
use payments::routes::payments::ALREADY_PAID;
use reqwest::StatusCode;
use system_tests::{Charge, Stack, eventually};

use crate::{OrderedTicket, ok_body, order_a_new_ticket, read_order, status_and_version, version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_completes_and_keeps_its_ticket_after_its_window_has_passed() {
    let stack = Stack::start(3).await;
    let OrderedTicket {
        buyer,
        ticket_id,
        order_id,
        expires_at,
    } = order_a_new_ticket(&stack, "Opera", 15.0).await;

    let paid = stack
        .pay_once_known(&buyer, &order_id, "tok_visa")
        .await
        .expect(StatusCode::CREATED, "paying the order");
    assert_eq!(paid["success"], true, "{paid}");
    assert!(paid["id"].is_string(), "{paid}");
    stack.pay(&buyer, &order_id, "tok_visa").await.expect_error(
        StatusCode::BAD_REQUEST,
        ALREADY_PAID,
        "paying twice",
    );

    // Orders completes it from `payment:created`; tickets keeps it reserved by this order.
    let complete = eventually("orders completes the paid order", async || {
        let order = ok_body(stack.order_of(&buyer, &order_id).await)?;
        match order["status"] == "complete" {
            true => Ok(order),
            false => Err(order.to_string()),
        }
    })
    .await;
    assert_eq!(version(&complete), 1, "{complete}");

    // The window passes: expiration announces it, and orders handles (acknowledges) that
    // announcement. Only then is "nothing changed" a finding rather than a race.
    eventually("orders has handled the order's expiration", async || {
        let state = stack
            .consumer(orders::listeners::QUEUE_GROUP, Subject::ExpirationComplete)
            .await?;
        match state.delivered >= 1 && state.settled() {
            true => Ok(()),
            false => Err(format!("{state:?}")),
        }
    })
    .await;
    assert!(Utc::now() >= expires_at, "expired before {expires_at}");

    let after = read_order(
        &stack,
        &buyer,
        &order_id,
        "reading the order after its window",
    )
    .await;
    assert_eq!(
        status_and_version(&after),
        (Some("complete"), 1),
        "the late expiration changed a paid order: {after}"
    );
    let no_cancellation = stack
        .consumer(tickets::listeners::QUEUE_GROUP, Subject::OrderCancelled)
        .await
        .expect("tickets consumes order:cancelled");
    assert_eq!(
        (no_cancellation.delivered, no_cancellation.pending),
        (0, 0),
        "an order:cancelled was published for a paid order"
    );
    let held = stack
        .ticket(&ticket_id)
        .await
        .expect(StatusCode::OK, "reading the ticket");
    assert_eq!(held["orderId"], order_id.as_str(), "{held}");
    assert_eq!(version(&held), 1, "{held}");
    assert!(
        !stack.is_available(&ticket_id).await,
        "a sold ticket is listed"
    );

    // A paid order cannot be cancelled, nor paid again.
    stack.cancel_order(&buyer, &order_id).await.expect_error(
        StatusCode::BAD_REQUEST,
        orders::routes::orders::CANNOT_CANCEL_PAID,
        "cancelling a paid order",
    );
    let still = read_order(&stack, &buyer, &order_id, "reading the order").await;
    assert_eq!(still["status"], "complete", "{still}");
    // Past the window a paid order is still refused as paid, not as expired.
    let late = stack.pay(&buyer, &order_id, "tok_visa").await;
    assert!(
        late.status == StatusCode::BAD_REQUEST && late.message() == Some(ALREADY_PAID),
        "paying a paid order after its window: {late:?}"
    );

    assert_eq!(
        stack.charges().await,
        vec![Charge {
            amount: 1500,
            currency: "eur".into(),
            source: "tok_visa".into(),
        }],
        "exactly one charge of 15 EUR"
    );
    let money = stack.money().await;
    assert_eq!(money.violations, Vec::<String>::new());
    assert_eq!(
        (money.charges, money.refunded, money.complete_orders),
        (1, 0, 1)
    );
}
