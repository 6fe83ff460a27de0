//! `order:cancelled`: free the ticket if this order holds it.

use common::bus::{EventBus, Outcome};
use common::events::OrderCancelled;
use common::store::parse_object_id;

use super::{RETRY_DELAY, Release, release};
use crate::store::TicketStore;

pub async fn handle(
    store: &TicketStore,
    bus: &EventBus,
    event: OrderCancelled,
) -> anyhow::Result<Outcome> {
    let Some(ticket_id) = parse_object_id(&event.ticket.id) else {
        return Ok(Outcome::Poison("the ticket id is not an ObjectId"));
    };
    // The tombstone goes first: `order:created` of this order may still be on its way (the subjects
    // are consumed independently) and must then not reserve the ticket.
    store
        .record_cancelled_order(&event.id, &event.ticket.id)
        .await?;
    match release(store, bus, ticket_id, &event.id).await? {
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
