//! `expiration:complete`: a pending order whose time is up is cancelled, exactly as its owner would
//! cancel it (ticket released, `order:cancelled` published). A paid or already cancelled order is
//! left alone, with no event (SPEC §8.4).

use common::bus::{Delivery, EventBus, Outcome};
use common::events::{ExpirationComplete, PaymentCreated};
use common::store::{Decision, StoreError};
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;

use super::{QUEUE_GROUP, RETRY_DELAY, unknown_order};
use crate::store::{Order, OrderStore, cancellation};

pub async fn handle(
    store: &OrderStore,
    bus: &EventBus,
    event: ExpirationComplete,
    delivery: Delivery,
) -> anyhow::Result<Outcome> {
    let id = event.order_id.oid();
    match expire(store, bus, id, Some(delivery.sequence)).await {
        Ok(Expiry::Cancelled(_) | Expiry::Unchanged) => Ok(Outcome::Ack),
        Ok(Expiry::PaymentWaiting) => Ok(Outcome::Retry(RETRY_DELAY)),
        Err(StoreError::NotFound) => Ok(unknown_order(delivery)),
        Err(err) => Err(err.into()),
    }
}

/// What [`expire`] did.
#[derive(Debug)]
pub enum Expiry {
    /// The order was waiting for payment and is now cancelled.
    Cancelled(Order),
    /// The order is paid or cancelled already: nothing to do.
    Unchanged,
    /// A `payment:created` for the order, published before the expiry, is not applied yet: it
    /// goes first (the buyer paid in time), so the expiry is looked at again later.
    PaymentWaiting,
}

/// Cancels the order if it is still waiting for payment, exactly as its owner would (ticket
/// released, `order:cancelled` published); a paid or cancelled order is left alone. Shared by this
/// listener (the fast path, `published_before` = the expiry's stream sequence) and the expiry
/// sweeper (the guarantee, `None`: any payment published so far goes first).
///
/// The payment and the expiry reach this service on separate consumers, so a stalled database
/// can let a later expiry commit before an earlier payment: the expiry therefore steps aside while
/// such a payment is still unhandled (the payments service answers "paid" only once its event is
/// in the stream before the window's end, so a buyer told "paid" keeps the ticket).
pub async fn expire(
    store: &OrderStore,
    bus: &EventBus,
    id: ObjectId,
    published_before: Option<u64>,
) -> Result<Expiry, StoreError> {
    let Some(current) = store.orders().get(Bson::ObjectId(id)).await? else {
        return Err(StoreError::NotFound);
    };
    if !current.status.is_open() {
        return Ok(Expiry::Unchanged);
    }
    let order_id = id.to_hex();
    if bus
        .has_unhandled::<PaymentCreated>(QUEUE_GROUP, published_before, |payment| {
            payment.order_id == order_id
        })
        .await?
    {
        tracing::info!(%order_id, "an earlier payment of the order is not applied yet; the expiry waits for it");
        return Ok(Expiry::PaymentWaiting);
    }
    // `modify` re-reads and decides again if a payment commits first, so exactly one of them wins.
    let (order, committed) = store
        .orders()
        .modify(bus, Bson::ObjectId(id), |current: &Order| {
            if current.status.is_open() {
                cancellation(current)
            } else {
                Ok(Decision::Unchanged)
            }
        })
        .await?;
    if committed.is_none() {
        return Ok(Expiry::Unchanged);
    }
    tracing::info!(order_id = %order.id, version = order.version, "order expired and cancelled");
    Ok(Expiry::Cancelled(order))
}
