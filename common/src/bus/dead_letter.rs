//! The dead-letter stream: where a message goes that can never be applied (a payload that does not
//! parse, an id that names nothing). Transient failures never end here: they are retried forever
//! (CONSISTENCY.md pattern 8). Each dead letter keeps the original subject, payload, consumer and
//! reason, and can be replayed after a fix (`cargo run -p common --bin dead-letters`).

use std::collections::HashMap;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::Serialize;

use super::{DUPLICATE_WINDOW, EventBus, PUBLISH_ACK_TIMEOUT};
use crate::events::Subject;
use crate::telemetry::TraceContext;

/// Headers of a dead letter.
pub const SUBJECT_HEADER: &str = "Ticketing-Subject";
pub const CONSUMER_HEADER: &str = "Ticketing-Consumer";
pub const REASON_HEADER: &str = "Ticketing-Reason";
pub const SEQUENCE_HEADER: &str = "Ticketing-Stream-Sequence";

/// A message that left its consumer for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `replay` takes).
    pub sequence: u64,
    /// The event subject it was published on (without the bus prefix), e.g. `order:created`.
    pub subject: String,
    /// The durable consumer that gave it up, e.g. `orders-service_ticket-updated`.
    pub consumer: String,
    pub reason: String,
    /// The original payload, as text (events are JSON).
    pub payload: String,
    /// Its sequence in the event stream.
    pub original_sequence: u64,
}

impl EventBus {
    /// The dead-letter stream of this bus's event stream.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_dead_letters", self.stream)
    }

    fn dead_letter_subject(&self, consumer: &str) -> String {
        format!("{}dead-letters.{consumer}", self.prefix)
    }

    pub(super) async fn ensure_dead_letter_stream(&self, replicas: usize) -> anyhow::Result<()> {
        self.get_or_create_stream(stream::Config {
            name: self.dead_letter_stream(),
            subjects: vec![format!("{}dead-letters.>", self.prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Stores a message its consumer gave up, and waits until the broker has it. Stored once per
    /// (consumer, original sequence), however often this is called.
    pub async fn dead_letter(
        &self,
        consumer: &str,
        subject: &str,
        original_sequence: u64,
        payload: Bytes,
        reason: &str,
    ) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(SUBJECT_HEADER, subject);
        headers.insert(CONSUMER_HEADER, consumer);
        headers.insert(REASON_HEADER, header_safe(reason).as_str());
        headers.insert(SEQUENCE_HEADER, original_sequence.to_string().as_str());
        headers.insert(
            "Nats-Msg-Id",
            format!("dead:{consumer}:{original_sequence}").as_str(),
        );
        // The trace of the event (the listener calls this in its span), kept for the replay.
        TraceContext::current().add_to_nats(&mut headers);
        let ack = self
            .js
            .publish_with_headers(self.dead_letter_subject(consumer), headers, payload)
            .await
            .with_context(|| format!("dead-lettering a message of {consumer}"))?;
        tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack)
            .await
            .context("no ack from JetStream for a dead letter")?
            .context("JetStream refused a dead letter")?;
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let mut stream = self.dead_letters_stream().await?;
        let state = stream
            .info()
            .await
            .context("reading the dead-letter stream")?
            .state
            .clone();
        let mut found = Vec::new();
        if state.messages == 0 {
            return Ok(found);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            // Replayed letters are deleted, leaving gaps.
            if let Ok(message) = stream.get_raw_message(sequence).await {
                found.push(read_letter(sequence, &message));
            }
        }
        Ok(found)
    }

    /// How many dead letters each consumer of `queue_group` left (for readiness and logs).
    pub async fn dead_letter_count(&self, queue_group: &str) -> anyhow::Result<u64> {
        let stream = self.dead_letters_stream().await?;
        // Wildcards match whole tokens only: take every consumer's subject and keep the group's.
        let mut info = stream
            .info_with_subjects(format!("{}dead-letters.>", self.prefix))
            .await?;
        let mine = format!("{}dead-letters.{queue_group}_", self.prefix);
        let mut total = 0;
        while let Some(entry) = futures::StreamExt::next(&mut info).await {
            let (subject, count) = entry.context("reading dead-letter subjects")?;
            if subject.starts_with(&mine) {
                total += u64::try_from(count).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Publishes a dead letter's payload again on its original subject (so its consumer, and only
    /// consumers still behind it, see it once more), then deletes the letter.
    pub async fn replay_dead_letter(&self, sequence: u64) -> anyhow::Result<DeadLetter> {
        let stream = self.dead_letters_stream().await?;
        let message = stream
            .get_raw_message(sequence)
            .await
            .with_context(|| format!("no dead letter {sequence}"))?;
        let letter = read_letter(sequence, &message);
        let subject = Subject::parse(&letter.subject).with_context(|| {
            format!(
                "dead letter {sequence} names unknown subject {}",
                letter.subject
            )
        })?;
        // Replayed in the trace the event was first published in.
        self.publish_traced(
            subject,
            &format!("replay:{}:{sequence}", self.dead_letter_stream()),
            message.payload.clone(),
            &TraceContext::from_nats(&message.headers),
        )
        .await?;
        stream
            .delete_message(sequence)
            .await
            .with_context(|| format!("deleting replayed dead letter {sequence}"))?;
        Ok(letter)
    }

    async fn dead_letters_stream(&self) -> anyhow::Result<jetstream::stream::Stream> {
        self.js
            .get_stream(self.dead_letter_stream())
            .await
            .with_context(|| format!("looking up stream {}", self.dead_letter_stream()))
    }
}

fn read_letter(sequence: u64, message: &jetstream::message::StreamMessage) -> DeadLetter {
    let header = |name: &str| -> String {
        message
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    DeadLetter {
        sequence,
        subject: header(SUBJECT_HEADER),
        consumer: header(CONSUMER_HEADER),
        reason: header(REASON_HEADER),
        payload: String::from_utf8_lossy(&message.payload).into_owned(),
        original_sequence: header(SEQUENCE_HEADER).parse().unwrap_or(0),
    }
}

/// Header values are one line of visible text.
fn header_safe(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line.chars().take(1000).collect()
}

/// Dead letters per consumer, for a summary.
pub fn count_by_consumer(letters: &[DeadLetter]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for letter in letters {
        *counts.entry(letter.consumer.as_str()).or_insert(0) += 1;
    }
    counts
}
