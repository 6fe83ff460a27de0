//! Records whose every version is claimed by an insert, with the events of each change stored in the
//! same write (patterns 3 and 4 of `shared/CONSISTENCY.md`).
//!
//! A change to a record at version `v` is first written as a *change document* with
//! `_id = "<record id>:<v+1>"`, holding the full new state and the events to publish. Only one
//! writer can insert that id, so versions cannot fork even where conditional updates are not atomic
//! (FerretDB). The record itself is then brought to the new state while the change's events are
//! published (the insert decided the version). Anyone who finds a change newer than the record
//! applies it (read repair), and a relay publishes change events left unpublished, so a crash
//! between any two steps loses nothing. Publishing and the relay are in `outbox.rs`.
//!
//! A change with events is announced first by a *pending marker* in `<name>_pending`, deleted once
//! its events are published: the relay reads the markers, not the ever-growing changes (FerretDB
//! filters anything but `_id` alone by decoding every document). Each writer marks with an id of
//! its own, which the change it wins names: a marker that its change does not name belongs to a
//! writer that lost the version, so the relay drops it without publishing, and no write is needed
//! to say that a change's events are out besides deleting its marker.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{Collection, Database};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::group_commit::{DeletesById, Group, Inserts, WriteFailure};
use super::outbox::Sent;
use super::{Bounded as _, IndexKind, is_duplicate_key};
use crate::bus::EventBus;
use crate::events::Event;
use crate::telemetry::TraceContext;

/// How many times a read-decide-commit cycle is retried when another writer wins the version.
const MAX_COMMIT_ATTEMPTS: usize = 20;

/// A document kept by [`VersionedStore`].
pub trait VersionedRecord:
    Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static
{
    /// The stored `_id` value.
    fn key(&self) -> Bson;
    /// The `_id` as text (change ids are `<id>:<version>`).
    fn record_id(&self) -> String;
    fn version(&self) -> i64;

    /// Whether no change can ever follow this state (a paid order): its writer then need not look
    /// for a later version's writer after writing it, and a reader holding it needs no lookup.
    fn is_final(&self) -> bool {
        false
    }
}

/// Implements [`VersionedRecord`] for a record whose `_id` is an `ObjectId` field and whose
/// version is a `version: i64` field: `versioned_record!(Order, id);`.
#[macro_export]
macro_rules! versioned_record {
    ($record:ty, $id:ident) => {
        impl $crate::store::VersionedRecord for $record {
            fn key(&self) -> ::mongodb::bson::Bson {
                ::mongodb::bson::Bson::ObjectId(self.$id)
            }

            fn record_id(&self) -> String {
                self.$id.to_hex()
            }

            fn version(&self) -> i64 {
                self.version
            }
        }
    };
}

/// An event waiting in a change document to be published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub subject: String,
    pub msg_id: String,
    pub payload: String,
    /// The trace the event was made in, so that it is published in it however late (by the
    /// outbox relay). Absent from events written before traces were kept, and outside any trace.
    #[serde(default, skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
}

impl PendingEvent {
    /// The event, in the trace of the current span.
    pub fn of<E: Event>(event: &E) -> Result<Self, StoreError> {
        Ok(Self {
            subject: E::SUBJECT.as_str().to_owned(),
            msg_id: event.message_id(),
            payload: serde_json::to_string(event).map_err(|e| StoreError::Other(e.into()))?,
            trace: TraceContext::current(),
        })
    }
}

/// What a read-decide-commit step wants.
pub enum Decision<T> {
    /// Nothing to change.
    Unchanged,
    /// Write `next` (whose version must be the current one + 1) and publish `events`.
    Commit { next: T, events: Vec<PendingEvent> },
}

/// A change this call committed, and whether its events are in the stream already (else the
/// outbox relay publishes them soon: the change is durable either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub in_stream: bool,
}

/// A change written to the database whose events still need publishing.
///
/// Dropped without a successful publish (publish failed, the broker was down, or the request was
/// cancelled in between), it wakes the outbox relay of its store.
#[derive(Debug)]
pub(super) struct Unpublished {
    pub(super) change_id: String,
    /// The change's pending marker (a change with events).
    pub(super) marker: Option<String>,
    pub(super) events: Vec<PendingEvent>,
    pub(super) published: AtomicBool,
    relay_wanted: Arc<AtomicBool>,
}

impl Unpublished {
    fn new(change: ChangeDoc, relay_wanted: &Arc<AtomicBool>) -> Self {
        Self {
            change_id: change.id,
            marker: change.marker,
            events: change.events,
            published: AtomicBool::new(false),
            relay_wanted: Arc::clone(relay_wanted),
        }
    }
}

impl Drop for Unpublished {
    fn drop(&mut self) {
        if !self.published.load(Ordering::Acquire) {
            self.relay_wanted.store(true, Ordering::Release);
        }
    }
}

/// What [`VersionedStore::apply_replica_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaUpdate {
    Applied,
    /// The replica is at this version or later already (a redelivery, a stale event).
    AlreadyApplied,
    /// The replica, or an earlier version of it, has not arrived yet.
    NotYet,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer claimed the version first.
    #[error("version already taken by a concurrent writer")]
    Conflict,
    /// A unique key of the record is taken (e.g. a ticket's reservation).
    #[error("a unique key of the record is already taken")]
    Duplicate,
    #[error("record not found")]
    NotFound,
    #[error(transparent)]
    Db(#[from] mongodb::error::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChangeDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) record_id: String,
    pub(super) record_key: Bson,
    pub(super) version: i64,
    pub(super) state: Document,
    pub(super) events: Vec<PendingEvent>,
    /// The id of the pending marker its writer wrote first (a change with events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) marker: Option<String>,
    /// Set to `true` once the events were out by releases before per-writer markers (whose markers
    /// are the change's id); absent from later changes, whose deleted marker says it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) published: bool,
    pub(super) at: bson::DateTime,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// That a change with events may be unpublished: written before the change, deleted after its
/// events are published, so the relay's work is O(pending) and a crash between any two writes
/// leaves a marker for every unpublished change (at worst a marker without a change, or one of a
/// writer that lost the version, which the relay drops).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PendingMarker {
    /// `<change id>~<writer>`; the change id alone for markers of earlier releases.
    #[serde(rename = "_id")]
    pub(super) id: String,
    /// The change it announces; absent from markers of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) change: Option<String>,
    pub(super) at: bson::DateTime,
}

impl PendingMarker {
    pub(super) fn change_id(&self) -> &str {
        self.change.as_deref().unwrap_or(&self.id)
    }
}

/// A finished one-time data migration (`migrations`, one per database).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Migration {
    #[serde(rename = "_id")]
    pub(super) name: String,
    pub(super) at: bson::DateTime,
}

/// A collection of versioned records plus its `<name>_changes` and `<name>_pending` collections.
pub struct VersionedStore<T: Send + Sync> {
    records: Collection<T>,
    pub(super) raw_records: Collection<Document>,
    pub(super) changes: Collection<ChangeDoc>,
    pub(super) pending: Collection<PendingMarker>,
    /// The inserts of writers, and the deletes of their markers, grouped per collection when they
    /// come together (see `group_commit`).
    record_inserts: Group<T, Inserts<T>>,
    change_inserts: Group<ChangeDoc, Inserts<ChangeDoc>>,
    marker_inserts: Group<PendingMarker, Inserts<PendingMarker>>,
    marker_deletes: Group<Bson, DeletesById>,
    pub(super) migrations: Collection<Migration>,
    /// Set when a change of this process may be left unpublished: the relay then looks for
    /// unpublished changes every interval instead of only every sweep (see `spawn_relay`).
    pub(super) relay_wanted: Arc<AtomicBool>,
    /// Told each state this process claimed a version for (see [`Self::on_claimed`]).
    claimed: Option<ClaimObserver<T>>,
    /// The record writes and marker deletes of commits settling behind (see [`Settling`]).
    settling: TaskTracker,
    _record: PhantomData<T>,
}

/// When a commit's record write and marker delete are done, once its version is claimed and its
/// events are on their way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settling {
    /// Before the call returns: whoever reads the records collection next sees the new state.
    Awaited,
    /// In a task of the store's after the events are out, so that the caller (an event handler
    /// holding one of its subject's slots) is free two writes sooner. Readers through
    /// [`VersionedStore::get`] already see the new state (they catch up from the change log), the
    /// marker stays until both writes are done, and a crash before then leaves the change to the
    /// relay, as for any writer. [`VersionedStore::settled`] waits for them.
    Behind,
}

type ClaimObserver<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// The pending marker of a change written before the change is decided (see
/// [`VersionedStore::premark`]).
#[derive(Debug)]
pub struct Premark {
    /// The change it announces: `<record id>:<version>`.
    change_id: String,
    /// The marker's id, which that change must name.
    marker: String,
}

impl<T: Send + Sync> Clone for VersionedStore<T> {
    fn clone(&self) -> Self {
        Self {
            records: self.records.clone(),
            raw_records: self.raw_records.clone(),
            changes: self.changes.clone(),
            pending: self.pending.clone(),
            record_inserts: self.record_inserts.clone(),
            change_inserts: self.change_inserts.clone(),
            marker_inserts: self.marker_inserts.clone(),
            marker_deletes: self.marker_deletes.clone(),
            migrations: self.migrations.clone(),
            relay_wanted: Arc::clone(&self.relay_wanted),
            claimed: self.claimed.clone(),
            settling: self.settling.clone(),
            _record: PhantomData,
        }
    }
}

fn change_id(record_id: &str, version: i64) -> String {
    format!("{record_id}:{version}")
}

/// The preparation of a `modify` that needs none.
fn no_preparation<T, E>(_: &T, _: &T) -> std::future::Ready<Result<(), E>> {
    std::future::ready(Ok(()))
}

/// A marker id of this writer's own for the change `change_id`.
fn marker_id(change_id: &str) -> String {
    format!("{change_id}~{}", ObjectId::new().to_hex())
}

impl<T: VersionedRecord> VersionedStore<T> {
    pub fn new(db: &Database, collection: &str) -> Self {
        let records: Collection<T> = db.collection(collection);
        let changes: Collection<ChangeDoc> = db.collection(&format!("{collection}_changes"));
        let pending: Collection<PendingMarker> = db.collection(&format!("{collection}_pending"));
        Self {
            record_inserts: Group::new(Inserts(records.clone())),
            change_inserts: Group::new(Inserts(changes.clone())),
            marker_inserts: Group::new(Inserts(pending.clone())),
            marker_deletes: Group::new(DeletesById(pending.clone_with_type())),
            records,
            raw_records: db.collection(collection),
            changes,
            pending,
            migrations: db.collection(super::MIGRATIONS_COLLECTION),
            // A new process first looks for what an earlier one may have left unpublished.
            relay_wanted: Arc::new(AtomicBool::new(true)),
            claimed: None,
            settling: TaskTracker::new(),
            _record: PhantomData,
        }
    }

    /// Tells `observer` of every state this process claims a version for, as soon as the claim is
    /// in, before the record is written: a claimed version is never undone, and readers already
    /// take it from the change log, so a memory of recent records can hold it from then on.
    pub fn on_claimed(mut self, observer: impl Fn(&T) + Send + Sync + 'static) -> Self {
        self.claimed = Some(Arc::new(observer));
        self
    }

    /// The records collection, for queries (listing, lookups by other fields).
    pub fn records(&self) -> &Collection<T> {
        &self.records
    }

    /// Indexes the one-time query of unpublished changes written before pending markers existed,
    /// and gives those changes their markers (see [`Self::adopt_unmarked_changes`]).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        super::ensure_index(
            &self.changes,
            "pending",
            doc! { "published": 1, "at": 1 },
            IndexKind::Plain,
        )
        .await?;
        self.adopt_unmarked_changes().await?;
        Ok(())
    }

    /// Writes a pending marker for every unpublished change with events, once per collection:
    /// changes written before markers existed. Reads every change (run at start, never per
    /// request); idempotent, and marked done only once complete, so a start cut short runs it again.
    pub async fn adopt_unmarked_changes(&self) -> Result<usize, StoreError> {
        let name = format!("{}_pending", self.raw_records.name());
        if self
            .migrations
            .find_one(doc! { "_id": &name })
            .bounded()
            .await?
            .is_some()
        {
            return Ok(0);
        }
        // Not bounded as a whole: a long history may take more than one operation timeout.
        let mut unpublished = self.changes.find(doc! { "published": false }).await?;
        let mut adopted = 0;
        while let Some(change) = futures::TryStreamExt::try_next(&mut unpublished).await? {
            if !change.events.is_empty() {
                // Marked the way those releases did (the change's id): no marker of a writer.
                let marker = PendingMarker {
                    id: change.id.clone(),
                    change: None,
                    at: change.at,
                };
                self.mark_pending(marker).await?;
                adopted += 1;
            }
        }
        let done = Migration {
            name,
            at: bson::DateTime::now(),
        };
        match self.migrations.insert_one(&done).bounded().await {
            Ok(_) => {}
            // Another replica finished it at the same moment.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(adopted)
    }

    /// Writes a pending marker (before the change itself). Already there is fine: an earlier try
    /// wrote it.
    async fn mark_pending(&self, marker: PendingMarker) -> mongodb::error::Result<()> {
        match self.marker_inserts.write(marker).await {
            Ok(()) | Err(WriteFailure::Duplicate) => Ok(()),
            Err(WriteFailure::Db(e)) => Err(e),
        }
    }

    /// Inserts a change document, announced first by its pending marker if it has events. A
    /// change without events needs no relay: a later version is applied by the next read (`get`),
    /// and a replica's first version by the redelivery of the event that creates it.
    ///
    /// [`WriteFailure::Duplicate`]: another writer claimed the change's version.
    async fn insert_change(&self, change: &ChangeDoc, premarked: bool) -> Result<(), WriteFailure> {
        if let Some(marker) = change.marker.as_ref().filter(|_| !premarked) {
            let marker = PendingMarker {
                id: marker.clone(),
                change: Some(change.id.clone()),
                at: change.at,
            };
            self.mark_pending(marker).await.map_err(WriteFailure::Db)?;
        }
        self.change_inserts.write(change.clone()).await
    }

    /// Deletes a pending marker whose change is published, gone, or another writer's.
    pub(super) async fn unmark_pending(&self, marker: &str) -> mongodb::error::Result<()> {
        match self
            .marker_deletes
            .write(Bson::String(marker.to_owned()))
            .await
        {
            Err(WriteFailure::Db(e)) => Err(e),
            // A delete is never refused for a taken key.
            Ok(()) | Err(WriteFailure::Duplicate) => Ok(()),
        }
    }

    fn change_doc(&self, record: &T, events: Vec<PendingEvent>) -> Result<ChangeDoc, StoreError> {
        let id = change_id(&record.record_id(), record.version());
        Ok(ChangeDoc {
            marker: (!events.is_empty()).then(|| marker_id(&id)),
            id,
            record_id: record.record_id(),
            record_key: record.key(),
            version: record.version(),
            state: bson::to_document(record)
                .context("serialising record")
                .map_err(StoreError::Other)?,
            events,
            published: false,
            at: bson::DateTime::now(),
        })
    }

    /// Inserts a new record (version 0) with its events and publishes them. A unique index of the
    /// record that is already taken gives [`StoreError::Duplicate`] and leaves nothing behind.
    pub async fn create(
        &self,
        bus: &EventBus,
        record: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        let change = self.create_change(record, events).await?;
        Ok(self.publish(bus, change).await)
    }

    /// [`Self::create`] without publishing, as if the writer had crashed right after the write:
    /// for tests of the outbox relay.
    #[cfg(feature = "testing")]
    pub async fn create_unpublished(
        &self,
        record: &T,
        events: Vec<PendingEvent>,
    ) -> Result<(), StoreError> {
        self.create_change(record, events).await.map(drop)
    }

    async fn create_change(
        &self,
        record: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Unpublished, StoreError> {
        let change = self.change_doc(record, events)?;
        self.insert_change(&change, false)
            .await
            .map_err(|e| match e {
                WriteFailure::Duplicate => StoreError::Duplicate,
                WriteFailure::Db(e) => StoreError::Db(e),
            })?;
        match self.record_inserts.write(record.clone()).await {
            Ok(()) => Ok(Unpublished::new(change, &self.relay_wanted)),
            Err(WriteFailure::Duplicate) => {
                // Either the relay already materialised our record (fine) or a unique key of the
                // record belongs to someone else: then our change must vanish unpublished.
                if self
                    .records
                    .find_one(doc! { "_id": record.key() })
                    .bounded()
                    .await?
                    .is_some()
                {
                    return Ok(Unpublished::new(change, &self.relay_wanted));
                }
                // The claim is lost either way; if this delete fails, the relay drops the leftover
                // change (its record insert hits the same unique key), so the caller still gets the
                // business answer rather than a 500.
                if let Err(err) = self
                    .changes
                    .delete_one(doc! { "_id": &change.id })
                    .bounded()
                    .await
                {
                    tracing::warn!(change = %change.id, error = %err, "could not drop a lost claim; the relay will");
                } else {
                    self.drop_marker_of_lost(&change).await;
                }
                Err(StoreError::Duplicate)
            }
            Err(WriteFailure::Db(e)) => Err(e.into()),
        }
    }

    /// Loads a record, first applying any change newer than the stored version.
    pub async fn get(&self, key: Bson) -> Result<Option<T>, StoreError> {
        match self.stored(key).await? {
            Some(record) => self.catch_up(record).await.map(Some),
            None => Ok(None),
        }
    }

    /// The record's newest state, from `known`, a copy of it at some version (remembered from an
    /// earlier read or commit). If no change claimed the version after `known`, `known` is still
    /// the newest (versions are claimed one after the other, and a version's state never changes):
    /// one lookup by `_id` answers where [`Self::get`] takes two, and a final copy needs none.
    /// Otherwise it reads through as `get` does.
    pub async fn newest_from(&self, known: T) -> Result<T, StoreError> {
        if known.is_final() || self.is_newest(&known.record_id(), known.version()).await? {
            return Ok(known);
        }
        self.get(known.key()).await?.ok_or(StoreError::NotFound)
    }

    /// Whether version `version` of record `record_id` is still its newest: no change claimed the
    /// version after it (every version after the first is claimed by its change's insert). One
    /// lookup by `_id`, where [`Self::get`] needs two: for a caller that already knows the record
    /// at `version` and only asks whether it still stands.
    pub async fn is_newest(&self, record_id: &str, version: i64) -> Result<bool, StoreError> {
        let next = change_id(record_id, version + 1);
        Ok(!super::has_id(&self.changes.clone_with_type::<Document>(), next).await?)
    }

    /// The record as stored, which may lag its newest change: a writer between its two writes, or
    /// one that crashed there. Good enough to base a commit on (a stale one loses its version
    /// claim); not to answer with.
    pub async fn stored(&self, key: Bson) -> Result<Option<T>, StoreError> {
        Ok(self.records.find_one(doc! { "_id": key }).bounded().await?)
    }

    /// Applies every change newer than `record`, in order, and returns the result: with
    /// [`Self::stored`], what [`Self::get`] does, for a caller that starts another read named by the
    /// stored record (a field no change alters) while this one runs.
    pub async fn catch_up(&self, mut record: T) -> Result<T, StoreError> {
        loop {
            let next = change_id(&record.record_id(), record.version() + 1);
            let Some(change) = self
                .changes
                .find_one(doc! { "_id": next })
                .bounded()
                .await?
            else {
                return Ok(record);
            };
            record = self.apply(&record, &change).await?;
        }
    }

    /// Writes a change's state over the record.
    ///
    /// Not conditional on the record's version: FerretDB's conditional writes are read-then-write
    /// anyway, and it turns only a filter of `_id` alone into an indexed lookup (any other filter
    /// decodes the whole collection). A write of an older version that lands late is repaired by
    /// its own writer: every writer reads the next change right after writing (`get`, `commit`),
    /// so whoever writes last also writes the newest state.
    async fn apply(&self, current: &T, change: &ChangeDoc) -> Result<T, StoreError> {
        self.raw_records
            .replace_one(doc! { "_id": current.key() }, change.state.clone())
            .bounded()
            .await?;
        bson::from_document(change.state.clone())
            .context("reading a stored change")
            .map_err(StoreError::Other)
    }

    /// Claims version `current + 1` for `next`, writes it and publishes its events.
    /// [`StoreError::Conflict`] if another writer claimed that version first.
    pub async fn commit(
        &self,
        bus: &EventBus,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        self.commit_marked(bus, current, next, events, None, Settling::Awaited)
            .await
    }

    /// [`Self::commit`], announced by `premark` if it was written for this change (else by a
    /// marker of its own), and settled as `settling` says.
    async fn commit_marked(
        &self,
        bus: &EventBus,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
        premark: Option<&Premark>,
        settling: Settling,
    ) -> Result<Committed, StoreError> {
        let change = self.claim_version(current, next, events, premark).await?;
        // The claim decides the version, so its events go out while the record is written: a
        // reader catches up from the change log meanwhile. The pending marker stays until both are
        // done (see `settle`), so if the write fails, or this process dies or drops the call before
        // it, the relay writes the record (and publishes the events again; the stream drops a
        // message id it has seen).
        let unpublished = Unpublished::new(change.clone(), &self.relay_wanted);
        if settling == Settling::Behind {
            let sent = self.send(bus, &unpublished).await;
            let in_stream = matches!(sent, Sent::NoEvents | Sent::InStream);
            let store = self.clone();
            let (current, next) = (current.clone(), next.clone());
            self.settling.spawn(
                async move {
                    match store.write_claimed(&current, &next, &change).await {
                        Ok(()) => drop(store.settle(unpublished, sent).await),
                        // `unpublished` goes unpublished: the relay writes the record.
                        Err(err) => {
                            tracing::warn!(change = %change.id, error = %err, "writing a committed record failed; the outbox relay will")
                        }
                    }
                }
                .in_current_span(),
            );
            return Ok(Committed { in_stream });
        }
        let (sent, written) = tokio::join!(
            self.send(bus, &unpublished),
            self.write_claimed(current, next, &change)
        );
        written?;
        Ok(self.settle(unpublished, sent).await)
    }

    /// [`Self::commit`] without publishing, as if the writer had crashed right after the write:
    /// for tests of the outbox relay.
    #[cfg(feature = "testing")]
    pub async fn commit_unpublished(
        &self,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
    ) -> Result<(), StoreError> {
        self.commit_change(current, next, events).await.map(drop)
    }

    async fn commit_change(
        &self,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Unpublished, StoreError> {
        let change = self.claim_version(current, next, events, None).await?;
        self.write_claimed(current, next, &change).await?;
        Ok(Unpublished::new(change, &self.relay_wanted))
    }

    /// Claims version `current + 1` for `next` by inserting its change document (with the pending
    /// marker first if it has events, unless `premark` is that change's). [`StoreError::Conflict`]
    /// if another writer claimed it first.
    async fn claim_version(
        &self,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
        premark: Option<&Premark>,
    ) -> Result<ChangeDoc, StoreError> {
        if next.version() != current.version() + 1 || next.record_id() != current.record_id() {
            return Err(StoreError::Other(anyhow::anyhow!(
                "a change must move {} from version {} to {}, not {}",
                current.record_id(),
                current.version(),
                current.version() + 1,
                next.version()
            )));
        }
        let mut change = self.change_doc(next, events)?;
        let premarked = match premark {
            Some(premark) if change.marker.is_some() && premark.change_id == change.id => {
                change.marker = Some(premark.marker.clone());
                true
            }
            _ => false,
        };
        match self.insert_change(&change, premarked).await {
            Ok(()) => {
                if let Some(observer) = &self.claimed {
                    observer(next);
                }
                Ok(change)
            }
            Err(WriteFailure::Duplicate) => {
                self.drop_marker_of_lost(&change).await;
                Err(StoreError::Conflict)
            }
            Err(WriteFailure::Db(e)) => Err(e.into()),
        }
    }

    /// Writes a claimed change over the record, then repairs forward if a later version's writer
    /// landed first.
    async fn write_claimed(
        &self,
        current: &T,
        next: &T,
        change: &ChangeDoc,
    ) -> Result<(), StoreError> {
        self.apply(current, change).await?;
        // Writes of the record are not conditional (see `apply`), so they can land out of order.
        // Whoever writes last repairs forward: a writer of an older version that lands after us
        // finds our change after its own, and if the next version's writer landed before us, its
        // change is there now (it is inserted before its record is written): then we read through.
        // No version comes after a final state, so no writer of one can have landed first.
        if !next.is_final() && !self.is_newest(&next.record_id(), next.version()).await? {
            self.get(current.key()).await?;
        }
        Ok(())
    }

    /// Deletes the marker of a change that lost its version or its unique key. If this fails the
    /// relay drops it: the change it names is another writer's, or gone.
    async fn drop_marker_of_lost(&self, change: &ChangeDoc) {
        if let Some(marker) = &change.marker
            && let Err(err) = self.unmark_pending(marker).await
        {
            tracing::warn!(change = %change.id, error = %err, "could not drop the marker of a lost change; the relay will");
        }
    }

    /// Read, decide, commit and publish; retried when a concurrent writer takes the version.
    /// Returns the record as it ends up and the committed change, if any.
    ///
    /// `decide` first sees the record as stored (one read): a commit based on it claims the version
    /// after it, which fails if a newer change exists, and is then decided again on the latest
    /// state. An `Unchanged` answer or an error of `decide` is returned only once no newer
    /// change exists.
    pub async fn modify<E, F>(
        &self,
        bus: &EventBus,
        key: Bson,
        decide: F,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
    {
        self.modify_prepared(bus, key, decide, no_preparation).await
    }

    /// [`Self::modify`] with a step run before each commit, given the current and the next state:
    /// a write that must exist before the change can (a marker for a sweeper). A failing step
    /// fails the call, and nothing is committed.
    pub async fn modify_prepared<E, F, P, Fut>(
        &self,
        bus: &EventBus,
        key: Bson,
        decide: F,
        prepare: P,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
        P: FnMut(&T, &T) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let current = self.stored(key).await?.ok_or(StoreError::NotFound)?;
        self.modify_from_prepared(bus, current, decide, prepare)
            .await
    }

    /// [`Self::modify`] starting from `current`, the record as [`Self::stored`] read it: for a
    /// caller that makes that read beside another one it needs (both before deciding), so that the
    /// two do not wait for each other.
    pub async fn modify_from<E, F>(
        &self,
        bus: &EventBus,
        current: T,
        decide: F,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
    {
        self.modify_from_prepared(bus, current, decide, no_preparation)
            .await
    }

    /// Writes the pending marker of the change that would move `record_id` from `version` to the
    /// next, before that change is decided: a writer whose decision waits for reads anyway (a
    /// reservation waits for the ticket and its order's tombstone) writes it beside them, and its
    /// claim is then one insert instead of two. Hand it to [`Self::modify_from_premarked`], which
    /// uses it if its commit is that change and deletes it otherwise; a marker whose change is
    /// never written (the writer crashed) is dropped by the relay after a while.
    pub async fn premark(&self, record_id: &str, version: i64) -> Result<Premark, StoreError> {
        let change_id = change_id(record_id, version + 1);
        let marker = marker_id(&change_id);
        self.mark_pending(PendingMarker {
            id: marker.clone(),
            change: Some(change_id.clone()),
            at: bson::DateTime::now(),
        })
        .await?;
        Ok(Premark { change_id, marker })
    }

    /// [`Self::modify_from`] whose commit, if it is the change `premark` was written for, is
    /// announced by it, and is settled as `settling` says. An unused premark is deleted before
    /// this returns.
    pub async fn modify_from_premarked<E, F>(
        &self,
        bus: &EventBus,
        current: T,
        mut premark: Option<Premark>,
        settling: Settling,
        decide: F,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
    {
        let result = self
            .modify_loop(bus, current, decide, no_preparation, &mut premark, settling)
            .await;
        if let Some(unused) = premark {
            self.drop_premark(unused).await;
        }
        result
    }

    /// Waits until the commits settling behind (see [`Settling::Behind`]) that started before this
    /// call have written their records and deleted their markers. Meant for one caller at a time
    /// (the relay at shutdown, tests): the tracker is closed while it waits, so a second caller
    /// meanwhile may also wait for commits that began after its own call.
    pub async fn settled(&self) {
        self.settling.close();
        self.settling.wait().await;
        self.settling.reopen();
    }

    /// Deletes a premark its writer will not commit. If this fails the relay drops it (its change
    /// never comes).
    pub async fn drop_premark(&self, premark: Premark) {
        if let Err(err) = self.unmark_pending(&premark.marker).await {
            tracing::warn!(marker = %premark.marker, error = %err, "could not delete an unused premark; the relay will");
        }
    }

    /// The loop of every `modify`: decide, prepare, commit; on a lost claim, read the newest and
    /// decide again. Public for a caller that keeps the record it last wrote: starting from that
    /// copy saves the read, and a copy someone has moved past only loses its claim.
    pub async fn modify_from_prepared<E, F, P, Fut>(
        &self,
        bus: &EventBus,
        current: T,
        decide: F,
        prepare: P,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
        P: FnMut(&T, &T) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        self.modify_loop(bus, current, decide, prepare, &mut None, Settling::Awaited)
            .await
    }

    /// [`Self::modify_from_prepared`]; a commit that is the change `premark` announces takes it
    /// (and leaves `None`): a lost claim deletes it then, and a failed one leaves it to the relay.
    async fn modify_loop<E, F, P, Fut>(
        &self,
        bus: &EventBus,
        mut current: T,
        mut decide: F,
        mut prepare: P,
        premark: &mut Option<Premark>,
        settling: Settling,
    ) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
        P: FnMut(&T, &T) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut latest = false;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let decided = decide(&current);
            // Only a commit is checked by its claim. An `Unchanged` answer or a refusal stands only
            // on the newest state: the record may lag a change whose write is still on its way
            // (see `Settling::Behind`), so it is decided again on that change if there is one.
            if !latest && !matches!(decided, Ok(Decision::Commit { .. })) {
                let caught_up = self.catch_up(current.clone()).await?;
                latest = true;
                if caught_up.version() != current.version() {
                    current = caught_up;
                    continue;
                }
            }
            match decided? {
                Decision::Unchanged => return Ok((current, None)),
                Decision::Commit { next, events } => {
                    prepare(&current, &next).await?;
                    let next_change = change_id(&next.record_id(), next.version());
                    let premark = premark
                        .take_if(|premark| !events.is_empty() && premark.change_id == next_change);
                    match self
                        .commit_marked(bus, &current, &next, events, premark.as_ref(), settling)
                        .await
                    {
                        Ok(committed) => return Ok((next, Some(committed))),
                        Err(StoreError::Conflict) => {
                            current = self.get(current.key()).await?.ok_or(StoreError::NotFound)?;
                            latest = true;
                        }
                        Err(other) => return Err(other.into()),
                    }
                }
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Inserts version 0 of a replicated record (a copy of another service's record, announced by
    /// an event, or a record written without events); `false` if it is there already (a
    /// redelivery). One insert: the record's `_id` claims version 0 and there is nothing to
    /// publish, so no change document is needed (reads only look for the versions after a
    /// record's). A version 0 change document that an earlier release wrote before a crash cut its
    /// record's insert stays harmless; the redelivery inserts the record.
    pub async fn create_replica(&self, record: &T) -> Result<bool, StoreError> {
        match self.record_inserts.write(record.clone()).await {
            Ok(()) => Ok(true),
            Err(WriteFailure::Duplicate) => Ok(false),
            Err(WriteFailure::Db(e)) => Err(e.into()),
        }
    }

    /// Moves a replicated record to version `version`, strictly in order (CONSISTENCY.md pattern 5),
    /// with `next` deriving the new state from the current one. Each version is claimed by an
    /// insert like any commit, so a slow duplicate of version `v` landing after `v + 1` is repaired
    /// forward by whoever reads next, and a duplicate is recognised as applied.
    pub async fn apply_replica_version<F>(
        &self,
        key: Bson,
        version: i64,
        mut next: F,
    ) -> Result<ReplicaUpdate, StoreError>
    where
        F: FnMut(&T) -> T,
    {
        // The record as stored first, as in `modify`: a version it already has is applied, and the
        // claim of the next one fails if the record lags; only a gap needs the changes read.
        let Some(mut current) = self.stored(key.clone()).await? else {
            return Ok(ReplicaUpdate::NotYet);
        };
        let mut latest = false;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            if current.version() >= version {
                return Ok(ReplicaUpdate::AlreadyApplied);
            }
            if current.version() + 1 < version {
                if latest {
                    return Ok(ReplicaUpdate::NotYet);
                }
                current = self.catch_up(current).await?;
                latest = true;
                continue;
            }
            match self
                .commit_change(&current, &next(&current), Vec::new())
                .await
            {
                Ok(change) => {
                    // Nothing to publish: a replica announces nothing.
                    change.published.store(true, Ordering::Release);
                    return Ok(ReplicaUpdate::Applied);
                }
                // Another consumer claimed this version (or the record lagged): read through.
                Err(StoreError::Conflict) => {
                    let Some(caught_up) = self.get(key.clone()).await? else {
                        return Ok(ReplicaUpdate::NotYet);
                    };
                    current = caught_up;
                    latest = true;
                }
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_event_written_before_traces_were_kept_still_reads_and_is_stored_the_same() {
        let old = doc! { "subject": "order:created", "msg_id": "o:0", "payload": "{}" };
        let event: PendingEvent = bson::from_document(old.clone()).unwrap();
        assert!(event.trace.is_empty());
        assert_eq!(bson::to_document(&event).unwrap(), old);

        let traced = PendingEvent {
            trace: TraceContext {
                traceparent: Some(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                ),
                tracestate: Some("vendor=1".to_owned()),
            },
            ..event
        };
        let stored = bson::to_document(&traced).unwrap();
        assert_eq!(
            stored.get_document("trace").unwrap(),
            &doc! {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate": "vendor=1",
            }
        );
        assert_eq!(bson::from_document::<PendingEvent>(stored).unwrap(), traced);
    }
}
