//! Events as another service would publish them, for tests that drive a service's listeners.

use chrono::Utc;
use mongodb::bson::oid::ObjectId;

use crate::events::{OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef};
use crate::money::Price;

/// A fresh ObjectId-like order (or ticket) id.
pub fn new_order_id() -> String {
    ObjectId::new().to_hex()
}

/// `order:created` of a new order (version 0) of `user_id` for ticket `ticket_id` at `price`,
/// to be paid within a minute.
pub fn order_created(order_id: &str, ticket_id: &str, user_id: &str, price: Price) -> OrderCreated {
    OrderCreated {
        id: order_id.to_owned(),
        version: 0,
        status: OrderStatus::Created,
        user_id: user_id.to_owned(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
        ticket: OrderCreatedTicket {
            id: ticket_id.to_owned(),
            price,
        },
    }
}

/// `order:cancelled` of an order at `version`.
pub fn order_cancelled(order_id: &str, ticket_id: &str, version: i64) -> OrderCancelled {
    OrderCancelled {
        id: order_id.to_owned(),
        version,
        ticket: TicketRef {
            id: ticket_id.to_owned(),
        },
    }
}
