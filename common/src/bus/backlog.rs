//! What a consumer has not handled yet. A handler that must not overtake an event published
//! before its own (an order's expiry must not overtake the payment that paid it in time, even
//! when the two reach the service on separate consumers and a stalled database lets them race)
//! asks whether such an event is still waiting: everything up to the consumer's ack floor is
//! handled, so only the few messages of the subject between the floor and its own position are
//! read.

use anyhow::Context as _;
use async_nats::jetstream::stream::RawMessageErrorKind;

use super::{EventBus, durable_name};
use crate::events::Event;

/// The most messages one question reads; a longer backlog counts as "may be waiting".
const SCAN_LIMIT: usize = 512;

impl EventBus {
    /// Whether an `E` event that `matches`, published before stream sequence `before` (or at any
    /// time, with `None`), may not have been handled yet by `queue_group`'s consumer of `E`.
    /// Conservative: a backlog longer than it reads counts as "yes"; an unreadable payload (it goes
    /// to the dead-letter stream) as "no".
    pub async fn has_unhandled<E: Event>(
        &self,
        queue_group: &str,
        before: Option<u64>,
        matches: impl Fn(&E) -> bool,
    ) -> anyhow::Result<bool> {
        let durable = durable_name(queue_group, E::SUBJECT.as_str());
        let stream = self
            .jetstream()
            .get_stream_no_info(self.stream_name())
            .await
            .with_context(|| format!("looking up stream {}", self.stream_name()))?;
        let consumer = stream
            .consumer_info(&durable)
            .await
            .with_context(|| format!("reading consumer {durable}"))?;
        let subject = self.subject(E::SUBJECT);
        let is_past = |sequence: u64| before.is_some_and(|before| sequence >= before);
        let mut next = consumer.ack_floor.stream_sequence + 1;
        for _ in 0..SCAN_LIMIT {
            if is_past(next) {
                return Ok(false);
            }
            let message = match stream
                .get_first_raw_message_by_subject(&subject, next)
                .await
            {
                Ok(message) => message,
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(false),
                Err(err) => {
                    return Err(err).with_context(|| format!("reading {subject} from {next}"));
                }
            };
            if is_past(message.sequence) {
                return Ok(false);
            }
            if serde_json::from_slice::<E>(&message.payload).is_ok_and(|event| matches(&event)) {
                return Ok(true);
            }
            next = message.sequence + 1;
        }
        tracing::warn!(consumer = %durable, from = consumer.ack_floor.stream_sequence, "a long backlog of unhandled events; assuming one may match");
        Ok(true)
    }
}
