use common::testing::as_id;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use expiration::settings::SchedulerSettings;
use reqwest::StatusCode;

use crate::helpers::{TestContext, millis_from_now, new_order_id};

#[tokio::test]
async fn two_replicas_fire_each_of_twenty_jobs_exactly_once() {
    let ctx = TestContext::new().await;
    let (mut observer, first, bus) = ctx.observed_app().await;
    let second = ctx.spawn_app().await;

    // Due 50 ms apart, so that both replicas' polls keep finding work.
    let orders: Vec<String> = (0..20).map(|_| new_order_id()).collect();
    for (i, order_id) in (0i64..).zip(&orders) {
        ctx.publish_order_created(&bus, order_id, millis_from_now(1000 + 50 * i))
            .await;
    }

    let published = observer
        .wire
        .counts(20, Duration::from_secs(10), Duration::from_secs(1))
        .await;
    let delivered = observer
        .stream
        .counts(20, Duration::from_secs(5), Duration::from_millis(300))
        .await;
    let expected: HashMap<String, usize> = orders.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(published, expected, "publishes per order");
    assert_eq!(delivered, expected, "deliveries per order");
    assert!(ctx.jobs_in("due").await.is_empty());
    assert!(ctx.jobs_in("inflight").await.is_empty());
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn concurrent_claims_hand_each_due_job_to_exactly_one_claimer() {
    let ctx = TestContext::new().await;
    let settings = SchedulerSettings {
        batch_size: 2,
        ..ctx.scheduler.clone()
    };
    let setup = ctx.scheduler(&settings).await;
    let orders: HashSet<String> = (0..20).map(|_| new_order_id()).collect();
    for order_id in &orders {
        setup
            .schedule(as_id(order_id), millis_from_now(-1))
            .await
            .expect("scheduled");
    }

    let mut claimers = Vec::new();
    for _ in 0..8 {
        // Each claimer has its own connection, like a replica.
        let scheduler = ctx.scheduler(&settings).await;
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = scheduler.claim_due().await.expect("claim");
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|job| job.order_id));
            }
        }));
    }
    let mut claimed = Vec::new();
    let mut shares = Vec::new();
    for claimer in claimers {
        let mine = claimer.await.expect("claimer");
        shares.push(mine.len());
        claimed.extend(mine);
    }
    eprintln!("20 due jobs claimed by 8 concurrent claimers: {shares:?}");

    assert_eq!(claimed.len(), 20, "each job claimed once: {claimed:?}");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), orders);
    assert_eq!(ctx.jobs_in("inflight").await.len(), 20);
}

#[tokio::test]
async fn a_job_that_falls_due_while_no_instance_runs_fires_when_the_next_one_starts() {
    let ctx = TestContext::new().await;
    let (mut observer, first, job) = ctx.observed_app_with_job(1000).await;
    let (order_id, due) = (job.order_id, job.due);

    first.stop().await;
    // Let the expiry pass with nobody running.
    let wait = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300);
    tokio::time::sleep(wait).await;
    assert!(
        !observer.wire.any_within(Duration::ZERO).await,
        "fired although no instance was running"
    );

    let restarted_at = Utc::now();
    let _second = ctx.spawn_app().await;
    let fired = observer
        .wire
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    eprintln!(
        "job due while stopped: fired {} ms after its due time, {} ms after the new instance started",
        fired.late_ms(due),
        fired.late_ms(restarted_at)
    );
    assert!(
        !observer.wire.any_within(Duration::from_millis(500)).await,
        "fired twice"
    );
}

#[tokio::test]
async fn a_claimed_job_that_was_never_published_fires_after_its_lease() {
    let ctx = TestContext::new().await;
    let mut observer = ctx.observe().await;
    // A replica that claims with a 1 s lease and then dies before publishing.
    let lease = Duration::from_secs(1);
    let crashed = ctx
        .scheduler(&SchedulerSettings {
            lease,
            ..ctx.scheduler.clone()
        })
        .await;
    let order_id = new_order_id();
    crashed
        .schedule(as_id(&order_id), millis_from_now(-1))
        .await
        .expect("scheduled");
    let claimed_at = Utc::now();
    let claimed = crashed.claim_due().await.expect("claimed");
    assert_eq!(
        claimed
            .iter()
            .map(|j| j.order_id.as_str())
            .collect::<Vec<_>>(),
        vec![order_id.as_str()]
    );
    drop(crashed);

    let _app = ctx.spawn_app().await;
    let fired = observer
        .wire
        .next_of(&order_id, Duration::from_secs(10))
        .await;
    let lease_end = claimed_at + lease;
    eprintln!(
        "claimed but never published (lease 1 s): fired {} ms after the lease ran out",
        fired.late_ms(lease_end)
    );
    assert!(
        fired.late_ms(lease_end) >= 0,
        "fired while the claim's lease was still running"
    );
    assert!(fired.late_ms(lease_end) < 1500);
    assert!(
        !observer.wire.any_within(Duration::from_millis(500)).await,
        "fired twice"
    );
    assert!(ctx.jobs_in("inflight").await.is_empty());
}

#[tokio::test]
async fn a_job_scheduled_before_a_redis_restart_fires_after_it() {
    let ctx = TestContext::exclusive().await;
    let (mut observer, app, job) = ctx.observed_app_with_job(5000).await;
    let (order_id, due) = (job.order_id, job.due);

    let restart = Instant::now();
    let down = ctx.stop_redis().await;
    let unready = until_status(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        unready.to_string().contains("redis is not reachable"),
        "{unready}"
    );
    down.start().await;
    until_status(&app, StatusCode::OK).await;
    let back = Utc::now();
    let restart_ms = restart.elapsed().as_millis();
    // The append-only file brought the job back (unless it already fired, on a slow machine).
    let due_jobs = ctx.jobs_in("due").await;
    let fired = observer
        .wire
        .next_of(&order_id, Duration::from_secs(15))
        .await;
    if back < due {
        assert_eq!(due_jobs, vec![(order_id.clone(), due.timestamp_millis())]);
    }
    eprintln!(
        "Redis down and up again in {restart_ms} ms (readiness 503 in between, {} ms left before \
         the job was due); the job fired {} ms after its due time",
        (due - back).num_milliseconds(),
        fired.late_ms(due)
    );
    assert!(fired.late_ms(due) >= 0, "fired early");
    // If the restart outlasted the delay, the job is late by the outage, not lost.
    assert!(fired.late_ms(due.max(back)) < 1500);
    app.stop().await;
}

/// Polls `/readyz` until it answers `status` (up to 15 s) and returns the body.
async fn until_status(app: &crate::helpers::TestApp, status: StatusCode) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, body) = app.get("/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} {body} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
