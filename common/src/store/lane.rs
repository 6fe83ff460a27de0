//! Admission of requests' database operations: at most `MONGO_REQUEST_CONCURRENCY` of them per
//! process are at the database at once; the rest wait here, in arrival order.
//!
//! The embedded database (FerretDB) is bound by CPU, so operations sent beyond what it can run at
//! once only queue inside it, where they delay everything else: a burst of requests to one service
//! (a flash sale's losers) then slows the event handlers of every service, whose work is what users
//! wait for next (the ticket reserved, the order complete). Requests are admitted here instead;
//! event handlers, relays and sweepers are not, so they reach the database past any queue of
//! requests, and only the connection pool bounds them.
//!
//! Requests run in their service's lane through [`RequestLane::around`]; every operation bounded by
//! [`super::Bounded::bounded`] in such a request waits for a permit first, within the operation
//! timeout (so a request that cannot get in answers 503, like one the database does not answer).
//! Work spawned from a request (e.g. a group commit's sending) runs outside the lane.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use tokio::sync::{Semaphore, SemaphorePermit};

tokio::task_local! {
    /// The lane of the request this task is serving, if any.
    static REQUEST_LANE: RequestLane;
}

/// Requests' database operations in flight at once per process unless
/// `MONGO_REQUEST_CONCURRENCY` says. Two, because on the 2-core machine that runs FerretDB beside
/// every service, the tickets service's handling of a flash sale's `order:created` had a p99 of
/// 65–84 ms with 8, 41–72 ms with 4 and 23–35 ms with 2 (alternating short benchmark runs), while
/// the sale still sold out in 0.87–1.00 s.
pub const DEFAULT_REQUEST_CONCURRENCY: usize = 2;

/// The permits of one process's requests to its database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestLane {
    permits: Arc<Semaphore>,
}

impl RequestLane {
    /// A lane letting `concurrency` operations (at least one) through at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// `routes` with each request run in this lane.
    pub fn around(&self, routes: Router) -> Router {
        routes.layer(from_fn_with_state(self.clone(), run_in_lane))
    }

    /// One of the lane's permits, held until dropped: for tests of a full lane.
    #[cfg(test)]
    pub(super) fn hold(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Runs `work` as a request of this lane (what [`Self::around`] does to each request).
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        REQUEST_LANE.scope(self.clone(), work).await
    }
}

async fn run_in_lane(State(lane): State<RequestLane>, request: Request, next: Next) -> Response {
    lane.run(next.run(request)).await
}

/// The lane's permit for one operation, if the current task serves a request; `None` (admitted at
/// once) outside requests. Recorded as `db_request_admission_wait_seconds` when it had to wait.
pub(super) async fn admit(lane: Option<&RequestLane>) -> Option<SemaphorePermit<'_>> {
    let lane = lane?;
    if let Ok(permit) = lane.permits.try_acquire() {
        return Some(permit);
    }
    let waiting = Instant::now();
    // The semaphore is never closed, so this only fails if it were; then the operation goes ahead.
    let permit = lane.permits.acquire().await.ok();
    metrics::histogram!("db_request_admission_wait_seconds")
        .record(waiting.elapsed().as_secs_f64());
    permit
}

/// The lane of the request the current task serves.
pub(super) fn current() -> Option<RequestLane> {
    REQUEST_LANE.try_with(RequestLane::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn operations_outside_a_request_are_admitted_at_once() {
        assert!(current().is_none());
        assert!(admit(current().as_ref()).await.is_none());
    }

    #[tokio::test]
    async fn a_request_waits_for_a_permit_while_the_lane_is_full() {
        let lane = RequestLane::new(1);
        let admitted = lane
            .run(async { admit(current().as_ref()).await.is_some() })
            .await;
        assert!(admitted, "a request's operation takes a permit");

        let in_flight = lane.hold();
        assert!(in_flight.is_some(), "and gives it back when done");
        let waiting = lane.run(async {
            tokio::time::timeout(Duration::from_millis(50), admit(current().as_ref()))
                .await
                .is_ok()
        });
        assert!(
            !waiting.await,
            "a second operation waits while the only permit is held"
        );

        drop(in_flight);
        let admitted = lane.run(async {
            tokio::time::timeout(Duration::from_millis(50), admit(current().as_ref()))
                .await
                .is_ok()
        });
        assert!(admitted.await, "and gets in once it is released");
    }
}
