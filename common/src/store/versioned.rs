//! Records whose every version is claimed by an insert, with the events of each change stored in the
//! same write (patterns 3 and 4 of `shared/CONSISTENCY.md`).
//!
//! A change to a record at version `v` is first written as a *change document* with
//! `_id = "<record id>:<v+1>"`, holding the full new state and the events to publish. Only one
//! writer can insert that id, so versions cannot fork even where conditional updates are not atomic
//! (FerretDB). The record itself is then brought to the new state. Anyone who finds a change newer
//! than the record applies it (read repair), and a relay publishes change events left unpublished,
//! so a crash between any two steps loses nothing.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Bounded as _, is_duplicate_key};
use crate::bus::EventBus;
use crate::error::ApiError;
use crate::events::{Event, Subject};

/// How many times a read-decide-commit cycle is retried when another writer wins the version.
const MAX_COMMIT_ATTEMPTS: usize = 20;

/// How many unpublished changes one relay pass takes at most.
const RELAY_BATCH: i64 = 500;

/// A document kept by [`VersionedStore`].
pub trait VersionedRecord:
    Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static
{
    /// The stored `_id` value.
    fn key(&self) -> Bson;
    /// The `_id` as text (change ids are `<id>:<version>`).
    fn record_id(&self) -> String;
    fn version(&self) -> i64;
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
}

impl PendingEvent {
    pub fn of<E: Event>(event: &E) -> Result<Self, StoreError> {
        Ok(Self {
            subject: E::SUBJECT.as_str().to_owned(),
            msg_id: event.message_id(),
            payload: serde_json::to_string(event).map_err(|e| StoreError::Other(e.into()))?,
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

/// A change written to the database whose events still need publishing.
///
/// Dropped without a successful [`VersionedStore::publish`] (publish failed, the broker was down,
/// or the request was cancelled in between), it wakes the outbox relay of its store.
#[derive(Debug)]
pub struct Committed {
    change_id: String,
    events: Vec<PendingEvent>,
    published: AtomicBool,
    relay_wanted: Arc<AtomicBool>,
}

impl Committed {
    fn new(change: ChangeDoc, relay_wanted: &Arc<AtomicBool>) -> Self {
        Self {
            change_id: change.id,
            events: change.events,
            published: AtomicBool::new(false),
            relay_wanted: Arc::clone(relay_wanted),
        }
    }
}

impl Drop for Committed {
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

/// What one pass of the outbox relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Changes published by this pass.
    pub published: usize,
    /// Unpublished changes left for a later pass: younger than the minimum age (their writer may
    /// still publish them), or not publishable now (broker unreachable).
    pub waiting: usize,
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

/// Why publishing a change's events failed, and whether they reached the stream first.
#[derive(Debug)]
enum PublishError {
    /// Not every event is in the stream.
    NotSent(anyhow::Error),
    /// Every event is in the stream; only marking the change published failed.
    Sent(anyhow::Error),
}

impl PublishError {
    fn cause(&self) -> &anyhow::Error {
        match self {
            PublishError::NotSent(err) | PublishError::Sent(err) => err,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict => {
                ApiError::Conflict("The record was changed concurrently, please retry".into())
            }
            StoreError::Duplicate => ApiError::bad_request("Already exists"),
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Db(e) => e.into(),
            StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChangeDoc {
    #[serde(rename = "_id")]
    id: String,
    record_id: String,
    record_key: Bson,
    version: i64,
    state: Document,
    events: Vec<PendingEvent>,
    published: bool,
    at: bson::DateTime,
}

/// A collection of versioned records plus its `<name>_changes` collection.
pub struct VersionedStore<T: Send + Sync> {
    records: Collection<T>,
    raw_records: Collection<Document>,
    changes: Collection<ChangeDoc>,
    /// Set when a change of this process may be left unpublished: the relay then looks for
    /// unpublished changes every interval instead of only every sweep (see `spawn_relay`).
    relay_wanted: Arc<AtomicBool>,
    _record: PhantomData<T>,
}

impl<T: Send + Sync> Clone for VersionedStore<T> {
    fn clone(&self) -> Self {
        Self {
            records: self.records.clone(),
            raw_records: self.raw_records.clone(),
            changes: self.changes.clone(),
            relay_wanted: Arc::clone(&self.relay_wanted),
            _record: PhantomData,
        }
    }
}

fn change_id(record_id: &str, version: i64) -> String {
    format!("{record_id}:{version}")
}

impl<T: VersionedRecord> VersionedStore<T> {
    pub fn new(db: &Database, collection: &str) -> Self {
        Self {
            records: db.collection(collection),
            raw_records: db.collection(collection),
            changes: db.collection(&format!("{collection}_changes")),
            // A new process first looks for what an earlier one may have left unpublished.
            relay_wanted: Arc::new(AtomicBool::new(true)),
            _record: PhantomData,
        }
    }

    /// The records collection, for queries (listing, lookups by other fields).
    pub fn records(&self) -> &Collection<T> {
        &self.records
    }

    /// Index the relay's query of unpublished changes.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.changes
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "published": 1, "at": 1 })
                    .options(IndexOptions::builder().name("pending".to_owned()).build())
                    .build(),
            )
            .bounded()
            .await?;
        Ok(())
    }

    fn change_doc(&self, record: &T, events: Vec<PendingEvent>) -> Result<ChangeDoc, StoreError> {
        Ok(ChangeDoc {
            id: change_id(&record.record_id(), record.version()),
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

    /// Inserts a new record (version 0) with its events. A unique index of the record that is
    /// already taken gives [`StoreError::Duplicate`] and leaves nothing behind.
    pub async fn create(
        &self,
        record: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        let change = self.change_doc(record, events)?;
        self.changes
            .insert_one(&change)
            .bounded()
            .await
            .map_err(|e| {
                if is_duplicate_key(&e) {
                    StoreError::Duplicate
                } else {
                    StoreError::Db(e)
                }
            })?;
        match self.records.insert_one(record).bounded().await {
            Ok(_) => Ok(Committed::new(change, &self.relay_wanted)),
            Err(e) if is_duplicate_key(&e) => {
                // Either the relay already materialised our record (fine) or a unique key of the
                // record belongs to someone else: then our change must vanish unpublished.
                if self
                    .records
                    .find_one(doc! { "_id": record.key() })
                    .bounded()
                    .await?
                    .is_some()
                {
                    return Ok(Committed::new(change, &self.relay_wanted));
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
                }
                Err(StoreError::Duplicate)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Loads a record, first applying any change newer than the stored version.
    pub async fn get(&self, key: Bson) -> Result<Option<T>, StoreError> {
        let Some(mut record) = self.records.find_one(doc! { "_id": key }).bounded().await? else {
            return Ok(None);
        };
        loop {
            let next = change_id(&record.record_id(), record.version() + 1);
            let Some(change) = self
                .changes
                .find_one(doc! { "_id": next })
                .bounded()
                .await?
            else {
                return Ok(Some(record));
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

    /// Claims version `current + 1` for `next` and writes it. [`StoreError::Conflict`] if another
    /// writer claimed that version first.
    pub async fn commit(
        &self,
        current: &T,
        next: &T,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        if next.version() != current.version() + 1 || next.record_id() != current.record_id() {
            return Err(StoreError::Other(anyhow::anyhow!(
                "a change must move {} from version {} to {}, not {}",
                current.record_id(),
                current.version(),
                current.version() + 1,
                next.version()
            )));
        }
        let change = self.change_doc(next, events)?;
        match self.changes.insert_one(&change).bounded().await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Err(StoreError::Conflict),
            Err(e) => return Err(e.into()),
        }
        self.apply(current, &change).await?;
        // On FerretDB a conditional replace is read-then-write: a slower writer of an older version
        // can land after us and roll the record back. Whoever writes last repairs forward here, so
        // queries on `records()` do not keep a stale state.
        self.get(current.key()).await?;
        Ok(Committed::new(change, &self.relay_wanted))
    }

    /// Read, decide, commit; retried when a concurrent writer takes the version. Returns the record
    /// as it ends up and the committed change, if any. `decide` sees the latest state each time.
    pub async fn modify<E, F>(&self, key: Bson, mut decide: F) -> Result<(T, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&T) -> Result<Decision<T>, E>,
    {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let current = self.get(key.clone()).await?.ok_or(StoreError::NotFound)?;
            match decide(&current)? {
                Decision::Unchanged => return Ok((current, None)),
                Decision::Commit { next, events } => {
                    match self.commit(&current, &next, events).await {
                        Ok(committed) => return Ok((next, Some(committed))),
                        Err(StoreError::Conflict) => continue,
                        Err(other) => return Err(other.into()),
                    }
                }
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Inserts version 0 of a replicated record (a copy of another service's record, announced by
    /// an event), or recognises it as inserted before, finishing an insert that a crash cut after
    /// its change document. `true` if this call inserted it.
    pub async fn create_replica(&self, record: &T) -> Result<bool, StoreError> {
        match self.create(record, Vec::new()).await {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate) => {
                let first = change_id(&record.record_id(), 0);
                if let Some(change) = self
                    .changes
                    .find_one(doc! { "_id": first })
                    .bounded()
                    .await?
                {
                    self.materialise(&change).await?;
                }
                Ok(false)
            }
            Err(other) => Err(other),
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
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let Some(current) = self.get(key.clone()).await? else {
                return Ok(ReplicaUpdate::NotYet);
            };
            if current.version() >= version {
                return Ok(ReplicaUpdate::AlreadyApplied);
            }
            if current.version() + 1 < version {
                return Ok(ReplicaUpdate::NotYet);
            }
            match self.commit(&current, &next(&current), Vec::new()).await {
                Ok(committed) => {
                    // Nothing to publish: a replica announces nothing.
                    committed.published.store(true, Ordering::Release);
                    return Ok(ReplicaUpdate::Applied);
                }
                // Another consumer claimed this version: the next read applies its change.
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Publishes a change's events and marks it published. A failure is logged and left to the relay:
    /// the change is already durable, so the caller's request still succeeded.
    ///
    /// Returns whether the events are in the stream now (the broker acknowledged them), whatever
    /// became of marking the change published.
    pub async fn publish(&self, bus: &EventBus, committed: &Committed) -> bool {
        // While the broker is unreachable a publish would only wait for its ack timeout: answer the
        // request now and let the relay publish once the connection is back.
        if !bus.is_connected() {
            tracing::info!(change = %committed.change_id, "event bus disconnected; leaving the change to the outbox relay");
            return false;
        }
        match self
            .try_publish(bus, &committed.change_id, &committed.events)
            .await
        {
            Ok(()) => {
                committed.published.store(true, Ordering::Release);
                true
            }
            Err(PublishError::Sent(err)) => {
                tracing::warn!(change = %committed.change_id, error = %format!("{err:#}"),
                    "events published but the change not marked; the outbox relay will mark it");
                true
            }
            Err(PublishError::NotSent(err)) => {
                tracing::warn!(change = %committed.change_id, error = %format!("{err:#}"),
                    "publishing failed; the outbox relay will retry");
                false
            }
        }
    }

    async fn try_publish(
        &self,
        bus: &EventBus,
        change_id: &str,
        events: &[PendingEvent],
    ) -> Result<(), PublishError> {
        for event in events {
            let subject = Subject::parse(&event.subject)
                .with_context(|| format!("unknown subject {} in change {change_id}", event.subject))
                .map_err(PublishError::NotSent)?;
            bus.publish_raw(
                subject,
                &event.msg_id,
                Bytes::from(event.payload.clone().into_bytes()),
            )
            .await
            .map_err(PublishError::NotSent)?;
        }
        self.changes
            .update_one(
                doc! { "_id": change_id },
                doc! { "$set": { "published": true } },
            )
            .bounded()
            .await
            .context("marking a change published")
            .map_err(PublishError::Sent)?;
        Ok(())
    }

    /// One pass of the outbox relay: every change older than `min_age` that is still unpublished is
    /// applied to its record if needed, then published; younger ones are counted as waiting.
    pub async fn relay_once(
        &self,
        bus: &EventBus,
        min_age: Duration,
    ) -> Result<RelayPass, StoreError> {
        let cutoff_ms = bson::DateTime::now().timestamp_millis()
            - i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let pending: Vec<ChangeDoc> = super::find_all(
            self.changes
                .find(doc! { "published": false })
                .sort(doc! { "at": 1 })
                .limit(RELAY_BATCH),
        )
        .await?;
        let mut pass = RelayPass {
            published: 0,
            waiting: pending.len(),
        };
        for change in pending {
            if change.at.timestamp_millis() > cutoff_ms {
                continue;
            }
            if !self.materialise(&change).await? {
                pass.waiting -= 1;
                continue;
            }
            match self.try_publish(bus, &change.id, &change.events).await {
                Ok(()) => {
                    pass.published += 1;
                    pass.waiting -= 1;
                }
                Err(err) => {
                    tracing::warn!(change = %change.id, error = %format!("{:#}", err.cause()), "relay could not publish");
                    break;
                }
            }
        }
        Ok(pass)
    }

    /// Makes sure the record reflects `change`. `false` if the change lost its claim and was dropped.
    async fn materialise(&self, change: &ChangeDoc) -> Result<bool, StoreError> {
        if change.version == 0 {
            if self
                .raw_records
                .find_one(doc! { "_id": change.record_key.clone() })
                .bounded()
                .await?
                .is_some()
            {
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
                    if self
                        .raw_records
                        .find_one(doc! { "_id": change.record_key.clone() })
                        .bounded()
                        .await?
                        .is_some()
                    {
                        Ok(true)
                    } else {
                        // A unique key of the record went to someone else: this change never happened.
                        self.changes
                            .delete_one(doc! { "_id": &change.id })
                            .bounded()
                            .await?;
                        Ok(false)
                    }
                }
                Err(e) => Err(e.into()),
            };
        }
        self.get(change.record_key.clone()).await?;
        Ok(true)
    }

    /// Runs the outbox relay until `shutdown`.
    ///
    /// Looking for unpublished changes means reading every change document on FerretDB (the
    /// `published` filter is not indexed there), so it is done every `interval` only while this
    /// process may have left one behind (at start, and after a change that was not published,
    /// until a pass finds nothing waiting), and otherwise every `sweep`, for what other replicas
    /// that crashed left behind.
    pub fn spawn_relay(
        self: Arc<Self>,
        bus: EventBus,
        shutdown: CancellationToken,
        timing: RelayTiming,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut since_sweep = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(timing.interval) => {}
                }
                since_sweep += timing.interval;
                // Cleared before the pass, so a change left unpublished during it wakes the next one.
                let wanted = self.relay_wanted.swap(false, Ordering::AcqRel);
                if !wanted && since_sweep < timing.sweep {
                    continue;
                }
                since_sweep = Duration::ZERO;
                match self.relay_once(&bus, timing.min_age).await {
                    Ok(pass) => {
                        if pass.published > 0 {
                            tracing::info!(
                                count = pass.published,
                                "outbox relay published pending events"
                            );
                        }
                        if pass.waiting > 0 {
                            self.relay_wanted.store(true, Ordering::Release);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox relay pass failed");
                        self.relay_wanted.store(true, Ordering::Release);
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
