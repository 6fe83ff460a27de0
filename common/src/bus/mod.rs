//! The event bus on NATS JetStream: one Limits-retention stream holding every subject, a
//! publisher that waits for the broker's ack and sets `Nats-Msg-Id`, and durable pull listeners.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;

use crate::events::{Event, Subject};
use crate::settings::NatsSettings;
use crate::telemetry::TraceContext;

mod backlog;
mod dead_letter;
mod follow;
mod listener;

pub use dead_letter::{DeadLetter, count_by_consumer};
pub use follow::Followed;
pub use listener::{Delivery, ListenerOptions, Outcome, durable_name, listen};

/// How long JetStream remembers message ids to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the broker has to confirm a publish.
pub(crate) const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    prefix: String,
    /// How many times the connection was lost so far (see [`Self::disconnections`]).
    disconnections: tokio::sync::watch::Receiver<u64>,
    /// `EVENT_HANDLERS_PER_SUBJECT`: events of one subject a listener handles at once.
    handlers_per_subject: usize,
}

impl EventBus {
    /// Connects and makes sure the stream exists (every service may create it; the config is the same).
    pub async fn connect(settings: &NatsSettings, client_name: &str) -> anyhow::Result<Self> {
        let (lost, disconnections) = tokio::sync::watch::channel(0_u64);
        let client = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    lost.send_modify(|count| *count += 1);
                }
                async {}
            })
            .connect(settings.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", settings.url))?;
        let js = jetstream::new(client.clone());
        let bus = Self {
            client,
            js,
            stream: settings.stream.clone(),
            prefix: settings.subject_prefix.clone(),
            disconnections,
            handlers_per_subject: settings.handlers_per_subject,
        };
        bus.ensure_stream(settings.stream_replicas).await?;
        bus.ensure_dead_letter_stream(settings.stream_replicas)
            .await?;
        Ok(bus)
    }

    async fn ensure_stream(&self, replicas: usize) -> anyhow::Result<()> {
        let subjects: Vec<String> = Subject::ALL.iter().map(|s| self.subject(*s)).collect();
        self.get_or_create_stream(stream::Config {
            name: self.stream.clone(),
            subjects,
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Gets a stream, creating it if it does not exist. Services starting together all try to
    /// create it; whoever loses that race (the server then answers "already in use" or "subjects
    /// overlap") finds it made by another. An existing stream is brought up to `config` where an
    /// older release or setting left it short, keeping its messages: subjects added since
    /// (`payment:updated`; publishing those would find no stream) and more replicas (after
    /// NATS_STREAM_REPLICAS was raised; never fewer, which would drop copies).
    pub(crate) async fn get_or_create_stream(
        &self,
        config: stream::Config,
    ) -> anyhow::Result<jetstream::stream::Stream> {
        let name = config.name.clone();
        let mut stream = match self.js.get_or_create_stream(config.clone()).await {
            Ok(stream) => stream,
            Err(create) => self
                .js
                .get_stream(&name)
                .await
                .map_err(|_| create)
                .with_context(|| format!("creating JetStream stream {name}"))?,
        };
        let mut existing = stream
            .info()
            .await
            .with_context(|| format!("reading JetStream stream {name}"))?
            .config
            .clone();
        let missing: Vec<String> = config
            .subjects
            .into_iter()
            .filter(|s| !existing.subjects.contains(s))
            .collect();
        let raise = existing.num_replicas < config.num_replicas;
        if missing.is_empty() && !raise {
            return Ok(stream);
        }
        tracing::info!(stream = %name, ?missing, from = existing.num_replicas, to = config.num_replicas.max(existing.num_replicas), "bringing the stream up to date");
        existing.subjects.extend(missing);
        existing.num_replicas = existing.num_replicas.max(config.num_replicas);
        self.js
            .update_stream(existing)
            .await
            .with_context(|| format!("updating JetStream stream {name}"))?;
        Ok(stream)
    }

    /// The NATS subject of an event subject (with the configured prefix).
    pub fn subject(&self, subject: Subject) -> String {
        format!("{}{}", self.prefix, subject.as_str())
    }

    /// How many events of one subject a listener of this bus handles at once
    /// (`EVENT_HANDLERS_PER_SUBJECT`).
    pub fn handlers_per_subject(&self) -> usize {
        self.handlers_per_subject
    }

    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A count of the connection's losses that changes on each: a follower of the bus that keeps
    /// state from what it saw (a read model) stops trusting that state when it changes, since an
    /// ordered consumer can take several seconds to notice that the server lost it.
    pub fn disconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.disconnections.clone()
    }

    /// Whether the connection to the server is up (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Publishes an event and waits until the broker has stored it.
    pub async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(event).context("serialising event")?;
        self.publish_raw(E::SUBJECT, &event.message_id(), Bytes::from(payload))
            .await
    }

    /// Publishes an already serialised event, in the trace of the current span. A repeated
    /// `msg_id` inside the duplicate window is stored once.
    pub async fn publish_raw(
        &self,
        subject: Subject,
        msg_id: &str,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        self.publish_traced(subject, msg_id, payload, &TraceContext::current())
            .await
    }

    /// [`Self::publish_raw`] in the trace `trace` (the one its event was written in, for the
    /// outbox), carried in the message's `traceparent` and `tracestate` headers.
    pub async fn publish_traced(
        &self,
        subject: Subject,
        msg_id: &str,
        payload: Bytes,
        trace: &TraceContext,
    ) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        trace.add_to_nats(&mut headers);
        let ack = self
            .js
            .send_publish(
                self.subject(subject),
                PublishMessage::build()
                    .headers(headers)
                    .payload(payload)
                    .message_id(msg_id),
            )
            .await
            .with_context(|| format!("publishing {subject} ({msg_id})"))?;
        tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack)
            .await
            .with_context(|| format!("no ack from JetStream for {msg_id}"))?
            .with_context(|| format!("JetStream refused {msg_id}"))?;
        Ok(())
    }
}
