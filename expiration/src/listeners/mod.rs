//! One module per subscribed subject. Each `handle` is a plain async fn that tests call directly.

use anyhow::Context as _;
use common::bus::EventBus;
use common::events::OrderCreated;
use common::server::Background;

use crate::scheduler::ExpirationScheduler;

pub mod order_created;

/// The queue group of this service's listeners (the original's).
pub const QUEUE_GROUP: &str = "expiration-service";

/// Which handler listens to which subject.
pub async fn subscribe(
    background: &mut Background,
    bus: &EventBus,
    scheduler: &ExpirationScheduler,
) -> anyhow::Result<()> {
    background
        .listen(
            bus,
            QUEUE_GROUP,
            scheduler.clone(),
            |scheduler, event: OrderCreated, _| async move {
                order_created::handle(&scheduler, event).await
            },
        )
        .await
        .context("subscribing to order:created")
}
