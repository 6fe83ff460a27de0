//! Durable pull consumers: one per (queue group, subject), explicit acks, nak-with-delay when a
//! handler says "not yet", bounded redeliveries, poison messages terminated.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::EventBus;
use crate::events::Event;

/// What a handler decided about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (applied, or already applied before): acknowledge.
    Ack,
    /// A precondition is not met yet (e.g. an earlier version has not arrived): redeliver later.
    Retry(Duration),
}

/// Where a delivery stands, for handlers that care (most do not).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// 1 on the first delivery.
    pub attempt: i64,
}

#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// The queue group of the original (`orders-service`, ...). The durable name derives from it.
    pub queue_group: String,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// After this many deliveries a message is given up (logged as an error).
    pub max_deliver: i64,
    /// How many messages of one consumer are handled at once.
    pub concurrency: usize,
}

impl ListenerOptions {
    pub fn new(queue_group: impl Into<String>) -> Self {
        Self {
            queue_group: queue_group.into(),
            ack_wait: Duration::from_secs(5),
            max_deliver: 50,
            concurrency: 16,
        }
    }
}

/// The durable consumer name of a queue group for a subject, e.g. `orders-service_ticket-created`.
pub fn durable_name(queue_group: &str, subject: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
    };
    format!("{}_{}", clean(queue_group), clean(subject))
}

/// Starts consuming `E` with `handler` until `shutdown` is cancelled; in-flight handlers finish
/// before the returned task ends. The consumer is created (or reused) before this returns.
pub async fn listen<E, H, Fut>(
    bus: &EventBus,
    options: ListenerOptions,
    shutdown: CancellationToken,
    handler: H,
) -> anyhow::Result<JoinHandle<()>>
where
    E: Event,
    H: Fn(E, Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Outcome>> + Send + 'static,
{
    let subject = bus.subject(E::SUBJECT);
    let durable = durable_name(&options.queue_group, E::SUBJECT.as_str());
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: subject.clone(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
        ..Default::default()
    };
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .with_context(|| format!("looking up stream {}", bus.stream_name()))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&durable, config)
        .await
        .with_context(|| format!("creating consumer {durable}"))?;

    let task = tokio::spawn(async move {
        loop {
            let messages = match consumer.messages().await {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(consumer = %durable, error = %err, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            messages
                .take_until(shutdown.clone().cancelled_owned())
                .for_each_concurrent(options.concurrency, |message| {
                    let handler = handler.clone();
                    let durable = durable.clone();
                    let max_deliver = options.max_deliver;
                    async move {
                        match message {
                            Ok(message) => {
                                handle_one(message, &durable, max_deliver, handler).await
                            }
                            Err(err) => {
                                tracing::warn!(consumer = %durable, error = %err, "pull error")
                            }
                        }
                    }
                })
                .await;
            if shutdown.is_cancelled() {
                return;
            }
            tracing::warn!(consumer = %durable, "message stream ended; resubscribing");
        }
    });
    Ok(task)
}

async fn handle_one<E, H, Fut>(
    message: async_nats::jetstream::Message,
    durable: &str,
    max_deliver: i64,
    handler: H,
) where
    E: Event,
    H: Fn(E, Delivery) -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let attempt = message.info().map(|info| info.delivered).unwrap_or(1);
    let span = tracing::info_span!("event", subject = %E::SUBJECT, consumer = %durable, attempt);

    let event: E = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(err) => {
            // A payload that cannot be parsed will never succeed: stop its redelivery now.
            tracing::error!(parent: &span, error = %err, payload = %String::from_utf8_lossy(&message.payload),
                "malformed event terminated");
            ack(&message, AckKind::Term, durable).await;
            return;
        }
    };
    let last_attempt = attempt >= max_deliver;
    let kind = match handler(event, Delivery { attempt })
        .instrument(span.clone())
        .await
    {
        Ok(Outcome::Ack) => AckKind::Ack,
        Ok(Outcome::Retry(delay)) => {
            if last_attempt {
                tracing::error!(parent: &span, "event still not applicable after {attempt} deliveries; giving up");
                AckKind::Term
            } else {
                tracing::debug!(parent: &span, ?delay, "event not applicable yet; will retry");
                AckKind::Nak(Some(delay))
            }
        }
        Err(err) => {
            if last_attempt {
                tracing::error!(parent: &span, error = %format!("{err:#}"), "event handler failed {attempt} times; giving up");
                AckKind::Term
            } else {
                tracing::warn!(parent: &span, error = %format!("{err:#}"), "event handler failed; will retry");
                AckKind::Nak(Some(backoff(attempt)))
            }
        }
    };
    ack(&message, kind, durable).await;
}

/// 100 ms, 200 ms, 400 ms, ... capped at 5 s.
fn backoff(attempt: i64) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 16) - 1).unwrap_or(0);
    Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(Duration::from_secs(5))
}

async fn ack(message: &async_nats::jetstream::Message, kind: AckKind, durable: &str) {
    if let Err(err) = message.ack_with(kind).await {
        // The broker will redeliver after the ack wait; handlers are idempotent.
        tracing::warn!(consumer = %durable, error = %err, "could not acknowledge message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_are_valid_nats_names() {
        assert_eq!(
            durable_name("orders-service", "ticket:updated"),
            "orders-service_ticket-updated"
        );
        assert_eq!(durable_name("x.y", "a b>*"), "x-y_a-b--");
    }

    #[test]
    fn retry_backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(40), Duration::from_secs(5));
    }
}
