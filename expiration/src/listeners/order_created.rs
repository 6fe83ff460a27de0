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
    scheduler.schedule(event.id, event.expires_at).await?;
    tracing::info!(order_id = %event.id, expires_at = %event.expires_at, "expiry scheduled");
    Ok(Outcome::Ack)
}
