//! `order:created`: reserve the ticket for the order.

use common::bus::{EventBus, Outcome};
use common::events::{Id, OrderCreated};
use common::store::{Decision, Settling, StoreError};

use super::{RETRY_DELAY, Release, release};
use crate::store::TicketStore;

pub async fn handle(
    store: &TicketStore,
    bus: &EventBus,
    event: OrderCreated,
) -> anyhow::Result<Outcome> {
    let ticket_id = event.ticket.id.oid();
    let (ticket, cancelled, premark) = store.prepare_reservation(ticket_id, event.id).await?;
    let ticket = match ticket {
        Some(ticket) if !cancelled => ticket,
        _ => {
            if let Some(premark) = premark {
                store.tickets().drop_premark(premark).await;
            }
            if !cancelled {
                return Ok(unknown_ticket(&event));
            }
            // Its cancellation came first, or this is a redelivery after it. Releasing (not just
            // skipping) also covers a reservation that raced the cancellation on an earlier
            // delivery.
            release(store, bus, ticket_id, event.id).await?;
            tracing::info!(order_id = %event.id, "order already cancelled; not reserving");
            return Ok(Outcome::Ack);
        }
    };
    let mut holder: Option<Id> = None;
    // Settled behind: the handler's slot is free once the event is out and the tombstone checked,
    // not two writes later (under a flash sale later deliveries wait for a slot).
    let result = store
        .modify_from(bus, ticket, premark, Settling::Behind, |ticket| {
            holder = ticket.order_id;
            if ticket.order_id.is_some() {
                return Ok(Decision::Unchanged);
            }
            let (next, events) = ticket.with_order(Some(event.id))?;
            Ok(Decision::Commit { next, events })
        })
        .await;
    match result {
        Ok((_, Some(_))) => {}
        Ok((_, None)) => {
            // Unchanged only when the ticket is held already.
            return Ok(match holder {
                // A redelivery: already applied.
                Some(holder) if holder == event.id => Outcome::Ack,
                other => {
                    // The holder's `order:cancelled` has not been processed yet.
                    tracing::info!(order_id = %event.id, holder = ?other, "ticket held by another order; retrying later");
                    Outcome::Retry(RETRY_DELAY)
                }
            });
        }
        Err(StoreError::NotFound) => return Ok(unknown_ticket(&event)),
        Err(other) => return Err(other.into()),
    }
    tracing::info!(order_id = %event.id, ticket_id = %event.ticket.id, "ticket reserved");

    // The cancellation may have been handled between our check above and the commit, and then saw
    // the ticket still free. Checking again after the commit closes that window: either it sees our
    // reservation, or we see its tombstone.
    if store.is_order_cancelled(event.id).await?
        && release(store, bus, ticket_id, event.id).await? == Release::Released
    {
        tracing::info!(order_id = %event.id, "order was cancelled while reserving; released again");
    }
    Ok(Outcome::Ack)
}

fn unknown_ticket(event: &OrderCreated) -> Outcome {
    tracing::warn!(order_id = %event.id, ticket_id = %event.ticket.id, "order:created for an unknown ticket; retrying later");
    Outcome::Retry(RETRY_DELAY)
}
