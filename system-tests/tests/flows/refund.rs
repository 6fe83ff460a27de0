//! Issue 11: an order that ends cancelled keeps no charge. A charge that succeeds while its order
//! expires, or while its buyer cancels it, is refunded exactly once; the order page says so and the
//! ticket is for sale again.

use std::time::Duration;

use chrono::Utc;
use common::testing::stripe_double::Behaviour;
use payments::routes::payments::REFUNDED;
use reqwest::StatusCode;
use system_tests::{Stack, User, eventually};

use crate::{OrderedTicket, ok_body, order_a_new_ticket};

/// Waits until the order is cancelled with its charge refunded, the ticket is free, Stripe saw one
/// charge and one refund, and the money invariant holds.
async fn assert_refunded_once(stack: &Stack, buyer: &User, order_id: &str, ticket_id: &str) {
    let order = eventually("the order shows its refund", async || {
        let order = ok_body(stack.order_of(buyer, order_id).await)?;
        match (order["status"].as_str(), order["refunded"].as_bool()) {
            (Some("cancelled"), Some(true)) => Ok(order),
            _ => Err(order.to_string()),
        }
    })
    .await;
    assert_eq!(order["ticket"]["id"], ticket_id, "{order}");
    eventually("the ticket is free again", async || {
        let ticket = ok_body(stack.ticket(ticket_id).await)?;
        match ticket.get("orderId") {
            None => Ok(()),
            Some(holder) => Err(format!("still reserved by {holder}")),
        }
    })
    .await;
    let charges = stack.stripe.charges();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(
        stack.stripe.refunds().len(),
        1,
        "{:?}",
        stack.stripe.refunds()
    );
    assert_eq!(
        charges[0].refund_id,
        Some(stack.stripe.refunds()[0].id.clone())
    );
    let money = stack.money().await;
    assert_eq!(money.violations, Vec::<String>::new());
    assert_eq!((money.charges, money.refunded), (1, 1));
    let from_databases = stack.money_of_orders(&[order_id.to_owned()]).await;
    assert_eq!(from_databases.violations, Vec::<String>::new());
    assert_eq!(from_databases.refunded, 1);
}

/// The buyer's answer while the order was cancelled during its charge: the refund if payments saw
/// the cancellation first, or a plain success if the charge was recorded first (the refund then
/// follows from `order:cancelled`).
fn assert_paid_or_refunded(reply: &system_tests::Reply) {
    match reply.status {
        StatusCode::CREATED => {}
        StatusCode::BAD_REQUEST => {
            assert_eq!(
                reply.body["errors"][0]["message"], REFUNDED,
                "{}",
                reply.body
            )
        }
        other => panic!("unexpected {other}: {}", reply.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_in_the_last_instant_with_a_slow_stripe_refunds_the_charge_once_and_frees_the_ticket()
 {
    let stack = Stack::start(3).await;
    let OrderedTicket {
        buyer,
        ticket_id,
        order_id,
        expires_at,
    } = order_a_new_ticket(&stack, "Late gig", 21.0).await;
    let last_instant = (expires_at - Utc::now()) - chrono::Duration::milliseconds(700);
    tokio::time::sleep(last_instant.to_std().unwrap_or_default()).await;
    // Stripe charges at once but answers after the window has closed.
    stack.stripe.set(Behaviour::Normal {
        delay: Duration::from_millis(2500),
    });

    let reply = stack.pay_once_known(&buyer, &order_id, "tok_visa").await;

    assert_paid_or_refunded(&reply);
    assert_refunded_once(&stack, &buyer, &order_id, &ticket_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_who_cancels_during_a_slow_charge_gets_the_charge_refunded_once() {
    let stack = Stack::start(30).await;
    let OrderedTicket {
        buyer,
        ticket_id,
        order_id,
        ..
    } = order_a_new_ticket(&stack, "Changed my mind", 9.5).await;
    stack.stripe.set(Behaviour::Normal {
        delay: Duration::from_millis(1500),
    });

    let (reply, cancelled) =
        tokio::join!(stack.pay_once_known(&buyer, &order_id, "tok_visa"), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack.cancel_order(&buyer, &order_id).await
        });

    assert_eq!(
        cancelled.status,
        StatusCode::NO_CONTENT,
        "{}",
        cancelled.body
    );
    assert_paid_or_refunded(&reply);
    assert_refunded_once(&stack, &buyer, &order_id, &ticket_id).await;
}
