//! `payment:updated`: of a payment's states only `refunded` concerns orders. It is only ever
//! published for an order that this service cancelled while it was being paid; the order records
//! the refund (version + 1, no event: a cancelled order changes no replica), so its page can say so.

use common::bus::{Delivery, EventBus, Outcome};
use common::events::{OrderStatus, PaymentUpdated};
use common::store::{Decision, StoreError};
use mongodb::bson::Bson;

use super::unknown_order;
use crate::store::{Order, OrderStore, Refund};

pub const REFUNDED: &str = "refunded";

pub async fn handle(
    store: &OrderStore,
    bus: &EventBus,
    event: PaymentUpdated,
    delivery: Delivery,
) -> anyhow::Result<Outcome> {
    if event.status != REFUNDED {
        return Ok(Outcome::Ack);
    }
    let id = event.order_id.oid();
    let refund = Refund {
        payment_id: event.id.clone(),
        stripe_id: event.stripe_id.clone(),
    };
    let result = store
        .orders()
        .modify(bus, Bson::ObjectId(id), |current: &Order| {
            Ok::<_, StoreError>(match current.status {
                OrderStatus::Cancelled if current.refund.is_none() => Decision::Commit {
                    next: Order {
                        version: current.version + 1,
                        refund: Some(refund.clone()),
                        ..current.clone()
                    },
                    events: Vec::new(),
                },
                _ => Decision::Unchanged,
            })
        })
        .await;
    match result {
        Ok((order, Some(_))) => {
            tracing::info!(order_id = %order.id, payment_id = %event.id, "refund recorded on the cancelled order");
            Ok(Outcome::Ack)
        }
        Ok((order, None)) => {
            if order.status != OrderStatus::Cancelled {
                tracing::error!(order_id = %order.id, status = order.status.as_str(), payment_id = %event.id,
                    "a refund was reported for an order that is not cancelled");
            }
            Ok(Outcome::Ack)
        }
        Err(StoreError::NotFound) => Ok(unknown_order(delivery)),
        Err(err) => Err(err.into()),
    }
}
