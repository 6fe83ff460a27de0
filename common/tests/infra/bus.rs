use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bus::{ListenerOptions, Outcome, listen};
use common::events::{Event, ExpirationComplete, Subject};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::{bus, drain, fresh_nats_settings, observe};

fn expiration(order_id: &str) -> ExpirationComplete {
    ExpirationComplete {
        order_id: order_id.into(),
    }
}

#[tokio::test]
async fn every_queue_group_gets_each_event_once() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut orders = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;
    let mut payments = observe::<ExpirationComplete>(&bus, "payments-service", &shutdown).await;
    // A second instance of the orders service shares the durable: together they see each event once.
    let mut orders_replica = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;

    for i in 0..20 {
        bus.publish(&expiration(&format!("o{i}")))
            .await
            .expect("publish");
    }
    let quiet = Duration::from_millis(700);
    let mut orders_seen = drain(&mut orders, quiet).await;
    orders_seen.extend(drain(&mut orders_replica, quiet).await);
    let payments_seen = drain(&mut payments, quiet).await;
    assert_eq!(orders_seen.len(), 20);
    assert_eq!(payments_seen.len(), 20);
    shutdown.cancel();
}

#[tokio::test]
async fn a_repeated_message_id_is_stored_once() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;
    let event = expiration("same-order");
    bus.publish(&event).await.expect("publish");
    bus.publish(&event).await.expect("publish again");
    bus.publish_raw(
        Subject::ExpirationComplete,
        &event.message_id(),
        Bytes::from_static(b"{\"orderId\":\"same-order\"}"),
    )
    .await
    .expect("publish raw");
    assert_eq!(
        drain(&mut seen, Duration::from_millis(700)).await,
        vec![event]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_not_yet_outcome_is_redelivered_after_the_requested_delay() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counter = attempts.clone();
    listen::<ExpirationComplete, _, _>(
        &bus,
        ListenerOptions::new("orders-service"),
        shutdown.clone(),
        move |_, delivery| {
            let counter = counter.clone();
            let tx = tx.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((Instant::now(), delivery.attempt));
                if delivery.attempt < 3 {
                    Ok(Outcome::Retry(Duration::from_millis(300)))
                } else {
                    Ok(Outcome::Ack)
                }
            }
        },
    )
    .await
    .expect("listener");
    bus.publish(&expiration("o1")).await.expect("publish");
    let deliveries = drain(&mut rx, Duration::from_secs(2)).await;
    let attempts_seen: Vec<i64> = deliveries.iter().map(|(_, attempt)| *attempt).collect();
    assert_eq!(
        attempts_seen,
        vec![1, 2, 3],
        "acked on the third delivery and not redelivered after"
    );
    for pair in deliveries.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(250),
            "redelivered after the nak delay, not at once: {gap:?}"
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_failing_handler_is_retried_until_it_succeeds() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    listen::<ExpirationComplete, _, _>(
        &bus,
        ListenerOptions::new("orders-service"),
        shutdown.clone(),
        move |event, delivery| {
            let tx = tx.clone();
            async move {
                if delivery.attempt < 2 {
                    anyhow::bail!("database hiccup");
                }
                let _ = tx.send(event);
                Ok(Outcome::Ack)
            }
        },
    )
    .await
    .expect("listener");
    bus.publish(&expiration("o1")).await.expect("publish");
    assert_eq!(
        drain(&mut rx, Duration::from_secs(2)).await,
        vec![expiration("o1")]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_malformed_payload_is_terminated_and_the_next_events_flow() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counter = calls.clone();
    let mut options = ListenerOptions::new("orders-service");
    options.concurrency = 1;
    listen::<ExpirationComplete, _, _>(&bus, options, shutdown.clone(), move |event, _| {
        let tx = tx.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(event);
            Ok(Outcome::Ack)
        }
    })
    .await
    .expect("listener");
    bus.publish_raw(
        Subject::ExpirationComplete,
        "poison-1",
        Bytes::from_static(b"{not json"),
    )
    .await
    .expect("publish poison");
    bus.publish_raw(
        Subject::ExpirationComplete,
        "poison-2",
        Bytes::from_static(b"{\"order\":1}"),
    )
    .await
    .expect("publish wrong shape");
    bus.publish(&expiration("after")).await.expect("publish");
    assert_eq!(
        drain(&mut rx, Duration::from_secs(2)).await,
        vec![expiration("after")]
    );
    // The poison messages never reached the handler and were not redelivered after the ack wait.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_restarted_listener_resumes_where_its_durable_left_off() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let first = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &first).await;
    bus.publish(&expiration("before")).await.expect("publish");
    assert_eq!(
        drain(&mut seen, Duration::from_millis(700)).await,
        vec![expiration("before")]
    );
    first.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;

    bus.publish(&expiration("while-down"))
        .await
        .expect("publish");
    let second = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &second).await;
    assert_eq!(
        drain(&mut seen, Duration::from_millis(1500)).await,
        vec![expiration("while-down")]
    );
    second.cancel();
}

#[tokio::test]
async fn a_stream_made_before_payment_updated_existed_gains_the_subject_and_keeps_its_messages() {
    use common::events::PaymentUpdated;

    let settings = fresh_nats_settings();
    // The stream as an older release made it: the SPEC's six subjects only, with one message.
    let client = async_nats::connect(settings.url.as_str())
        .await
        .expect("NATS");
    let js = async_nats::jetstream::new(client);
    let old_subjects: Vec<String> = Subject::ALL
        .iter()
        .filter(|s| **s != Subject::PaymentUpdated)
        .map(|s| format!("{}{}", settings.subject_prefix, s.as_str()))
        .collect();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: old_subjects,
        ..Default::default()
    })
    .await
    .expect("the old stream");
    js.publish(
        format!("{}expiration:complete", settings.subject_prefix),
        Bytes::from_static(b"{\"orderId\":\"before-the-upgrade\"}"),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut expirations = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;
    let mut updates = observe::<PaymentUpdated>(&bus, "orders-service", &shutdown).await;
    let update = PaymentUpdated {
        id: "p1".into(),
        order_id: "o1".into(),
        version: 0,
        status: "pending".into(),
        stripe_id: None,
        refund_id: None,
    };
    bus.publish(&update)
        .await
        .expect("the new subject is in the stream");

    let quiet = Duration::from_millis(700);
    assert_eq!(drain(&mut updates, quiet).await, vec![update]);
    assert_eq!(
        drain(&mut expirations, quiet).await,
        vec![expiration("before-the-upgrade")]
    );
    shutdown.cancel();
}
