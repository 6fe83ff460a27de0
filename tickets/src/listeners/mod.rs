//! Event listeners of the tickets service (queue group `tickets-service`): one file per subject.

use std::time::Duration;

use common::bus::EventBus;
use common::events::{Id, OrderCancelled, OrderCreated};
use common::server::Background;
use common::store::{Decision, StoreError};
use mongodb::bson::oid::ObjectId;

use crate::store::TicketStore;

pub mod order_cancelled;
pub mod order_created;

/// The queue group of the original.
pub const QUEUE_GROUP: &str = "tickets-service";

/// How long to wait before an event whose precondition is unmet (ticket unknown, ticket held by an
/// order whose cancellation has not arrived yet) is delivered again.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Which handler listens to which subject.
pub async fn subscribe(
    background: &mut Background,
    bus: &EventBus,
    store: &TicketStore,
) -> anyhow::Result<()> {
    let context = (store.clone(), bus.clone());
    background
        .listen(
            bus,
            QUEUE_GROUP,
            context.clone(),
            |(store, bus), event: OrderCreated, _| async move {
                order_created::handle(&store, &bus, event).await
            },
        )
        .await?;
    background
        .listen(
            bus,
            QUEUE_GROUP,
            context,
            |(store, bus), event: OrderCancelled, _| async move {
                order_cancelled::handle(&store, &bus, event).await
            },
        )
        .await
}

/// What [`release`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The ticket was held by the order and is free now.
    Released,
    /// The ticket is not held by that order (free, or another order's): nothing to do.
    NotHeld,
    TicketMissing,
}

/// Frees the ticket if, and only if, `order_id` holds it (SPEC §8.4: a stale cancellation must not
/// release someone else's reservation), then publishes `ticket:updated` without `orderId`.
pub async fn release(
    store: &TicketStore,
    bus: &EventBus,
    ticket_id: ObjectId,
    order_id: Id,
) -> Result<Release, StoreError> {
    let result = store
        .modify(bus, ticket_id, None, |ticket| {
            if ticket.order_id != Some(order_id) {
                return Ok(Decision::Unchanged);
            }
            let (next, events) = ticket.with_order(None)?;
            Ok(Decision::Commit { next, events })
        })
        .await;
    match result {
        Ok((_, Some(_))) => Ok(Release::Released),
        Ok((_, None)) => Ok(Release::NotHeld),
        Err(StoreError::NotFound) => Ok(Release::TicketMissing),
        Err(other) => Err(other),
    }
}
