//! The loop that fires due jobs: re-queue expired leases, claim due jobs, publish
//! `expiration:complete` for each, then forget it.

use std::time::Duration;

use chrono::Utc;
use common::bus::EventBus;
use common::events::{ExpirationComplete, Id};
use futures::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::scheduler::{ClaimedJob, ExpirationScheduler};
use crate::settings::SchedulerSettings;

/// How many claimed jobs are published at once.
const PUBLISH_CONCURRENCY: usize = 16;

/// Polls until `shutdown` is cancelled. A round in progress finishes first, so no claimed job is
/// left to wait for its lease.
pub fn spawn_poller(
    scheduler: ExpirationScheduler,
    bus: EventBus,
    settings: SchedulerSettings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let full_batch = match poll_once(&scheduler, &bus, &settings).await {
                Ok(claimed) => {
                    if failing {
                        tracing::info!("Redis answers again; expiration poller resumed");
                        failing = false;
                    }
                    claimed >= settings.batch_size
                }
                Err(err) => {
                    // Warn once per outage, not every 100 ms; the manager reconnects meanwhile.
                    if failing {
                        tracing::debug!(error = %format!("{err:#}"), "expiration poll failed again");
                    } else {
                        tracing::warn!(error = %format!("{err:#}"), "expiration poll failed; retrying");
                        failing = true;
                    }
                    false
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A full batch means more may be due: claim again at once.
            if !full_batch {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        }
        tracing::info!("expiration poller stopped");
    })
}

/// One round: returns how many jobs were claimed.
async fn poll_once(
    scheduler: &ExpirationScheduler,
    bus: &EventBus,
    settings: &SchedulerSettings,
) -> anyhow::Result<usize> {
    let reaped = scheduler.reap_expired_leases().await?;
    if reaped > 0 {
        tracing::warn!(
            jobs = reaped,
            "re-queued expiry jobs whose claimer did not finish within the lease"
        );
    }
    let jobs = scheduler.claim_due().await?;
    if let Ok(depth) = scheduler.depth().await {
        // What is left waiting after this claim (due later, or due now beyond one batch).
        metrics::gauge!("expiration_queue_depth").set(depth as f64);
    }
    let claimed = jobs.len();
    futures::stream::iter(jobs)
        .for_each_concurrent(PUBLISH_CONCURRENCY, |job| {
            fire(scheduler, bus, job, settings.retry_delay)
        })
        .await;
    Ok(claimed)
}

/// Fires a job in a span of the trace its order was created in, so that the expiry and what it
/// sets off belong to the purchase's trace.
async fn fire(scheduler: &ExpirationScheduler, bus: &EventBus, job: ClaimedJob, retry: Duration) {
    let span = tracing::info_span!("expiry", order_id = %job.order_id);
    common::telemetry::continue_from_stored(&span, &job.trace);
    fire_in_span(scheduler, bus, job, retry)
        .instrument(span)
        .await;
}

async fn fire_in_span(
    scheduler: &ExpirationScheduler,
    bus: &EventBus,
    job: ClaimedJob,
    retry: Duration,
) {
    let Some(order_id) = Id::parse(&job.order_id) else {
        // Only ids of `order:created` are scheduled; anything else names no order.
        tracing::error!(order_id = %job.order_id, "an expiry job that names no order; dropped");
        if let Err(err) = scheduler.complete(&job.order_id).await {
            tracing::warn!(order_id = %job.order_id, error = %format!("{err:#}"), "could not drop the job");
        }
        return;
    };
    let event = ExpirationComplete { order_id };
    match bus.publish(&event).await {
        Ok(()) => {
            let late_ms = Utc::now().timestamp_millis() - job.due_at_ms;
            tracing::info!(order_id = %job.order_id, late_ms, "order expired");
            // Milliseconds as f64 are exact far beyond any lateness.
            metrics::histogram!("expiration_lateness_seconds").record(late_ms.max(0) as f64 / 1e3);
            if let Err(err) = scheduler.complete(&job.order_id).await {
                // The reaper will fire it again after the lease; the repeat has the same message
                // id, so JetStream drops it.
                tracing::warn!(order_id = %job.order_id, error = %format!("{err:#}"),
                    "expiry announced but its job could not be removed");
            }
        }
        Err(err) => {
            tracing::warn!(order_id = %job.order_id, error = %format!("{err:#}"),
                "could not announce an expiry; will retry");
            if let Err(err) = scheduler.release(&job.order_id, retry).await {
                // Still in flight: the reaper returns it once the lease runs out.
                tracing::warn!(order_id = %job.order_id, error = %format!("{err:#}"),
                    "could not release the expiry job; it is retried after its lease");
            }
        }
    }
}
