//! Event listeners of the payments service (queue group `payments-service`): one file per subject.
//! They keep the order replica the payment route reads.

use std::time::Duration;

use common::bus::EventBus;
use common::events::{OrderCancelled, OrderCreated};
use common::server::Background;

use crate::saga::PaymentSaga;
use crate::store::OrderStore;

pub mod order_cancelled;
pub mod order_created;

/// The queue group of the original.
pub const QUEUE_GROUP: &str = "payments-service";

/// How long to wait before an event whose predecessor has not been applied yet is delivered again.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Which handler listens to which subject.
pub async fn subscribe(
    background: &mut Background,
    bus: &EventBus,
    orders: &OrderStore,
    saga: &PaymentSaga,
) -> anyhow::Result<()> {
    background
        .listen(bus, QUEUE_GROUP, orders.clone(), |orders, event: OrderCreated, _| async move {
            order_created::handle(&orders, event).await
        })
        .await?;
    let context = (orders.clone(), saga.clone());
    background
        .listen(
            bus,
            QUEUE_GROUP,
            context,
            |(orders, saga), event: OrderCancelled, _| async move {
                order_cancelled::handle(&orders, &saga, event).await
            },
        )
        .await
}
