//! Following a subject from every replica: an ordered, ephemeral consumer per process, for read
//! models that each replica keeps in memory (unlike `listen`, where a queue group shares the work).
//!
//! No acks: the client tracks stream sequences and recreates the consumer from the last one it saw
//! after a gap (a broker restart, a missed heartbeat), so a follower sees every message published
//! after it started, in order, at least once.

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::{Stream, StreamExt};

use super::EventBus;
use crate::events::Event;

impl EventBus {
    /// Every `E` published from now on, in stream order. The stream ends (or yields an error) when
    /// the consumer cannot be kept going; the caller then starts over (and rebuilds its model, since
    /// it may have missed messages).
    pub async fn follow<E: Event>(
        &self,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<E>> + Send + 'static> {
        let subject = self.subject(E::SUBJECT);
        let stream = self
            .jetstream()
            .get_stream(self.stream_name())
            .await
            .with_context(|| format!("looking up stream {}", self.stream_name()))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::New,
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
            serde_json::from_slice::<E>(&message.payload)
                .with_context(|| format!("reading a {} payload", E::SUBJECT))
        }))
    }
}
