//! `payment:created`: the order is paid, so it becomes `complete` (version + 1; the SPEC publishes
//! no event for this). It keeps its ticket for good.

use common::bus::{Delivery, EventBus, Outcome};
use common::events::{OrderStatus, PaymentCreated};
use common::store::{Decision, StoreError};
use mongodb::bson::Bson;

use super::unknown_order;
use crate::store::{Order, OrderStore};

pub async fn handle(
    store: &OrderStore,
    bus: &EventBus,
    event: PaymentCreated,
    delivery: Delivery,
) -> anyhow::Result<Outcome> {
    let id = event.order_id.oid();
    // `modify` re-reads and decides again if an expiry commits first, so exactly one of them wins.
    let result = store
        .orders()
        .modify(bus, Bson::ObjectId(id), |current: &Order| {
            Ok::<_, StoreError>(match current.status {
                OrderStatus::Created | OrderStatus::AwaitingPayment => Decision::Commit {
                    next: current.with_status(OrderStatus::Complete),
                    events: Vec::new(),
                },
                OrderStatus::Complete | OrderStatus::Cancelled => Decision::Unchanged,
            })
        })
        .await;
    match result {
        Ok((order, Some(_))) => {
            tracing::info!(order_id = %order.id, version = order.version, "order paid");
            Ok(Outcome::Ack)
        }
        Ok((order, None)) => {
            if order.status == OrderStatus::Cancelled {
                // The charge went through after the order was cancelled and its ticket released:
                // the payments service refunds it when it applies this order's `order:cancelled`.
                tracing::warn!(order_id = %order.id, payment_id = %event.id, stripe_id = %event.stripe_id,
                    "payment received for a cancelled order; the payments service refunds it");
            }
            Ok(Outcome::Ack)
        }
        Err(StoreError::NotFound) => Ok(unknown_order(delivery)),
        Err(err) => Err(err.into()),
    }
}
