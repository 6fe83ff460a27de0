//! Following a subject from every replica: an ordered, ephemeral consumer per process, for read
//! models that each replica keeps in memory (unlike `listen`, where a queue group shares the work).
//!
//! No acks: the client tracks stream sequences and recreates the consumer from the last one it saw
//! after a gap (a broker restart, a missed heartbeat), so a follower sees every message published
//! after it started (and those of a replay window before), in order, at least once.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::{Stream, StreamExt};

use super::EventBus;
use crate::events::Event;

/// An event a follower received.
#[derive(Debug, Clone, PartialEq)]
pub struct Followed<E> {
    pub event: E,
    /// Published before following began: part of the replay window.
    pub replayed: bool,
}

impl EventBus {
    /// Every `E` published from `replay` ago on, in stream order. The stream ends (or yields an
    /// error) when the consumer cannot be kept going; the caller then starts over (and rebuilds its
    /// model, since it may have missed messages).
    ///
    /// The replay is for a model filled from the database after following starts: a writer
    /// publishes a change's events while it writes the record, so an event sent just before the
    /// follower started can describe a write the fill does not see yet.
    pub async fn follow<E: Event>(
        &self,
        replay: Duration,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<Followed<E>>> + Send + 'static> {
        let subject = self.subject(E::SUBJECT);
        let stream = self
            .jetstream()
            .get_stream(self.stream_name())
            .await
            .with_context(|| format!("looking up stream {}", self.stream_name()))?;
        // Read by the lookup just now: what is at or before it was published before following.
        let last_before = stream.cached_info().state.last_sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: replay_from(replay),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating an ordered consumer of {subject}"))?;
        let messages = consumer
            .messages()
            .await
            .with_context(|| format!("following {subject}"))?;
        Ok(messages.map(move |message| {
            let message = message.with_context(|| format!("following {subject}"))?;
            let event = serde_json::from_slice::<E>(&message.payload)
                .with_context(|| format!("reading a {} payload", E::SUBJECT))?;
            // A message whose position cannot be read counts as new: applied like any other.
            let replayed = message
                .info()
                .is_ok_and(|info| info.stream_sequence <= last_before);
            Ok(Followed { event, replayed })
        }))
    }
}

/// Where a follower with a replay window starts: at the first message of the window, or at the
/// next message without one.
fn replay_from(replay: Duration) -> DeliverPolicy {
    if replay.is_zero() {
        return DeliverPolicy::New;
    }
    let replay = time::Duration::try_from(replay).unwrap_or(time::Duration::MAX);
    match time::OffsetDateTime::now_utc().checked_sub(replay) {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    }
}
