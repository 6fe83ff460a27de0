//! `expiration:complete`: a pending order whose time is up is cancelled, exactly as its owner would
//! cancel it (ticket released, `order:cancelled` published). A paid or already cancelled order is
//! left alone, with no event (SPEC §8.4).

use common::bus::{EventBus, Outcome};
use common::events::{ExpirationComplete, OrderStatus};
use common::store::{Decision, StoreError, parse_object_id};
use mongodb::bson::Bson;

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
    // `modify` re-reads and decides again if a payment commits first, so exactly one of them wins.
    let result = store
        .orders()
        .modify(Bson::ObjectId(id), |current: &Order| match current.status {
            OrderStatus::Created | OrderStatus::AwaitingPayment => cancellation(current),
            OrderStatus::Complete | OrderStatus::Cancelled => Ok(Decision::Unchanged),
        })
        .await;
    match result {
        Ok((order, Some(committed))) => {
            store.orders().publish(bus, &committed).await;
            tracing::info!(order_id = %order.id, version = order.version, "order expired and cancelled");
            Ok(Outcome::Ack)
        }
        Ok((_, None)) => Ok(Outcome::Ack),
        Err(StoreError::NotFound) => Ok(Outcome::Retry(RETRY_DELAY)),
        Err(err) => Err(err.into()),
    }
}
