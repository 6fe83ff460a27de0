//! Across services, under contention: many buyers order one ticket at the same moment.

use futures::future::join_all;
use reqwest::StatusCode;
use system_tests::{Stack, eventually, id_of};

use crate::ok_body;

const BUYERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_buyers_racing_for_one_ticket_leave_one_order_which_pays_and_holds_the_ticket() {
    let stack = Stack::start(30).await;
    let seller = stack.sign_up().await;
    let buyers = join_all((0..BUYERS).map(|_| stack.sign_up())).await;
    let ticket = stack
        .create_ticket(&seller, "Final", 50.0)
        .await
        .expect(StatusCode::CREATED, "creating the ticket");
    let ticket_id = id_of(&ticket);
    stack.wait_until_orders_knows_ticket(&ticket_id).await;

    let replies = join_all(buyers.iter().map(|buyer| stack.order(buyer, &ticket_id))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    let winners: Vec<usize> = (0..BUYERS)
        .filter(|&i| replies[i].status == StatusCode::CREATED)
        .collect();
    assert_eq!(winners.len(), 1, "one order wins: {statuses:?}");
    for (i, reply) in replies.iter().enumerate() {
        if i != winners[0] {
            reply.expect_error(
                StatusCode::BAD_REQUEST,
                "Ticket is already reserved.",
                "a losing order",
            );
        }
    }
    let winner = &buyers[winners[0]];
    let order_id = id_of(&replies[winners[0]].body);

    stack
        .pay_once_known(winner, &order_id, "tok_visa")
        .await
        .expect(StatusCode::CREATED, "the winner pays");

    eventually(
        "tickets holds the ticket for the winning order",
        async || {
            let ticket = ok_body(stack.ticket(&ticket_id).await)?;
            match ticket["orderId"] == order_id.as_str() {
                true => Ok(()),
                false => Err(ticket.to_string()),
            }
        },
    )
    .await;
    eventually("orders completes the winning order", async || {
        let order = ok_body(stack.order_of(winner, &order_id).await)?;
        match order["status"] == "complete" {
            true => Ok(()),
            false => Err(order.to_string()),
        }
    })
    .await;
    // The losers were left with nothing: no stray order stored for any of them.
    for (i, buyer) in buyers.iter().enumerate() {
        if i != winners[0] {
            let orders = stack
                .orders_of(buyer)
                .await
                .expect(StatusCode::OK, "listing a loser's orders");
            assert_eq!(orders, serde_json::json!([]), "buyer {i}");
        }
    }
    let charges = stack.charges().await;
    assert_eq!(
        charges.iter().map(|c| c.amount).collect::<Vec<_>>(),
        vec![5000],
        "exactly one charge of 50 EUR"
    );
}
