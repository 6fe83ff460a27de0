use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bus::{Delivery, EventBus, ListenerOptions, Outcome, listen};
use common::events::{Event, ExpirationComplete, Subject};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::{bus, drain, fresh_nats_settings, named_id, observe};

/// The expiries a test's listener passes on.
type Expiries = mpsc::UnboundedReceiver<ExpirationComplete>;

/// A bus on a stream of its own, and the token that stops the test's listeners.
async fn fresh_bus() -> (EventBus, CancellationToken) {
    (bus(&fresh_nats_settings()).await, CancellationToken::new())
}

/// Runs an `expiration:complete` listener whose outcome for each delivery `decide` gives. Returns
/// the events it acks, in the order it acks them, and how many times it was called.
async fn listen_acking<D>(
    bus: &EventBus,
    options: ListenerOptions,
    shutdown: &CancellationToken,
    decide: D,
) -> (Expiries, Arc<AtomicUsize>)
where
    D: Fn(&ExpirationComplete, &Delivery) -> anyhow::Result<Outcome>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let (tx, acked) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    listen::<ExpirationComplete, _, _>(bus, options, shutdown.clone(), move |event, delivery| {
        let (tx, counter, decide) = (tx.clone(), counter.clone(), decide.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let outcome = decide(&event, &delivery)?;
            if outcome == Outcome::Ack {
                let _ = tx.send(event);
            }
            Ok(outcome)
        }
    })
    .await
    .expect("listener");
    (acked, calls)
}

/// Asserts that the one event to arrive on `rx` before it is quiet for `quiet` is the expiry of
/// `label`.
async fn assert_only_expiry_of(rx: &mut Expiries, quiet: Duration, label: &str) {
    assert_eq!(drain(rx, quiet).await, vec![expiration(label)]);
}

/// Publishes `payload` as it is on `expiration:complete` under `message_id`, as a broken publisher
/// could.
async fn publish_expiry_bytes(bus: &EventBus, message_id: &str, payload: &'static [u8]) {
    bus.publish_raw(
        Subject::ExpirationComplete,
        message_id,
        Bytes::from_static(payload),
    )
    .await
    .unwrap_or_else(|err| panic!("publishing {message_id}: {err}"));
}

/// The expiry of a made-up order called `label`.
fn expiration(label: &str) -> ExpirationComplete {
    ExpirationComplete {
        order_id: named_id(label),
    }
}

#[tokio::test]
async fn every_queue_group_gets_each_event_once() {
    let (bus, shutdown) = fresh_bus().await;
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
    let (bus, shutdown) = fresh_bus().await;
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;
    let event = expiration("same-order");
    bus.publish(&event).await.expect("publish");
    bus.publish(&event).await.expect("publish again");
    publish_expiry_bytes(&bus, &event.message_id(), b"{\"orderId\":\"same-order\"}").await;
    assert_eq!(
        drain(&mut seen, Duration::from_millis(700)).await,
        vec![event]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_not_yet_outcome_is_redelivered_after_the_requested_delay() {
    let (bus, shutdown) = fresh_bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let options = ListenerOptions::new("orders-service");
    listen_acking(&bus, options, &shutdown, move |_, delivery| {
        let _ = tx.send((Instant::now(), delivery.attempt));
        if delivery.attempt < 3 {
            Ok(Outcome::Retry(Duration::from_millis(300)))
        } else {
            Ok(Outcome::Ack)
        }
    })
    .await;
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
    let (bus, shutdown) = fresh_bus().await;
    let options = ListenerOptions::new("orders-service");
    let (mut acked, _) = listen_acking(&bus, options, &shutdown, |_, delivery| {
        if delivery.attempt < 2 {
            anyhow::bail!("database hiccup");
        }
        Ok(Outcome::Ack)
    })
    .await;
    bus.publish(&expiration("o1")).await.expect("publish");
    assert_only_expiry_of(&mut acked, Duration::from_secs(2), "o1").await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_malformed_payload_goes_to_the_dead_letter_stream_and_the_next_events_flow() {
    let (bus, shutdown) = fresh_bus().await;
    let mut options = ListenerOptions::new("orders-service");
    options.concurrency = 1;
    let (mut acked, calls) = listen_acking(&bus, options, &shutdown, |_, _| Ok(Outcome::Ack)).await;
    publish_expiry_bytes(&bus, "poison-1", b"{not json").await;
    publish_expiry_bytes(&bus, "poison-2", b"{\"order\":1}").await;
    bus.publish(&expiration("after")).await.expect("publish");
    assert_only_expiry_of(&mut acked, Duration::from_secs(2), "after").await;
    // The poison messages never reached the handler and were not redelivered after the ack wait.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let letters = bus.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].payload, "{not json");
    assert_eq!(letters[1].payload, "{\"order\":1}");
    for letter in &letters {
        assert_eq!(letter.subject, "expiration:complete");
        assert_eq!(letter.consumer, "orders-service_expiration-complete");
        assert!(letter.reason.starts_with("malformed payload"), "{letter:?}");
    }
    assert_eq!(
        bus.dead_letter_count("orders-service")
            .await
            .map_err(|e| format!("{e:#}")),
        Ok(2)
    );
    assert_eq!(
        bus.dead_letter_count("payments-service")
            .await
            .map_err(|e| format!("{e:#}")),
        Ok(0)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_with_its_reason_and_a_replay_delivers_it_again() {
    let (bus, shutdown) = fresh_bus().await;
    // A handler that refuses orders named "bad" until it is "fixed".
    let fixed = Arc::new(AtomicUsize::new(0));
    let is_fixed = fixed.clone();
    let options = ListenerOptions::new("orders-service");
    let (mut rx, _) = listen_acking(&bus, options, &shutdown, move |event, _| {
        if event.order_id == named_id("bad") && is_fixed.load(Ordering::SeqCst) == 0 {
            return Ok(Outcome::Poison("names no order"));
        }
        Ok(Outcome::Ack)
    })
    .await;
    bus.publish(&expiration("bad")).await.expect("publish");
    bus.publish(&expiration("good")).await.expect("publish");
    assert_only_expiry_of(&mut rx, Duration::from_millis(700), "good").await;
    let letters = bus.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, "names no order");

    fixed.store(1, Ordering::SeqCst);
    let replayed = bus
        .replay_dead_letter(letters[0].sequence)
        .await
        .expect("replayed");
    assert_eq!(
        replayed.payload,
        serde_json::to_string(&expiration("bad")).expect("json")
    );
    assert_only_expiry_of(&mut rx, Duration::from_millis(700), "bad").await;
    assert_eq!(bus.dead_letters().await.expect("dead letters"), Vec::new());
    shutdown.cancel();
}

#[tokio::test]
async fn a_handler_that_fails_for_longer_than_fifty_deliveries_is_not_given_up() {
    let (bus, shutdown) = fresh_bus().await;
    let mut options = ListenerOptions::new("orders-service");
    // A database outage, compressed: backoff capped at 10 ms, 60 failures in a row.
    options.max_backoff = Duration::from_millis(10);
    let (mut rx, calls) = listen_acking(&bus, options, &shutdown, |_, delivery| {
        if delivery.attempt <= 60 {
            anyhow::bail!("database unavailable");
        }
        Ok(Outcome::Ack)
    })
    .await;
    bus.publish(&expiration("patient")).await.expect("publish");

    let delivered = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
    assert_eq!(delivered.ok().flatten(), Some(expiration("patient")));
    assert!(calls.load(Ordering::SeqCst) > 60);
    assert_eq!(bus.dead_letters().await.expect("dead letters"), Vec::new());
    shutdown.cancel();
}

#[tokio::test]
async fn a_handler_running_past_the_ack_wait_is_not_redelivered_meanwhile() {
    let (bus, shutdown) = fresh_bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut options = ListenerOptions::new("orders-service");
    options.ack_wait = Duration::from_millis(600);
    listen::<ExpirationComplete, _, _>(&bus, options, shutdown.clone(), move |_, _| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            // Three ack waits: without progress acks the broker would redeliver it twice.
            tokio::time::sleep(Duration::from_millis(1800)).await;
            Ok(Outcome::Ack)
        }
    })
    .await
    .expect("listener");
    bus.publish(&expiration("slow")).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_restarted_listener_resumes_where_its_durable_left_off() {
    let (bus, first) = fresh_bus().await;
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &first).await;
    bus.publish(&expiration("before")).await.expect("publish");
    assert_only_expiry_of(&mut seen, Duration::from_millis(700), "before").await;
    first.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;

    bus.publish(&expiration("while-down"))
        .await
        .expect("publish");
    let second = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "orders-service", &second).await;
    assert_only_expiry_of(&mut seen, Duration::from_millis(1500), "while-down").await;
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
        Bytes::from(serde_json::to_vec(&expiration("before-the-upgrade")).expect("json")),
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
        order_id: named_id("o1"),
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
    assert_only_expiry_of(&mut expirations, quiet, "before-the-upgrade").await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_consumer_made_by_an_older_release_stops_giving_messages_up() {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use common::bus::durable_name;

    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let client = async_nats::connect(settings.url.as_str())
        .await
        .expect("NATS");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&settings.stream).await.expect("the stream");
    let durable = durable_name("orders-service", "expiration:complete");
    // As the previous release created it: messages given up after 50 deliveries.
    stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: format!("{}expiration:complete", settings.subject_prefix),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            max_deliver: 50,
            ..Default::default()
        })
        .await
        .expect("the old consumer");

    let shutdown = CancellationToken::new();
    let _seen = observe::<ExpirationComplete>(&bus, "orders-service", &shutdown).await;

    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&durable).await.expect("the consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.config.max_deliver, -1);
    shutdown.cancel();
}

#[tokio::test]
async fn each_outcome_of_a_delivery_is_counted_under_its_consumer_and_subject() {
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    // Recorded from the first delivery on.
    let handle = common::metrics::install(None);
    // A queue group of its own, so that other tests' deliveries are not counted with these.
    let group = format!("metrics-{}", common::testing::unique_suffix());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut options = ListenerOptions::new(group.clone());
    options.concurrency = 1;
    listen::<ExpirationComplete, _, _>(&bus, options, shutdown.clone(), move |event, delivery| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(delivery.attempt);
            if event == expiration("poison") {
                return Ok(Outcome::Poison("names nothing"));
            }
            match delivery.attempt {
                1 => Ok(Outcome::Retry(Duration::from_millis(50))),
                2 => anyhow::bail!("database hiccup"),
                _ => Ok(Outcome::Ack),
            }
        }
    })
    .await
    .expect("listener");
    publish_expiry_bytes(&bus, "malformed-1", b"{not json").await;
    bus.publish(&expiration("poison")).await.expect("publish");
    bus.publish(&expiration("o1")).await.expect("publish");
    // Poison once, then o1 three times (retry, error, ack).
    assert_eq!(drain(&mut rx, Duration::from_secs(2)).await.len(), 4);
    shutdown.cancel();

    let text = handle.render();
    let consumer = format!(r#"consumer="{group}_expiration-complete""#);
    for outcome in ["ack", "retry", "error", "poison", "malformed"] {
        let outcome_label = format!(r#"outcome="{outcome}""#);
        let line = text.lines().find(|line| {
            line.starts_with("events_handled_total{")
                && line.contains(&consumer)
                && line.contains(r#"subject="expiration:complete""#)
                && line.contains(&outcome_label)
        });
        assert_eq!(
            line.and_then(|line| line.rsplit(' ').next()),
            Some("1"),
            "{outcome}:\n{text}"
        );
    }
    assert!(
        text.contains(r#"event_lag_seconds_count{subject="expiration:complete"}"#),
        "{text}"
    );
    // The handler's time, by outcome (a malformed payload never reaches the handler).
    for outcome in ["ack", "retry", "error", "poison"] {
        let series = format!(
            r#"event_handling_seconds_count{{subject="expiration:complete",outcome="{outcome}"}}"#
        );
        assert!(text.contains(&series), "{series}:\n{text}");
    }
}
