//! The outbox of a [`VersionedStore`]: publishing a change's events right after its write, and the
//! relay that publishes what a writer left unpublished (it crashed, the broker was down, the
//! request was cancelled) and completes records whose write a crash cut short.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use mongodb::bson::{self, Bson, doc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::versioned::{ChangeDoc, PendingMarker, Unpublished};
use super::{
    Bounded as _, Committed, PendingEvent, StoreError, VersionedRecord, VersionedStore,
    is_duplicate_key,
};
use crate::bus::EventBus;
use crate::events::Subject;

/// How many pending markers one relay pass takes at most.
const RELAY_BATCH: i64 = 500;

/// How old a pending marker without its change must be before the relay deletes it.
const DANGLING_MARKER_AGE: Duration = Duration::from_secs(600);

/// What one pass of the outbox relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Changes published by this pass.
    pub published: usize,
    /// Unpublished changes left for a later pass: younger than the minimum age (their writer may
    /// still publish them), or not publishable now (broker unreachable).
    pub waiting: usize,
}

/// What [`VersionedStore::send`] did with a change's events.
#[derive(Debug)]
pub(super) enum Sent {
    /// The change has no events.
    NoEvents,
    /// The broker was unreachable: nothing was tried.
    Disconnected,
    /// Not every event is in the stream.
    Failed(anyhow::Error),
    /// Every event is in the stream.
    InStream,
}

/// Why publishing a change's events failed, and whether they reached the stream first.
#[derive(Debug)]
enum PublishError {
    /// Not every event is in the stream.
    NotSent(anyhow::Error),
    /// Every event is in the stream; only deleting the change's pending marker failed.
    Sent(anyhow::Error),
}

impl PublishError {
    fn cause(&self) -> &anyhow::Error {
        match self {
            PublishError::NotSent(err) | PublishError::Sent(err) => err,
        }
    }
}

impl<T: VersionedRecord> VersionedStore<T> {
    /// Publishes a change's events and deletes its pending marker: [`Self::send`], then
    /// [`Self::settle`]. For a change whose record is written already.
    pub(super) async fn publish(&self, bus: &EventBus, committed: Unpublished) -> Committed {
        let sent = self.send(bus, &committed).await;
        self.settle(committed, sent).await
    }

    /// Publishes a change's events, keeping its pending marker: the marker must outlive the
    /// record's write (see [`Self::settle`]).
    pub(super) async fn send(&self, bus: &EventBus, committed: &Unpublished) -> Sent {
        if committed.marker.is_none() {
            return Sent::NoEvents;
        }
        // While the broker is unreachable a publish would only wait for its ack timeout: answer the
        // request now and let the relay publish once the connection is back.
        if !bus.is_connected() {
            return Sent::Disconnected;
        }
        match self
            .send_events(bus, &committed.change_id, &committed.events)
            .await
        {
            Ok(()) => Sent::InStream,
            Err(err) => Sent::Failed(err),
        }
    }

    /// Ends the publishing of a change whose record is written: deletes its pending marker once its
    /// events are out. A failure is logged and left to the relay: the change is already durable, so
    /// the caller's request still succeeded.
    ///
    /// The marker goes only after the record's write: a writer that stops between publishing and
    /// writing (a crash, a cancelled request, a failed write) leaves the marker, and the relay then
    /// writes the record. Without it the record would lag its published change until the next read
    /// through the change log, and a read model filled from the records later would never see it.
    ///
    /// Says whether the events are in the stream now (the broker acknowledged them), whatever
    /// became of the marker.
    pub(super) async fn settle(&self, committed: Unpublished, sent: Sent) -> Committed {
        let marker = match (sent, committed.marker.as_deref()) {
            (Sent::NoEvents, _) | (_, None) => {
                // Nothing to announce.
                committed.published.store(true, Ordering::Release);
                return Committed { in_stream: true };
            }
            (Sent::Disconnected, _) => {
                tracing::info!(change = %committed.change_id, "event bus disconnected; leaving the change to the outbox relay");
                return Committed { in_stream: false };
            }
            (Sent::Failed(err), _) => {
                tracing::warn!(change = %committed.change_id, error = %format!("{err:#}"),
                    "publishing failed; the outbox relay will retry");
                return Committed { in_stream: false };
            }
            (Sent::InStream, Some(marker)) => marker,
        };
        match self.unmark_pending(marker).await {
            Ok(()) => {
                committed.published.store(true, Ordering::Release);
                self.record_published("writer", 1);
            }
            Err(err) => {
                tracing::warn!(change = %committed.change_id, error = %err,
                    "events published but their pending marker not deleted; the outbox relay will");
            }
        }
        Committed { in_stream: true }
    }

    /// `outbox_published_total{collection,by}`: changes whose events reached the stream, published
    /// by their `writer` right after the write or later by the `relay`.
    fn record_published(&self, by: &'static str, changes: usize) {
        metrics::counter!(
            "outbox_published_total",
            "collection" => self.raw_records.name().to_owned(),
            "by" => by
        )
        .increment(u64::try_from(changes).unwrap_or(u64::MAX));
    }

    /// Publishes the events of change `change_id` (the relay's, for a change it made sure is
    /// written), then deletes its pending `marker`.
    async fn try_publish(
        &self,
        bus: &EventBus,
        change_id: &str,
        marker: &str,
        events: &[PendingEvent],
    ) -> Result<(), PublishError> {
        self.send_events(bus, change_id, events)
            .await
            .map_err(PublishError::NotSent)?;
        self.unmark_pending(marker)
            .await
            .context("deleting the pending marker of a published change")
            .map_err(PublishError::Sent)?;
        Ok(())
    }

    /// Publishes the events of change `change_id`, in order.
    async fn send_events(
        &self,
        bus: &EventBus,
        change_id: &str,
        events: &[PendingEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            let subject = Subject::parse(&event.subject).with_context(|| {
                format!("unknown subject {} in change {change_id}", event.subject)
            })?;
            bus.publish_traced(
                subject,
                &event.msg_id,
                Bytes::from(event.payload.clone().into_bytes()),
                &event.trace,
            )
            .await?;
        }
        Ok(())
    }

    /// One pass of the outbox relay: every pending marker older than `min_age` that its change names
    /// has its change applied to its record if needed, then published; younger ones are counted as
    /// waiting, and those of writers that lost their version are deleted. Reads the markers
    /// (O(pending)), then each change by `_id`.
    pub async fn relay_once(
        &self,
        bus: &EventBus,
        min_age: Duration,
    ) -> Result<RelayPass, StoreError> {
        let now_ms = bson::DateTime::now().timestamp_millis();
        let cutoff_ms = now_ms - i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let dangling_ms = now_ms - i64::try_from(DANGLING_MARKER_AGE.as_millis()).unwrap_or(0);
        let markers: Vec<PendingMarker> = super::find_all(
            self.pending
                .find(doc! {})
                .sort(doc! { "at": 1 })
                .limit(RELAY_BATCH),
        )
        .await?;
        let mut pass = RelayPass::default();
        let taken = markers.len();
        for (done, marker) in markers.into_iter().enumerate() {
            if marker.at.timestamp_millis() > cutoff_ms {
                pass.waiting += 1;
                continue;
            }
            let Some(change) = self
                .changes
                .find_one(doc! { "_id": marker.change_id() })
                .bounded()
                .await?
            else {
                // Its writer crashed between the two inserts, or lost its claim and could not tidy
                // up. Left alone for a long while first: a writer stalled between the marker and
                // the change (a paused database) may still insert the change.
                if marker.at.timestamp_millis() <= dangling_ms {
                    self.unmark_pending(&marker.id).await?;
                }
                continue;
            };
            let stale = match &marker.change {
                // Its writer lost the version to the change's, and could not tidy up.
                Some(_) => change.marker.as_deref() != Some(marker.id.as_str()),
                // An earlier release's marker: its writer published, but could not delete it.
                None => change.published,
            };
            if stale {
                self.unmark_pending(&marker.id).await?;
                continue;
            }
            if !self.materialise(&change, &marker.id).await? {
                continue;
            }
            match self
                .try_publish(bus, &change.id, &marker.id, &change.events)
                .await
            {
                Ok(()) => pass.published += 1,
                Err(err) => {
                    tracing::warn!(change = %change.id, error = %format!("{:#}", err.cause()), "relay could not publish");
                    pass.waiting += taken - done;
                    break;
                }
            }
        }
        metrics::gauge!("outbox_waiting", "collection" => self.raw_records.name().to_owned())
            .set(pass.waiting as f64);
        self.record_published("relay", pass.published);
        Ok(pass)
    }

    /// Makes sure the record reflects `change`. `false` if the change lost its claim and was dropped
    /// (with its pending `marker`).
    pub(super) async fn materialise(
        &self,
        change: &ChangeDoc,
        marker: &str,
    ) -> Result<bool, StoreError> {
        if change.version == 0 {
            if self.record_exists(&change.record_key).await? {
                return Ok(true);
            }
            return match self
                .raw_records
                .insert_one(change.state.clone())
                .bounded()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => {
                    if self.record_exists(&change.record_key).await? {
                        Ok(true)
                    } else {
                        // A unique key of the record went to someone else: this change never happened.
                        self.changes
                            .delete_one(doc! { "_id": &change.id })
                            .bounded()
                            .await?;
                        self.unmark_pending(marker).await?;
                        Ok(false)
                    }
                }
                Err(e) => Err(e.into()),
            };
        }
        self.get(change.record_key.clone()).await?;
        Ok(true)
    }

    async fn record_exists(&self, key: &Bson) -> Result<bool, StoreError> {
        super::has_id(&self.raw_records, key.clone()).await
    }

    /// Runs the outbox relay until `shutdown`.
    ///
    /// A pass reads the pending markers (O(pending)). It runs every `interval` while this process
    /// may have left a change behind (at start, and after a change that was not published, until a
    /// pass finds nothing waiting), and otherwise every `sweep`, for what other replicas that
    /// crashed left behind.
    pub fn spawn_relay(
        &self,
        bus: EventBus,
        shutdown: CancellationToken,
        timing: RelayTiming,
    ) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut since_sweep = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Those are this process's writes: finish them rather than leave them to
                        // the relay of the next start.
                        store.settled().await;
                        return;
                    }
                    _ = tokio::time::sleep(timing.interval) => {}
                }
                since_sweep += timing.interval;
                // Cleared before the pass, so a change left unpublished during it wakes the next one.
                let wanted = store.relay_wanted.swap(false, Ordering::AcqRel);
                if !wanted && since_sweep < timing.sweep {
                    continue;
                }
                since_sweep = Duration::ZERO;
                match store.relay_once(&bus, timing.min_age).await {
                    Ok(pass) => {
                        if pass.published > 0 {
                            tracing::info!(
                                count = pass.published,
                                "outbox relay published pending events"
                            );
                        }
                        if pass.waiting > 0 {
                            store.relay_wanted.store(true, Ordering::Release);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox relay pass failed");
                        store.relay_wanted.store(true, Ordering::Release);
                    }
                }
            }
        })
    }
}

/// How often the outbox relay runs ([`VersionedStore::spawn_relay`]).
#[derive(Debug, Clone, Copy)]
pub struct RelayTiming {
    /// Between passes while this process may have left a change unpublished.
    pub interval: Duration,
    /// Between passes otherwise (changes left by other replicas).
    pub sweep: Duration,
    /// How old an unpublished change must be before the relay publishes it (younger ones may still
    /// be published by their writer).
    pub min_age: Duration,
}

impl RelayTiming {
    /// Every second while needed, every 30 s otherwise, for changes older than 3 s.
    pub const DEFAULT: Self = Self {
        interval: Duration::from_secs(1),
        sweep: Duration::from_secs(30),
        min_age: Duration::from_secs(3),
    };
}
