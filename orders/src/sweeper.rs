//! The expiry sweeper: the guarantee behind the expiration service's fast path. An order still
//! `created` some time after its window closed (its Redis job lost to a crash or a wiped volume,
//! its `expiration:complete` still on its way) is cancelled through the same state change as
//! `expiration:complete`. Safe with several replicas: the cancellation is a versioned commit, so
//! only one of them makes it and the others find the order cancelled.

use std::time::Duration;

use chrono::Utc;
use common::bus::EventBus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::listeners::expiration_complete::expire;
use crate::store::OrderStore;

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
pub async fn sweep_once(
    store: &OrderStore,
    bus: &EventBus,
    grace: Duration,
) -> Result<usize, common::store::StoreError> {
    let before = Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut cancelled = 0;
    for order in store.overdue(before, SWEEP_BATCH).await? {
        if expire(store, bus, order.id).await?.is_some() {
            tracing::warn!(order_id = %order.id, expires_at = %order.expires_at,
                "the sweeper cancelled an order its expiration never reached");
            cancelled += 1;
        }
    }
    Ok(cancelled)
}

/// Runs [`sweep_once`] every `interval` until `shutdown`.
pub fn spawn_sweeper(
    store: OrderStore,
    bus: EventBus,
    timing: SweepTiming,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(timing.interval) => {}
            }
            match sweep_once(&store, &bus, timing.grace).await {
                Ok(0) => {}
                Ok(cancelled) => tracing::info!(cancelled, "expiry sweep cancelled overdue orders"),
                Err(err) => tracing::warn!(error = %err, "expiry sweep failed; next pass retries"),
            }
        }
    })
}
