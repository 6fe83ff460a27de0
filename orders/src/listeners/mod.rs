//! One handler per subscribed subject. Each is a plain async fn that decides an [`Outcome`]; the
//! application wires them to the bus (queue group `orders-service`).

use std::future::Future;
use std::time::Duration;

use common::bus::{Delivery, EventBus, Outcome};
use common::events::{
    Event, ExpirationComplete, PaymentCreated, PaymentUpdated, TicketCreated, TicketUpdated,
};
use common::server::Background;

use crate::store::OrderStore;
use crate::sweeper::OutageClock;

pub mod expiration_complete;
pub mod payment_created;
pub mod payment_updated;
pub mod ticket_created;
pub mod ticket_updated;

/// The queue group of every listener of this service.
pub const QUEUE_GROUP: &str = "orders-service";

/// How long to wait before looking again at an event whose precondition is not met yet (an earlier
/// ticket version, or the order it names, has not arrived).
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How many deliveries an event about an order this service does not have gets before it goes to
/// the dead-letter stream: about two minutes of redeliveries with [`patient`]'s growing delays.
pub const UNKNOWN_ORDER_DELIVERIES: i64 = 30;

/// The answer to an event (`expiration:complete`, `payment:created`, `payment:updated`) naming an
/// order this service does not have. Orders are stored before their `order:created` is published,
/// and those events follow it, so only lost or deleted data makes the order missing for long; a
/// database outage is an error, not this. Waiting is therefore bounded: after
/// [`UNKNOWN_ORDER_DELIVERIES`] the event is kept in the dead-letter stream for an operator
/// (`dead-letters list`, `replay` once the order is back) instead of coming back forever and
/// taking a listener's slot and a read every few seconds.
pub fn unknown_order(delivery: Delivery) -> Outcome {
    if delivery.attempt >= UNKNOWN_ORDER_DELIVERIES {
        Outcome::Poison("names an order this service does not have")
    } else {
        Outcome::Retry(RETRY_DELAY)
    }
}

/// How soon an expiration that came during or right after an outage is looked at again.
const EXPIRY_AFTER_OUTAGE_RETRY: Duration = Duration::from_secs(1);

/// What the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub store: OrderStore,
    pub bus: EventBus,
    /// Expiry waits `grace` after trouble (see [`OutageClock`]), and its failures count as trouble.
    pub clock: OutageClock,
    pub grace: Duration,
}

/// Which handler listens to which subject.
pub async fn subscribe(
    background: &mut Background,
    bus: &EventBus,
    context: Context,
) -> anyhow::Result<()> {
    listen_patiently(
        background,
        bus,
        &context,
        |c, event: TicketCreated, _| async move { ticket_created::handle(&c.store, event).await },
    )
    .await?;
    listen_patiently(
        background,
        bus,
        &context,
        |c, event: TicketUpdated, _| async move { ticket_updated::handle(&c.store, event).await },
    )
    .await?;
    listen_patiently(
        background,
        bus,
        &context,
        |c, event: PaymentCreated, delivery| async move {
            payment_created::handle(&c.store, &c.bus, event, delivery).await
        },
    )
    .await?;
    listen_patiently(
        background,
        bus,
        &context,
        |c, event: PaymentUpdated, delivery| async move {
            payment_updated::handle(&c.store, &c.bus, event, delivery).await
        },
    )
    .await?;
    background
        .listen(
            bus,
            QUEUE_GROUP,
            context,
            |c, event: ExpirationComplete, delivery| async move {
                // After an outage, payments held back by it apply first (see OutageClock).
                if !c.clock.calm_for(c.grace) {
                    return Ok(Outcome::Retry(EXPIRY_AFTER_OUTAGE_RETRY));
                }
                let outcome = expiration_complete::handle(&c.store, &c.bus, event, delivery)
                    .await
                    .inspect_err(|_| c.clock.trouble())?;
                Ok(patient(outcome, delivery))
            },
        )
        .await
}

/// A listener whose "not yet" answers wait longer with each delivery (see [`patient`]).
async fn listen_patiently<E, H, Fut>(
    background: &mut Background,
    bus: &EventBus,
    context: &Context,
    handler: H,
) -> anyhow::Result<()>
where
    E: Event,
    H: Fn(Context, E, Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Outcome>> + Send + 'static,
{
    background
        .listen(
            bus,
            QUEUE_GROUP,
            context.clone(),
            move |c, event: E, delivery| {
                let handled = handler(c, event, delivery);
                async move { Ok(patient(handled.await?, delivery)) }
            },
        )
        .await
}

/// Waits longer the more often an event has come back, so that a precondition that takes a while
/// (e.g. the tickets service's outbox catching up) is not given up after a few seconds.
pub fn patient(outcome: Outcome, delivery: Delivery) -> Outcome {
    match outcome {
        Outcome::Retry(delay) => {
            let factor = u32::try_from(delivery.attempt.clamp(1, 10)).unwrap_or(1);
            Outcome::Retry(delay.saturating_mul(factor))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(attempt: i64) -> Delivery {
        Delivery {
            attempt,
            sequence: 1,
        }
    }

    #[test]
    fn retries_wait_longer_with_each_delivery_up_to_ten_times_the_delay() {
        let retry = Outcome::Retry(RETRY_DELAY);
        assert_eq!(patient(retry, delivery(1)), retry);
        assert_eq!(patient(retry, delivery(3)), Outcome::Retry(RETRY_DELAY * 3));
        assert_eq!(
            patient(retry, delivery(40)),
            Outcome::Retry(RETRY_DELAY * 10)
        );
        assert_eq!(patient(Outcome::Ack, delivery(5)), Outcome::Ack);
    }

    #[test]
    fn an_unknown_order_is_waited_for_thirty_deliveries_then_dead_lettered() {
        for attempt in 1..UNKNOWN_ORDER_DELIVERIES {
            assert_eq!(
                unknown_order(delivery(attempt)),
                Outcome::Retry(RETRY_DELAY)
            );
        }
        for attempt in [UNKNOWN_ORDER_DELIVERIES, UNKNOWN_ORDER_DELIVERIES + 1] {
            assert!(matches!(
                unknown_order(delivery(attempt)),
                Outcome::Poison(_)
            ));
        }
        // With the growing delays of `patient`, about two minutes pass before the last retry.
        let waited: Duration = (1..UNKNOWN_ORDER_DELIVERIES)
            .map(
                |attempt| match patient(unknown_order(delivery(attempt)), delivery(attempt)) {
                    Outcome::Retry(delay) => delay,
                    other => panic!("{other:?}"),
                },
            )
            .sum();
        assert!(
            (Duration::from_secs(100)..Duration::from_secs(180)).contains(&waited),
            "{waited:?}"
        );
    }
}
