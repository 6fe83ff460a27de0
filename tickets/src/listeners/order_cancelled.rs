//! `order:cancelled`: free the ticket if this order holds it.

use common::bus::{EventBus, Outcome};
use common::events::OrderCancelled;

use super::{RETRY_DELAY, Release, release};
use crate::store::TicketStore;

pub async fn handle(
    store: &TicketStore,
    bus: &EventBus,
    event: OrderCancelled,
) -> anyhow::Result<Outcome> {
    // The tombstone goes first: `order:created` of this order may still be on its way (the subjects
    // are consumed independently) and must then not reserve the ticket.
    store
        .record_cancelled_order(event.id, event.ticket.id)
        .await?;
    match release(store, bus, event.ticket.id.oid(), event.id).await? {
        Release::Released => {
            tracing::info!(order_id = %event.id, ticket_id = %event.ticket.id, "ticket released");
            Ok(Outcome::Ack)
        }
        Release::NotHeld => {
            tracing::info!(order_id = %event.id, ticket_id = %event.ticket.id,
                "ticket not held by the cancelled order; nothing to release");
            Ok(Outcome::Ack)
        }
        Release::TicketMissing => Ok(Outcome::Retry(RETRY_DELAY)),
    }
}
