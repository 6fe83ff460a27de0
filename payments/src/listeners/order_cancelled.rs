//! `order:cancelled`: mark the replica cancelled, in version order, then make sure the order keeps
//! no charge (a succeeded payment is refunded, an open attempt is marked to be refunded if it
//! turns out charged). Redelivered events do that second step again: it is idempotent.

use common::bus::Outcome;
use common::events::OrderCancelled;
use common::store::ReplicaUpdate;

use super::RETRY_DELAY;
use crate::saga::PaymentSaga;
use crate::store::OrderStore;

pub async fn handle(
    orders: &OrderStore,
    saga: &PaymentSaga,
    event: OrderCancelled,
) -> anyhow::Result<Outcome> {
    let id = event.id.oid();
    match orders.cancel(id, event.version).await? {
        ReplicaUpdate::Applied | ReplicaUpdate::AlreadyApplied => {
            // Also after a redelivery: the delivery that cancelled the replica may have failed
            // before this step.
            saga.order_cancelled(id).await?;
            Ok(Outcome::Ack)
        }
        // Its order:created, or an earlier change of the order, is still on its way.
        ReplicaUpdate::NotYet => Ok(Outcome::Retry(RETRY_DELAY)),
    }
}
