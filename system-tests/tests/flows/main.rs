//! Whole purchase flows across the five backend services, run in-process by `system_tests::Stack`
//! on the real FerretDB, NATS and Redis. One file per flow.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod expiry;
mod flash_race;
mod payment;
mod refund;
mod reservation;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;
use system_tests::{Stack, User, id_of};

/// The version of a ticket or order JSON.
pub fn version(body: &Value) -> i64 {
    body["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("a version in {body}"))
}

/// The version of the ticket embedded in an order JSON (orders' replica of the ticket).
pub fn embedded_ticket_version(order: &Value) -> i64 {
    version(&order["ticket"])
}

/// The status and version of an order JSON.
pub fn status_and_version(order: &Value) -> (Option<&str>, i64) {
    (order["status"].as_str(), version(order))
}

/// The order as its buyer reads it now.
pub async fn read_order(stack: &Stack, buyer: &User, order_id: &str, what: &str) -> Value {
    stack
        .order_of(buyer, order_id)
        .await
        .expect(StatusCode::OK, what)
}

/// The body of a 200 answer, or the answer described as the `Err` of an `eventually` check.
pub fn ok_body(reply: system_tests::Reply) -> Result<Value, String> {
    if reply.status == StatusCode::OK {
        Ok(reply.body)
    } else {
        Err(format!("{} {}", reply.status, reply.body))
    }
}
mod hostile_input;

/// A seller's new ticket, ordered by a new buyer (the start of the expiry and payment flows).
pub struct OrderedTicket {
    pub buyer: User,
    pub ticket_id: String,
    pub order_id: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn order_a_new_ticket(stack: &Stack, title: &str, price: f64) -> OrderedTicket {
    let seller = stack.sign_up().await;
    let buyer = stack.sign_up().await;
    let ticket = stack
        .create_ticket(&seller, title, price)
        .await
        .expect(StatusCode::CREATED, "creating the ticket");
    let ticket_id = id_of(&ticket);
    let order = stack
        .order_once_known(&buyer, &ticket_id)
        .await
        .expect(StatusCode::CREATED, "ordering the ticket");
    let order_id = id_of(&order);
    let expires_at: DateTime<Utc> = order["expiresAt"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("an ISO expiresAt in {order}"));
    OrderedTicket {
        buyer,
        ticket_id,
        order_id,
        expires_at,
    }
}
