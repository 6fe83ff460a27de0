//! Expiry after trouble, and the expiry sweeper.
//!
//! [`OutageClock`]: after an outage (the bus disconnected, the database failing), expiry waits a
//! grace before cancelling anything, so that events held back by the outage (a `payment:created`
//! still in a payments outbox or behind in the stream) apply first: a buyer whose charge succeeded in
//! time keeps the ticket instead of being cancelled and refunded.
//!
//! The expiry sweeper: the guarantee behind the expiration service's fast path. An order still
//! `created` some time after its window closed (its Redis job lost to a crash or a wiped volume,
//! its `expiration:complete` still on its way) is cancelled through the same state change as
//! `expiration:complete`. Safe with several replicas: the cancellation is a versioned commit, so
//! only one of them makes it and the others find the order cancelled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use common::bus::EventBus;
use common::events::OrderStatus;
use mongodb::bson::Bson;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::listeners::expiration_complete::{Expiry, expire};
use crate::store::OrderStore;

/// When this process last saw the bus or the database in trouble. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutageClock {
    last_trouble: Arc<Mutex<Instant>>,
}

impl OutageClock {
    /// Starting counts as trouble: a restarted service may have a backlog of held-back events.
    pub fn new() -> Self {
        Self {
            last_trouble: Arc::new(Mutex::new(Instant::now())),
        }
    }

    pub fn trouble(&self) {
        *self.lock() = Instant::now();
    }

    /// Whether nothing went wrong for at least `grace`.
    pub fn calm_for(&self, grace: Duration) -> bool {
        self.lock().elapsed() >= grace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // An `Instant` cannot be left half-written: a poisoned lock still holds a valid one.
        self.last_trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks trouble while the bus is disconnected (checked every 250 ms) until `shutdown`.
    pub fn watch(&self, bus: EventBus, shutdown: CancellationToken) -> JoinHandle<()> {
        let clock = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if !bus.is_connected() {
                    clock.trouble();
                }
            }
        })
    }
}

impl Default for OutageClock {
    fn default() -> Self {
        Self::new()
    }
}

/// How many overdue orders one pass takes.
const SWEEP_BATCH: i64 = 200;

/// When the sweeper runs and what it calls overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepTiming {
    /// Between passes (`EXPIRY_SWEEP_SECONDS`).
    pub interval: Duration,
    /// How long after its window an order is left to the expiration service before the sweeper
    /// cancels it (`EXPIRY_SWEEP_GRACE_SECONDS`).
    pub grace: Duration,
}

/// One pass: cancels every order overdue by more than the grace. Returns how many it cancelled.
///
/// Reads the expiry markers (`OrderStore::overdue`), not the orders: each marker's order, read
/// through the store, decides, and a marker whose order is no longer `created` (paid, cancelled) or
/// long missing (its create lost the ticket or crashed) is deleted on the way.
pub async fn sweep_once(
    store: &OrderStore,
    bus: &EventBus,
    grace: Duration,
) -> Result<usize, common::store::StoreError> {
    let now = Utc::now();
    let before = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut cancelled = 0;
    for marker in store.overdue(before, SWEEP_BATCH).await? {
        let id = marker.order_id;
        match store.orders().get(Bson::ObjectId(id)).await? {
            None => {
                if OrderStore::is_dangling(&marker, now) {
                    store.forget_expiry(id).await?;
                }
                continue;
            }
            Some(order) if order.status != OrderStatus::Created => {
                store.forget_expiry(id).await?;
                continue;
            }
            Some(_) => {}
        }
        match expire(store, bus, id, None).await? {
            Expiry::Cancelled(_) => {
                tracing::warn!(order_id = %id, expires_at = %marker.expires_at,
                    "the sweeper cancelled an order its expiration never reached");
                cancelled += 1;
                store.forget_expiry(id).await?;
            }
            // Paid or cancelled meanwhile.
            Expiry::Unchanged => store.forget_expiry(id).await?,
            // A payment still on its way goes first; the next pass looks again.
            Expiry::PaymentWaiting => {}
        }
    }
    Ok(cancelled)
}

/// Runs [`sweep_once`] every `interval` until `shutdown`, once `clock` has been calm for a grace.
pub fn spawn_sweeper(
    store: OrderStore,
    bus: EventBus,
    timing: SweepTiming,
    clock: OutageClock,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(timing.interval) => {}
            }
            if !clock.calm_for(timing.grace) {
                continue;
            }
            match sweep_once(&store, &bus, timing.grace).await {
                Ok(0) => {}
                Ok(cancelled) => tracing::info!(cancelled, "expiry sweep cancelled overdue orders"),
                Err(err) => {
                    clock.trouble();
                    tracing::warn!(error = %err, "expiry sweep failed; next pass retries");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_calm_only_a_whole_grace_after_the_last_trouble() {
        let clock = OutageClock::new();
        assert!(
            !clock.calm_for(Duration::from_secs(60)),
            "a start is trouble"
        );
        assert!(clock.calm_for(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(30));
        assert!(clock.calm_for(Duration::from_millis(20)));
        clock.trouble();
        assert!(!clock.calm_for(Duration::from_millis(20)));
    }
}
