//! `order:created`: insert the replica with the order's id, version, status, owner and price.

use common::bus::Outcome;
use common::events::OrderCreated;
use mongodb::bson;

use crate::store::{Inserted, Order, OrderStore};

pub async fn handle(orders: &OrderStore, event: OrderCreated) -> anyhow::Result<Outcome> {
    let id = event.id.oid();
    let order = Order {
        id,
        version: event.version,
        status: event.status,
        user_id: event.user_id,
        price_cents: event.ticket.price.cents(),
        expires_at: bson::DateTime::from_millis(event.expires_at.timestamp_millis()),
    };
    if orders.insert(&order).await? == Inserted::AlreadyPresent {
        tracing::debug!(order_id = %event.id, "order:created already applied");
    }
    Ok(Outcome::Ack)
}
