//! Durable pull consumers: one per (queue group, subject), explicit acks, nak-with-delay when a
//! handler says "not yet" or fails, redelivered for as long as it takes (a database or broker
//! outage of minutes loses nothing), progress acks while a handler runs long, and only a payload
//! that can never be applied moved to the dead-letter stream (CONSISTENCY.md pattern 8).

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
    /// The event can never be applied (an id that names nothing, a value out of range): it goes to
    /// the dead-letter stream with this reason, and the consumer moves on.
    Poison(&'static str),
}

/// Where a delivery stands, for handlers that care (most do not).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// 1 on the first delivery.
    pub attempt: i64,
    /// The message's position in the stream (see [`EventBus::has_unhandled`]); `u64::MAX` if the
    /// broker did not say (stream sequences start at 1), which orders it after everything.
    pub sequence: u64,
}

#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// The queue group of the original (`orders-service`, ...). The durable name derives from it.
    pub queue_group: String,
    /// How long the broker waits for an ack before redelivering. A handler still running after
    /// half of it tells the broker so (a progress ack), so only a crashed one is redelivered.
    pub ack_wait: Duration,
    /// The longest wait before a failed or not-yet-applicable message is delivered again; it is
    /// never given up (backoff 100 ms, 200 ms, ... up to this).
    pub max_backoff: Duration,
    /// How many messages of one consumer are handled at once.
    pub concurrency: usize,
}

impl ListenerOptions {
    pub fn new(queue_group: impl Into<String>) -> Self {
        Self {
            queue_group: queue_group.into(),
            ack_wait: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
            concurrency: crate::settings::DEFAULT_HANDLERS_PER_SUBJECT,
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
        // Never give up a message: only the handler decides that one is poison.
        max_deliver: -1,
        ..Default::default()
    };
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .with_context(|| format!("looking up stream {}", bus.stream_name()))?;
    // Create, or update a consumer an older release made (it gave messages up after 50 deliveries).
    let consumer: async_nats::jetstream::consumer::PullConsumer = match stream
        .create_consumer(config.clone())
        .await
    {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::warn!(consumer = %durable, error = %err, "cannot create or update the consumer; using it as it is");
            stream
                .get_or_create_consumer(&durable, config)
                .await
                .with_context(|| format!("creating consumer {durable}"))?
        }
    };

    let bus = bus.clone();
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
                    let bus = bus.clone();
                    let options = options.clone();
                    async move {
                        match message {
                            Ok(message) => {
                                handle_one(message, &bus, &durable, &options, handler).await
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
    bus: &EventBus,
    durable: &str,
    options: &ListenerOptions,
    handler: H,
) where
    E: Event,
    H: Fn(E, Delivery) -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let (attempt, sequence, published_ns) = message
        .info()
        .map(|info| {
            (
                info.delivered,
                info.stream_sequence,
                Some(info.published.unix_timestamp_nanos()),
            )
        })
        .unwrap_or((1, 0, None));
    if let Some(published_ns) = published_ns {
        record_lag(E::SUBJECT.as_str(), published_ns);
    }
    let span = tracing::info_span!("event", subject = %E::SUBJECT, consumer = %durable, attempt);
    // The handler continues the trace of whoever published the event.
    crate::telemetry::continue_from_nats(&span, message.headers.as_ref());

    let event: E = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(err) => {
            // A payload that cannot be parsed will never succeed: it leaves the consumer.
            let reason = format!("malformed payload: {err}");
            let kind = dead_letter(
                bus,
                &message,
                E::SUBJECT.as_str(),
                durable,
                sequence,
                &reason,
                &span,
            )
            .await;
            record_handled(durable, E::SUBJECT.as_str(), "malformed");
            ack(&message, kind, durable).await;
            return;
        }
    };
    let started = std::time::Instant::now();
    let outcome = {
        // Tells the broker the handler is still at work, so a slow one is not redelivered to a
        // second worker while it runs.
        let mut progress = tokio::time::interval(options.ack_wait / 2);
        progress.tick().await;
        let handled = handler(
            event,
            Delivery {
                attempt,
                sequence: if sequence == 0 { u64::MAX } else { sequence },
            },
        )
        .instrument(span.clone());
        tokio::pin!(handled);
        loop {
            tokio::select! {
                outcome = &mut handled => break outcome,
                _ = progress.tick() => ack(&message, AckKind::Progress, durable).await,
            }
        }
    };
    let label = match &outcome {
        Ok(Outcome::Ack) => "ack",
        Ok(Outcome::Retry(_)) => "retry",
        Ok(Outcome::Poison(_)) => "poison",
        Err(_) => "error",
    };
    record_handled(durable, E::SUBJECT.as_str(), label);
    record_handling(E::SUBJECT.as_str(), label, started.elapsed());
    let kind = match outcome {
        Ok(Outcome::Ack) => AckKind::Ack,
        Ok(Outcome::Retry(delay)) => {
            tracing::debug!(parent: &span, ?delay, "event not applicable yet; will retry");
            AckKind::Nak(Some(delay.min(options.max_backoff)))
        }
        Ok(Outcome::Poison(reason)) => {
            dead_letter(
                bus,
                &message,
                E::SUBJECT.as_str(),
                durable,
                sequence,
                reason,
                &span,
            )
            .await
        }
        Err(err) => {
            let delay = backoff(attempt, options.max_backoff);
            // Every failure is logged; an outage of minutes logs about once per max backoff.
            tracing::warn!(parent: &span, error = %format!("{err:#}"), ?delay, "event handler failed; will retry");
            AckKind::Nak(Some(delay))
        }
    };
    ack(&message, kind, durable).await;
}

/// `events_handled_total{consumer,subject,outcome}`: what became of each delivery (`ack`, `retry`,
/// `poison`, `error`, `malformed`).
fn record_handled(consumer: &str, subject: &'static str, outcome: &'static str) {
    metrics::counter!(
        "events_handled_total",
        "consumer" => consumer.to_owned(),
        "subject" => subject,
        "outcome" => outcome
    )
    .increment(1);
}

/// `event_handling_seconds{subject,outcome}`: how long the handler took, from its start to its
/// outcome (what a delivery's lag adds to once it is picked up; the ack is not included).
fn record_handling(subject: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!("event_handling_seconds", "subject" => subject, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// `event_lag_seconds{subject}`: how long after the broker stored it a delivery arrives (clock
/// skew between broker and service cannot make it negative).
fn record_lag(subject: &'static str, published_ns: i128) {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
        });
    let lag_ns = now_ns.saturating_sub(published_ns).max(0);
    // Precision lost beyond 2^53 ns (about 104 days) does not matter for a lag.
    let lag = lag_ns as f64 / 1e9;
    metrics::histogram!("event_lag_seconds", "subject" => subject).record(lag);
}

/// Moves a message to the dead-letter stream; `Term` once it is there, or a retry if the
/// dead-letter stream cannot take it now (nothing is dropped unrecorded).
async fn dead_letter(
    bus: &EventBus,
    message: &async_nats::jetstream::Message,
    subject: &str,
    durable: &str,
    sequence: u64,
    reason: &str,
    span: &tracing::Span,
) -> AckKind {
    // In the event's trace, so that a dead letter leads back to the request that made it.
    match bus
        .dead_letter(durable, subject, sequence, message.payload.clone(), reason)
        .instrument(span.clone())
        .await
    {
        Ok(()) => {
            tracing::error!(parent: span, %reason, payload = %String::from_utf8_lossy(&message.payload),
                "event moved to the dead-letter stream");
            AckKind::Term
        }
        Err(err) => {
            tracing::warn!(parent: span, error = %format!("{err:#}"), "cannot dead-letter an event now; will retry");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    }
}

/// 100 ms, 200 ms, 400 ms, ... capped at `max`.
fn backoff(attempt: i64, max: Duration) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 20) - 1).unwrap_or(0);
    Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(max)
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
        let cap = Duration::from_secs(10);
        assert_eq!(backoff(1, cap), Duration::from_millis(100));
        assert_eq!(backoff(3, cap), Duration::from_millis(400));
        assert_eq!(backoff(40, cap), cap);
        assert_eq!(backoff(i64::MAX, cap), cap);
    }
}
