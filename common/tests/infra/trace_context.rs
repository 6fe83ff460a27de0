//! The trace of a change reaches whoever handles its events, whether its writer published them
//! at once or the outbox relay did later (from what the change document kept).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use common::bus::{ListenerOptions, Outcome, listen};
use common::events::ExpirationComplete;
use common::store::{PendingEvent, VersionedStore};
use common::telemetry::{TRACEPARENT, TraceContext, continue_from_http};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::helpers::{Counter, bus, counter, fresh_database, fresh_nats_settings, named_id};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn event_of(id: &str) -> PendingEvent {
    PendingEvent::of(&ExpirationComplete {
        order_id: named_id(id),
    })
    .expect("event")
}

/// A request's span, continuing the caller's trace.
fn request_span() -> tracing::Span {
    let span = tracing::info_span!("request");
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(CALLER));
    continue_from_http(&span, &headers);
    span
}

/// The trace each `expiration:complete` is handled in, by order id.
async fn handled_traces(
    bus: &common::bus::EventBus,
    shutdown: &CancellationToken,
) -> mpsc::UnboundedReceiver<(common::events::Id, TraceContext)> {
    let (tx, rx) = mpsc::unbounded_channel();
    listen::<ExpirationComplete, _, _>(
        bus,
        ListenerOptions::new("traced"),
        shutdown.clone(),
        move |event, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((event.order_id, TraceContext::current()));
                Ok(Outcome::Ack)
            }
        },
    )
    .await
    .expect("listener");
    rx
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(common::events::Id, TraceContext)>,
) -> (common::events::Id, TraceContext) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event handled within 10 s")
        .expect("the listener runs")
}

// A current-thread runtime: the thread's subscriber sees every task.
#[tokio::test]
async fn events_are_handled_in_the_trace_they_were_written_in_even_when_relayed_later() {
    let _tracing = tracing::subscriber::set_default(common::telemetry::tracing_only_subscriber(
        "common-tests",
    ));
    let store: VersionedStore<Counter> = VersionedStore::new(&fresh_database().await, "notes");
    let bus = bus(&fresh_nats_settings()).await;
    let shutdown = CancellationToken::new();
    let mut handled = handled_traces(&bus, &shutdown).await;

    // Written in a request, and left unpublished as by a writer that crashed: the relay, outside
    // any request, publishes it later.
    let request = request_span();
    let written_in = request.in_scope(TraceContext::current);
    let stored = request.in_scope(|| event_of("relayed"));
    assert_eq!(
        stored.trace, written_in,
        "the pending event keeps its trace"
    );
    store
        .create_unpublished(&counter("relayed", "relayed"), vec![stored])
        .instrument(request)
        .await
        .expect("write");
    // One written outside any trace, as every event before traces were kept: it still relays.
    store
        .create_unpublished(&counter("untraced", "untraced"), vec![event_of("untraced")])
        .await
        .expect("write");
    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(pass.published, 2);

    let mut traces = [next(&mut handled).await, next(&mut handled).await];
    traces.sort_by_key(|(id, _)| *id != named_id("relayed"));
    let (_, relayed) = &traces[0];
    assert_eq!(relayed.trace_id(), Some(TRACE_ID), "{relayed:?}");
    assert_ne!(
        relayed, &written_in,
        "the handler's span is a child, not the writer's"
    );
    let (_, untraced) = &traces[1];
    assert!(
        untraced.trace_id().is_some_and(|id| id != TRACE_ID),
        "an event without a trace is handled in a trace of its own: {untraced:?}"
    );

    // Published by its writer right away: the same trace.
    store
        .create(
            &bus,
            &counter("direct", "direct"),
            vec![request_span().in_scope(|| event_of("direct"))],
        )
        .instrument(request_span())
        .await
        .expect("write");
    let (id, direct) = next(&mut handled).await;
    assert_eq!(id, named_id("direct"));
    assert_eq!(direct.trace_id(), Some(TRACE_ID), "{direct:?}");
    shutdown.cancel();
}

/// The trace the raw headers of dead letter `sequence` carry.
async fn trace_of_dead_letter(bus: &common::bus::EventBus, sequence: u64) -> TraceContext {
    let url = std::env::var("NATS_URL").expect("NATS_URL");
    let client = async_nats::connect(url).await.expect("NATS connection");
    let message = async_nats::jetstream::new(client)
        .get_stream(bus.dead_letter_stream())
        .await
        .expect("the dead-letter stream")
        .get_raw_message(sequence)
        .await
        .expect("the dead letter");
    TraceContext::from_nats(&message.headers)
}

/// Waits for a dead letter after sequence `after` and returns its sequence.
async fn dead_letter_after(bus: &common::bus::EventBus, after: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let letters = bus.dead_letters().await.expect("dead letters");
        if let Some(letter) = letters.iter().find(|letter| letter.sequence > after) {
            return letter.sequence;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {letters:?} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dead_letter_keeps_its_events_trace_and_its_replay_carries_it_on() {
    let _tracing = tracing::subscriber::set_default(common::telemetry::tracing_only_subscriber(
        "common-tests",
    ));
    let bus = bus(&fresh_nats_settings()).await;
    let shutdown = CancellationToken::new();
    let _handled = handled_traces(&bus, &shutdown).await;
    let sent = TraceContext {
        traceparent: Some(CALLER.to_owned()),
        tracestate: None,
    };
    bus.publish_traced(
        common::events::Subject::ExpirationComplete,
        "poison-traced",
        bytes::Bytes::from_static(b"{not json"),
        &sent,
    )
    .await
    .expect("publish");

    let first = dead_letter_after(&bus, 0).await;
    let kept = trace_of_dead_letter(&bus, first).await;
    assert_eq!(kept.trace_id(), Some(TRACE_ID), "{kept:?}");

    // Replayed (still poison), it is handled, and dead-lettered again, in the same trace.
    bus.replay_dead_letter(first).await.expect("replay");
    let second = dead_letter_after(&bus, first).await;
    let kept = trace_of_dead_letter(&bus, second).await;
    assert_eq!(kept.trace_id(), Some(TRACE_ID), "{kept:?}");
    shutdown.cancel();
}
