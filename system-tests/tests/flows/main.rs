//! Whole purchase flows across the five backend services, run in-process by `system_tests::Stack`
//! on the real FerretDB, NATS and Redis. One file per flow.

mod expiry;
mod flash_race;
mod payment;
mod reservation;

use reqwest::StatusCode;
use serde_json::Value;

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

/// The body of a 200 answer, or the answer described as the `Err` of an `eventually` check.
pub fn ok_body(reply: system_tests::Reply) -> Result<Value, String> {
    if reply.status == StatusCode::OK {
        Ok(reply.body)
    } else {
        Err(format!("{} {}", reply.status, reply.body))
    }
}
mod hostile_input;
