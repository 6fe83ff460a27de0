//! Events as another service would publish them, for tests that drive a service's listeners.

use chrono::Utc;

use crate::bus::EventBus;
use crate::events::{
    Event, Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef,
};
use crate::money::Price;
use crate::testing::eventually;

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

/// Publishes `event` with an `id` that is no object id (what a broken publisher could send), and
/// waits until the listener of `queue_group` has dead-lettered it instead of retrying it forever.
pub async fn dead_letters_a_malformed_id<E: Event>(bus: &EventBus, event: &E, queue_group: &str) {
    let mut malformed = serde_json::to_value(event).expect("json");
    malformed["id"] = "not-an-object-id".into();
    bus.publish_raw(
        E::SUBJECT,
        &format!("malformed-{}", E::SUBJECT),
        serde_json::to_vec(&malformed).expect("payload").into(),
    )
    .await
    .expect("published");
    eventually("the event to be dead-lettered", || async {
        (bus.dead_letter_count(queue_group)
            .await
            .expect("dead letters")
            == 1)
            .then_some(())
    })
    .await;
}
