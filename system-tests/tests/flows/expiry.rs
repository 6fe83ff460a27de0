//! Issue 4: an order nobody pays expires through the expiration service, and every service
//! follows: orders cancels it, tickets frees the ticket, payments refuses to charge it.

use chrono::Utc;
use reqwest::StatusCode;
use system_tests::{Stack, eventually};

use crate::{OrderedTicket, ok_body, order_a_new_ticket, version};

const CANCELLED_ORDER: &str = "Canncelled order unabled for payment.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_cancelled_when_its_window_passes_and_its_ticket_is_free_again() {
    let stack = Stack::start(2).await;
    let OrderedTicket {
        buyer,
        ticket_id,
        order_id,
        expires_at,
    } = order_a_new_ticket(&stack, "Theatre", 12.5).await;
    let window = expires_at - Utc::now();
    assert!(
        window <= chrono::Duration::seconds(2),
        "a 2 s window, got {window}"
    );

    // Orders cancels it, once expiration has announced it: not before expiresAt.
    let cancelled = eventually("orders cancels the expired order", async || {
        let order = ok_body(stack.order_of(&buyer, &order_id).await)?;
        match order["status"] == "cancelled" {
            true => Ok(order),
            false => Err(order.to_string()),
        }
    })
    .await;
    assert!(Utc::now() >= expires_at, "cancelled before {expires_at}");
    assert_eq!(version(&cancelled), 1, "{cancelled}");

    // Tickets frees the ticket: no orderId, listed for sale again, version 2 (reserved, released).
    let released = eventually("tickets frees the ticket", async || {
        let ticket = ok_body(stack.ticket(&ticket_id).await)?;
        match ticket.get("orderId").is_none() && stack.is_available(&ticket_id).await {
            true => Ok(ticket),
            false => Err(ticket.to_string()),
        }
    })
    .await;
    assert_eq!(version(&released), 2, "{released}");

    // Payments refuses it. Until `order:cancelled` reaches its replica, the replica still says
    // `created` and payments refuses on the clock instead (`Order has expired.`, as expiresAt has
    // passed); either way nothing is charged. Eventually the replica is cancelled too.
    eventually(
        "payments' replica refuses the cancelled order",
        async || {
            let reply = stack.pay(&buyer, &order_id, "tok_visa").await;
            match (reply.status, reply.message()) {
                (StatusCode::BAD_REQUEST, Some(CANCELLED_ORDER)) => Ok(()),
                (StatusCode::BAD_REQUEST, Some(payments::routes::payments::EXPIRED_ORDER)) => {
                    Err("refused as expired; the replica is not cancelled yet".to_owned())
                }
                (status, _) => panic!("paying an expired order: {status} {}", reply.body),
            }
        },
    )
    .await;
    assert_eq!(
        stack.charges().await,
        Vec::new(),
        "an expired order was charged"
    );
}
