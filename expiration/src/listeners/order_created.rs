//! `order:created`: schedule the order's expiry at its `expiresAt`.

use common::bus::Outcome;
use common::events::OrderCreated;

use crate::scheduler::ExpirationScheduler;

/// Schedules at the event's `expiresAt`, not at "now + window": a redelivered or late event does
/// not push the expiry back, and one already past fires at the next poll.
pub async fn handle(
    scheduler: &ExpirationScheduler,
    event: OrderCreated,
) -> anyhow::Result<Outcome> {
    if common::store::parse_object_id(&event.id).is_none() {
        // No order can have this id: its expiry would only be dead-lettered by orders later.
        return Ok(Outcome::Poison("the order id is not an ObjectId"));
    }
    scheduler.schedule(&event.id, event.expires_at).await?;
    tracing::debug!(order_id = %event.id, expires_at = %event.expires_at, "expiry scheduled");
    Ok(Outcome::Ack)
}
