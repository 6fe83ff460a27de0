use std::time::Duration;

use common::bus::Outcome;
use common::events::OrderCreated;
use expiration::listeners::order_created;
use expiration::scheduler::ExpirationScheduler;

use crate::helpers::{TestContext, millis_from_now, new_order_id, order_created};

#[tokio::test]
async fn an_order_created_event_fires_expiration_complete_once_at_its_expires_at() {
    let ctx = TestContext::new().await;
    let (mut observer, _app, job) = ctx.observed_app_with_job(1500).await;
    let (order_id, due) = (job.order_id, job.due);
    assert_eq!(
        job.scheduled_at,
        due.timestamp_millis(),
        "scheduled at expiresAt, not at now + a constant"
    );

    let published = observer
        .wire
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    let delivered = observer
        .stream
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    let (published_late, delivered_late) = (published.late_ms(due), delivered.late_ms(due));
    eprintln!(
        "expiry of an order due in 1.5 s: published {published_late} ms after expiresAt, \
         delivered to a consumer {delivered_late} ms after"
    );
    assert!(
        published_late >= 0,
        "fired {published_late} ms before expiresAt"
    );
    assert!(
        delivered_late < 1500,
        "delivered {delivered_late} ms after expiresAt"
    );

    // Once: no second publish, nothing left in Redis.
    assert!(
        !observer.wire.any_within(Duration::from_millis(700)).await,
        "a second expiration:complete was published"
    );
    assert!(ctx.jobs_in("due").await.is_empty());
    assert!(ctx.jobs_in("inflight").await.is_empty());
}

#[tokio::test]
async fn an_order_whose_expires_at_has_passed_fires_at_once() {
    let ctx = TestContext::new().await;
    let (mut observer, _app, bus) = ctx.observed_app().await;

    let order_id = new_order_id();
    let published_at = chrono::Utc::now();
    ctx.publish_order_created(&bus, &order_id, millis_from_now(-5000))
        .await;

    let fired = observer
        .stream
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    let after_ms = fired.late_ms(published_at);
    eprintln!("expiry already past when order:created arrived: fired {after_ms} ms later");
    assert!(after_ms < 1500, "took {after_ms} ms");
}

/// Hands `event` straight to the listener.
async fn handled(scheduler: &ExpirationScheduler, event: OrderCreated) -> Outcome {
    order_created::handle(scheduler, event)
        .await
        .expect("handled")
}

#[tokio::test]
async fn the_handler_acks_and_keeps_one_job_at_expires_at_however_often_the_event_comes() {
    // Each row: what the listener is handed, and how many times.
    for (case, deliveries) in [("one delivery", 1), ("a delivery and two redeliveries", 3)] {
        let ctx = TestContext::new().await;
        let scheduler = ctx.scheduler(&ctx.scheduler).await;
        let order_id = new_order_id();
        let due = millis_from_now(60_000);
        let event = order_created(&order_id, due);

        for _ in 0..deliveries {
            let outcome = handled(&scheduler, event.clone()).await;
            assert_eq!(outcome, Outcome::Ack, "{case}");
        }

        let jobs = ctx.jobs_in("due").await;
        assert_eq!(jobs, vec![(order_id, due.timestamp_millis())], "{case}");
    }
}

#[tokio::test]
async fn a_redelivery_while_the_job_is_being_fired_does_not_queue_it_again() {
    let ctx = TestContext::new().await;
    let scheduler = ctx.scheduler(&ctx.scheduler).await;
    let order_id = new_order_id();
    let event = order_created(&order_id, millis_from_now(-10));
    handled(&scheduler, event.clone()).await;
    let claimed = scheduler.claim_due().await.expect("claim");
    assert_eq!(claimed.len(), 1);

    let outcome = handled(&scheduler, event).await;

    assert_eq!(outcome, Outcome::Ack);
    assert!(ctx.jobs_in("due").await.is_empty(), "queued twice");
    assert_eq!(ctx.jobs_in("inflight").await.len(), 1);
}
