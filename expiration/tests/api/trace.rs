//! An expiry job keeps the trace its order was created in, so that its `expiration:complete`
//! continues the purchase's trace; a job without one (scheduled outside a trace, or by a release
//! before traces were kept) fires all the same.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue};
use common::telemetry::{TRACEPARENT, TraceContext, continue_from_http};
use common::testing::as_id;
use redis::AsyncCommands as _;
use tracing::Instrument as _;

use crate::helpers::{TestContext, millis_from_now, new_order_id};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// A current-thread runtime: the thread's subscriber sees every task.
#[tokio::test]
async fn a_job_keeps_the_trace_it_was_scheduled_in_and_one_without_a_trace_still_fires() {
    let _tracing = tracing::subscriber::set_default(common::telemetry::tracing_only_subscriber(
        "expiration-tests",
    ));
    let ctx = TestContext::new().await;
    let scheduler = ctx.scheduler(&ctx.scheduler).await;
    let (traced, untraced, old) = (new_order_id(), new_order_id(), new_order_id());

    // As the `order:created` listener does, in the span of the event.
    let span = tracing::info_span!("event");
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(CALLER));
    continue_from_http(&span, &headers);
    let scheduled_in = span.in_scope(TraceContext::current);
    scheduler
        .schedule(as_id(&traced), millis_from_now(-1))
        .instrument(span)
        .await
        .expect("scheduled");
    scheduler
        .schedule(as_id(&untraced), millis_from_now(-1))
        .await
        .expect("scheduled");
    // As a release before traces were kept scheduled it: the sorted set alone.
    let mut redis = ctx.redis().await;
    let _: i64 = redis
        .zadd(
            format!("{}:due", ctx.queue),
            &old,
            millis_from_now(-1).timestamp_millis(),
        )
        .await
        .expect("ZADD");

    let claimed: HashMap<String, TraceContext> = scheduler
        .claim_due()
        .await
        .expect("claimed")
        .into_iter()
        .map(|job| (job.order_id, job.trace))
        .collect();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    assert_eq!(claimed[&traced], scheduled_in);
    assert_eq!(claimed[&traced].trace_id(), Some(TRACE_ID));
    assert!(claimed[&untraced].is_empty(), "{claimed:?}");
    assert!(claimed[&old].is_empty(), "{claimed:?}");

    // Once announced, the job and its trace are gone.
    for order_id in [&traced, &untraced, &old] {
        scheduler.complete(order_id).await.expect("completed");
    }
    let traces: HashMap<String, String> = redis
        .hgetall(format!("{}:trace", ctx.queue))
        .await
        .expect("HGETALL");
    assert!(traces.is_empty(), "{traces:?}");
    assert!(ctx.jobs_in("inflight").await.is_empty());
}
