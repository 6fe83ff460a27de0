//! Events as another service would publish them, for tests that drive a service's listeners.

use chrono::Utc;

use crate::events::{Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef};
use crate::money::Price;

/// A fresh order (or ticket) id.
pub fn new_order_id() -> Id {
    Id::new()
}

/// `order:created` of a new order (version 0) of `user_id` for ticket `ticket_id` at `price`,
/// to be paid within a minute.
pub fn order_created(order_id: Id, ticket_id: Id, user_id: &str, price: Price) -> OrderCreated {
    OrderCreated {
        id: order_id,
        version: 0,
        status: OrderStatus::Created,
        user_id: user_id.to_owned(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
        ticket: OrderCreatedTicket {
            id: ticket_id,
            price,
        },
    }
}

/// `order:cancelled` of an order at `version`.
pub fn order_cancelled(order_id: Id, ticket_id: Id, version: i64) -> OrderCancelled {
    OrderCancelled {
        id: order_id,
        version,
        ticket: TicketRef { id: ticket_id },
    }
}
