//! `order:cancelled`: mark the replica cancelled, in version order, then make sure the order keeps
//! no charge (a succeeded payment is refunded, an open attempt is marked to be refunded if it
//! turns out charged). Redelivered events do that second step again: it is idempotent.

use common::bus::Outcome;
use common::events::OrderCancelled;
use common::store::parse_object_id;

use super::RETRY_DELAY;
use crate::saga::PaymentSaga;
use crate::store::OrderStore;

pub async fn handle(
    orders: &OrderStore,
    saga: &PaymentSaga,
    event: OrderCancelled,
) -> anyhow::Result<Outcome> {
    let Some(id) = parse_object_id(&event.id) else {
        return Ok(Outcome::Poison("the order id is not an ObjectId"));
    };
    let Some(order) = orders.get(id).await? else {
        // Its order:created has not been applied yet.
        return Ok(Outcome::Retry(RETRY_DELAY));
    };
    if order.version >= event.version {
        // Applied before (maybe by a delivery that failed after the replica write).
        saga.order_cancelled(id).await?;
        return Ok(Outcome::Ack);
    }
    if order.version < event.version.saturating_sub(1) {
        // An earlier change of the order is still on its way.
        return Ok(Outcome::Retry(RETRY_DELAY));
    }
    if orders.cancel(id, event.version).await? {
        saga.order_cancelled(id).await?;
        return Ok(Outcome::Ack);
    }
    // Another consumer moved the replica meanwhile: look again.
    match orders.get(id).await? {
        Some(order) if order.version >= event.version => {
            saga.order_cancelled(id).await?;
            Ok(Outcome::Ack)
        }
        _ => Ok(Outcome::Retry(RETRY_DELAY)),
    }
}
