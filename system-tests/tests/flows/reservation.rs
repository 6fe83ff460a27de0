//! Issue 3: a reservation made in orders reaches tickets (and back), and every service agrees on
//! the ticket's version at each settled point.

use reqwest::StatusCode;
use system_tests::{Stack, eventually, id_of};

use crate::{embedded_ticket_version, ok_body, read_order, status_and_version, version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_locked_while_ordered_editable_again_once_cancelled_and_versions_agree_in_tickets_and_orders()
 {
    let stack = Stack::start(60).await;
    let seller = stack.sign_up().await;
    let buyer = stack.sign_up().await;

    // Created: version 0 in tickets, and orders embeds its replica at version 0.
    let ticket = stack
        .create_ticket(&seller, "Concert", 20.0)
        .await
        .expect(StatusCode::CREATED, "creating the ticket");
    let ticket_id = id_of(&ticket);
    assert_eq!(version(&ticket), 0);
    let order = stack
        .order_once_known(&buyer, &ticket_id)
        .await
        .expect(StatusCode::CREATED, "ordering the ticket");
    let order_id = id_of(&order);
    assert_eq!(order["status"], "created");
    assert_eq!(embedded_ticket_version(&order), version(&ticket));

    // Reserved: tickets shows the order and refuses the owner's edit; both services say version 1.
    let reserved = eventually("tickets marks the ticket reserved", async || {
        let ticket = ok_body(stack.ticket(&ticket_id).await)?;
        match ticket["orderId"] == order_id.as_str() {
            true => Ok(ticket),
            false => Err(ticket.to_string()),
        }
    })
    .await;
    assert_eq!(version(&reserved), 1, "{reserved}");
    let seen = wait_for_replica_version(&stack, &buyer, &order_id, 1).await;
    assert_eq!(embedded_ticket_version(&seen), version(&reserved));
    stack
        .update_ticket(&seller, &ticket_id, "Concert (moved)", 25.0)
        .await
        .expect_error(
            StatusCode::BAD_REQUEST,
            "Ticket is already reserved and unable to edit.",
            "editing a reserved ticket",
        );
    assert!(
        !stack.is_available(&ticket_id).await,
        "a reserved ticket is listed"
    );
    let rival = stack.sign_up().await;
    stack.order(&rival, &ticket_id).await.expect_error(
        StatusCode::BAD_REQUEST,
        "Ticket is already reserved.",
        "ordering a reserved ticket",
    );

    // Cancelled: the order changes at once in orders, the release reaches tickets; version 2.
    let cancelled = stack.cancel_order(&buyer, &order_id).await;
    assert_eq!(
        (cancelled.status, cancelled.body),
        (StatusCode::NO_CONTENT, serde_json::Value::Null)
    );
    let order_now = read_order(&stack, &buyer, &order_id, "reading the cancelled order").await;
    assert_eq!(status_and_version(&order_now), (Some("cancelled"), 1));
    let released = eventually("tickets releases the ticket", async || {
        let ticket = ok_body(stack.ticket(&ticket_id).await)?;
        match ticket.get("orderId") {
            None => Ok(ticket),
            Some(_) => Err(ticket.to_string()),
        }
    })
    .await;
    assert_eq!(version(&released), 2, "{released}");
    let seen = wait_for_replica_version(&stack, &buyer, &order_id, 2).await;
    assert_eq!(embedded_ticket_version(&seen), version(&released));
    assert!(
        stack.is_available(&ticket_id).await,
        "a released ticket is not listed"
    );

    // Edited: allowed again, version 3 in tickets, and orders' replica follows with the new price.
    let edited = stack
        .update_ticket(&seller, &ticket_id, "Concert (moved)", 25.0)
        .await
        .expect(StatusCode::OK, "editing the released ticket");
    assert_eq!(version(&edited), 3, "{edited}");
    let seen = wait_for_replica_version(&stack, &buyer, &order_id, 3).await;
    assert_eq!(embedded_ticket_version(&seen), version(&edited));
    assert_eq!(seen["ticket"]["title"], "Concert (moved)");
    assert_eq!(seen["ticket"]["price"].as_f64(), Some(25.0));

    // And the edited ticket can be ordered again, at its new price and version.
    let again = stack
        .order(&rival, &ticket_id)
        .await
        .expect(StatusCode::CREATED, "ordering the released ticket");
    assert_eq!(embedded_ticket_version(&again), 3);
    assert_eq!(again["ticket"]["price"].as_f64(), Some(25.0));
}

/// The order as orders shows it once its embedded ticket (the replica) has reached `expected`.
async fn wait_for_replica_version(
    stack: &Stack,
    buyer: &system_tests::User,
    order_id: &str,
    expected: i64,
) -> serde_json::Value {
    eventually(
        &format!("orders' replica of the ticket reaches version {expected}"),
        async || {
            let order = ok_body(stack.order_of(buyer, order_id).await)?;
            match order["ticket"]["version"].as_i64() == Some(expected) {
                true => Ok(order),
                false => Err(order.to_string()),
            }
        },
    )
    .await
}
