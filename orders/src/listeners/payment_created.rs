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
    let decide = |current: &Order| {
        Ok::<_, StoreError>(match current.status {
            OrderStatus::Created | OrderStatus::AwaitingPayment => Decision::Commit {
                next: current.with_status(OrderStatus::Complete),
                events: Vec::new(),
            },
            OrderStatus::Complete | OrderStatus::Cancelled => Decision::Unchanged,
        })
    };
    // A commit re-reads and decides again if another change (an expiry) claimed the version
    // first, so exactly one of them wins. It starts from the order as this process last saw it
    // while that one still awaits payment, which saves a read when nothing changed it since.
    let result = match store.recent_order(id).filter(|seen| seen.status.is_open()) {
        Some(seen) => store.orders().modify_from(bus, seen, decide).await,
        None => store.orders().modify(bus, Bson::ObjectId(id), decide).await,
    };
    if let Ok((order, _)) = &result {
        store.remember(order);
    }
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
