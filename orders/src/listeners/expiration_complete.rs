//! `expiration:complete`: a pending order whose time is up is cancelled, exactly as its owner would
//! cancel it (ticket released, `order:cancelled` published). A paid or already cancelled order is
//! left alone, with no event (SPEC §8.4).

use common::bus::{EventBus, Outcome};
use common::events::{ExpirationComplete, OrderStatus};
use common::store::{Decision, StoreError, parse_object_id};
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;

use super::RETRY_DELAY;
use crate::store::{Order, OrderStore, cancellation};

pub async fn handle(
    store: &OrderStore,
    bus: &EventBus,
    event: ExpirationComplete,
) -> anyhow::Result<Outcome> {
    let Some(id) = parse_object_id(&event.order_id) else {
        return Ok(Outcome::Poison("the order id is not an ObjectId"));
    };
    match expire(store, bus, id).await {
        Ok(_) => Ok(Outcome::Ack),
        Err(StoreError::NotFound) => Ok(Outcome::Retry(RETRY_DELAY)),
        Err(err) => Err(err.into()),
    }
}

/// Cancels the order if it is still waiting for payment, exactly as its owner would (ticket
/// released, `order:cancelled` published); a paid or cancelled order is left alone. Shared by this
/// listener (the fast path) and the expiry sweeper (the guarantee). `Some` with the cancelled order
/// when this call cancelled it.
pub async fn expire(
    store: &OrderStore,
    bus: &EventBus,
    id: ObjectId,
) -> Result<Option<Order>, StoreError> {
    // `modify` re-reads and decides again if a payment commits first, so exactly one of them wins.
    let (order, committed) = store
        .orders()
        .modify(Bson::ObjectId(id), |current: &Order| match current.status {
            OrderStatus::Created | OrderStatus::AwaitingPayment => cancellation(current),
            OrderStatus::Complete | OrderStatus::Cancelled => Ok(Decision::Unchanged),
        })
        .await?;
    let Some(committed) = committed else {
        return Ok(None);
    };
    store.orders().publish(bus, &committed).await;
    tracing::info!(order_id = %order.id, version = order.version, "order expired and cancelled");
    Ok(Some(order))
}
