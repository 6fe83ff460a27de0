//! The per-replica read model of every ticket, so that reads cost O(their result) however many
//! tickets were ever sold.
//!
//! FerretDB's SQLite backend turns only a filter of `_id` alone into an indexed lookup: the listing
//! (`orderId: null`) and a seller's tickets (`userId`) decoded every ticket ever listed. Each
//! replica therefore keeps all tickets in memory, indexed by id, by "free", and by seller:
//! - **Filled** by one scan of the collection at start (in the background: until it is done, reads
//!   go to the database as before), while following `ticket:created` and `ticket:updated` from a
//!   replay window before the scan, so nothing committed meanwhile or just before is missed.
//! - **Kept current** by those events from every replica (an ordered consumer per process, see
//!   `common::bus::follow`) and, at once, by this replica's own writes. A ticket only ever moves to
//!   a higher version, so duplicates, replays and the scan racing the events cannot roll it back.
//! - **Read-your-writes whichever replica answers**: a writer records its latest ticket versions
//!   under its user id (`recent_writes`, keyed by `_id`); a signed-in reader's request first brings
//!   those tickets up to date from the database (one `_id` lookup, more only when behind).
//! - **Reservations stay the orders service's call**: a listing may show a ticket reserved a few
//!   milliseconds ago as free; `POST /api/orders` claims tickets with a unique key and refuses it.
//!
//! Memory: about 200 bytes per ticket (100,000 tickets ≈ 20 MB per replica).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use common::bus::{DUPLICATE_WINDOW, EventBus, Followed};
use common::events::{Event, TicketCreated, TicketUpdated};
use common::server::{Background, ReadinessDetails};
use common::store::{Bounded as _, StoreError, VersionedStore};
use futures::StreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::{Ticket, TicketView};

/// How many of a writer's latest tickets a reader brings up to date.
const RECENT_WRITES: usize = 10;
/// The wait before filling the model again after the database or the bus failed.
const REFILL_DELAY: Duration = Duration::from_secs(1);
/// How far back the model's following starts (see `follow`): the stream's duplicate window, plus a
/// margin for the clocks of the broker and this replica.
const REPLAY: Duration = Duration::from_secs(DUPLICATE_WINDOW.as_secs() + 60);
/// The longest the start-up scan may take (about 1 s per 10,000 tickets on FerretDB/SQLite).
const SCAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Every ticket, with the indexes the reads need.
#[derive(Default)]
struct Tickets {
    by_id: BTreeMap<ObjectId, Ticket>,
    free: BTreeSet<ObjectId>,
    by_seller: HashMap<String, BTreeSet<ObjectId>>,
    /// The whole public listing as sent (the SPEC's array), rendered once per change: most reads
    /// are of it, and rendering a long listing costs more than the rest of the request.
    free_json: Option<Bytes>,
}

impl Tickets {
    /// Keeps `ticket` if it is newer than what is known of it. `true` if it was.
    fn apply(&mut self, ticket: Ticket) -> bool {
        if let Some(known) = self.by_id.get(&ticket.id)
            && known.version >= ticket.version
        {
            return false;
        }
        if ticket.order_id.is_none() {
            self.free.insert(ticket.id);
        } else {
            self.free.remove(&ticket.id);
        }
        // The seller never changes, so the seller's index only ever gains tickets.
        self.by_seller
            .entry(ticket.user_id.clone())
            .or_default()
            .insert(ticket.id);
        self.by_id.insert(ticket.id, ticket);
        self.free_json = None;
        true
    }

    /// [`Self::apply`] for a ticket the model has (at any version).
    fn apply_if_known(&mut self, ticket: Ticket) -> bool {
        self.by_id.contains_key(&ticket.id) && self.apply(ticket)
    }

    /// The public listing as JSON, rendered if a change made the last rendering stale.
    fn free_json(&mut self) -> Result<Bytes, serde_json::Error> {
        if let Some(json) = &self.free_json {
            return Ok(json.clone());
        }
        let views: Vec<TicketView> = self
            .free
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .map(Ticket::view)
            .collect();
        let json = Bytes::from(serde_json::to_vec(&views)?);
        self.free_json = Some(json.clone());
        Ok(json)
    }

    /// Up to `limit` tickets of `ids` after `after` whose title contains `title` (any case), in id
    /// order: the same answer as the database's listing query.
    fn page<'a>(
        &self,
        ids: impl Iterator<Item = &'a ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Vec<Ticket> {
        let needle = title.map(str::to_lowercase);
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(0));
        ids.filter_map(|id| self.by_id.get(id))
            .filter(|ticket| {
                needle
                    .as_deref()
                    .is_none_or(|needle| ticket.title.to_lowercase().contains(needle))
            })
            .take(limit)
            .cloned()
            .collect()
    }
}

fn after_bound(after: Option<ObjectId>) -> (Bound<ObjectId>, Bound<ObjectId>) {
    match after {
        Some(after) => (Bound::Excluded(after), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// A writer's latest tickets, stored under its user id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RecentWrites {
    #[serde(rename = "_id")]
    user_id: String,
    tickets: Vec<WrittenVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WrittenVersion {
    id: ObjectId,
    version: i64,
}

/// The read model. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct TicketCatalog {
    tickets: Arc<RwLock<Tickets>>,
    /// Filled and following the events: reads may be answered from memory.
    live: Arc<AtomicBool>,
    recent_writes: Collection<RecentWrites>,
}

impl TicketCatalog {
    pub fn new(db: &Database) -> Self {
        Self {
            tickets: Arc::default(),
            live: Arc::default(),
            recent_writes: db.collection("recent_writes"),
        }
    }

    /// Whether reads can be answered from memory.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Tickets> {
        // A panic while holding the lock cannot leave `Tickets` half-changed in a way that matters
        // more than losing the whole model, so a poisoned lock is used as it is.
        self.tickets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tickets> {
        self.tickets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `readModel` in `/readyz`: whether reads are answered from memory yet, and how many tickets
    /// it holds. Also exported as the `read_model_tickets` and `read_model_live` gauges.
    pub fn details(&self) -> ReadinessDetails {
        let catalog = self.clone();
        Arc::new(move || {
            let (live, count) = (catalog.is_live(), catalog.read().by_id.len());
            metrics::gauge!("read_model_live", "model" => "tickets").set(if live {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("read_model_tickets", "model" => "tickets").set(count as f64);
            let state = if live { "live" } else { "filling" };
            let mut details = serde_json::Map::new();
            details.insert(
                "readModel".to_owned(),
                serde_json::json!({ "state": state, "tickets": count }),
            );
            Box::pin(async move { details })
        })
    }

    /// Takes in a ticket read from the database or just written: kept if newer than the model's.
    pub fn apply(&self, ticket: &Ticket) {
        self.write().apply(ticket.clone());
    }

    /// The whole public listing, as JSON: the body `GET /api/tickets` answers without paging.
    pub fn free_json(&self) -> Result<Bytes, serde_json::Error> {
        if let Some(json) = &self.read().free_json {
            return Ok(json.clone());
        }
        self.write().free_json()
    }

    pub fn get(&self, id: ObjectId) -> Option<Ticket> {
        self.read().by_id.get(&id).cloned()
    }

    /// As `TicketStore::list_available`.
    pub fn list_free(
        &self,
        after: Option<ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Vec<Ticket> {
        let tickets = self.read();
        tickets.page(tickets.free.range(after_bound(after)), title, limit)
    }

    /// As `TicketStore::list_owned`.
    pub fn list_owned(
        &self,
        user_id: &str,
        after: Option<ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Vec<Ticket> {
        let tickets = self.read();
        match tickets.by_seller.get(user_id) {
            Some(ids) => tickets.page(ids.range(after_bound(after)), title, limit),
            None => Vec::new(),
        }
    }

    /// Records that `user_id` wrote `ticket`, so that its next read on any replica includes it.
    /// A lost race between two writes of the same user at the same moment can drop one entry: that
    /// ticket then shows once its event arrives (milliseconds), which is why this never fails a write.
    pub async fn remember_write(&self, user_id: &str, ticket: &Ticket) {
        let written = WrittenVersion {
            id: ticket.id,
            version: ticket.version,
        };
        let result = async {
            let mut recent = self
                .recent_writes
                .find_one(doc! { "_id": user_id })
                .bounded()
                .await?
                .unwrap_or_else(|| RecentWrites {
                    user_id: user_id.to_owned(),
                    tickets: Vec::new(),
                });
            recent.tickets.retain(|known| known.id != written.id);
            recent.tickets.push(written);
            let excess = recent.tickets.len().saturating_sub(RECENT_WRITES);
            recent.tickets.drain(..excess);
            self.recent_writes
                .replace_one(doc! { "_id": user_id }, &recent)
                .upsert(true)
                .bounded()
                .await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, ticket_id = %ticket.id, "could not record a recent write; other replicas show it when its event arrives");
        }
    }

    /// Brings the tickets `user_id` wrote last up to date, reading from the database those the
    /// model has at an older version (usually none: one `_id` lookup).
    pub async fn catch_up_with(
        &self,
        user_id: &str,
        store: &VersionedStore<Ticket>,
    ) -> Result<(), StoreError> {
        let Some(recent) = self
            .recent_writes
            .find_one(doc! { "_id": user_id })
            .bounded()
            .await?
        else {
            return Ok(());
        };
        let behind: Vec<ObjectId> = {
            let tickets = self.read();
            recent
                .tickets
                .iter()
                .filter(|written| {
                    tickets
                        .by_id
                        .get(&written.id)
                        .is_none_or(|known| known.version < written.version)
                })
                .map(|written| written.id)
                .collect()
        };
        for id in behind {
            if let Some(ticket) = store.get(Bson::ObjectId(id)).await? {
                self.apply(&ticket);
            }
        }
        Ok(())
    }

    /// Fills the model and keeps it following the events until `background` stops, filling it
    /// again whenever the following broke (it may have missed events then).
    pub fn spawn(
        &self,
        background: &mut Background,
        bus: &EventBus,
        store: &VersionedStore<Ticket>,
    ) {
        let store = store.clone();
        let catalog = self.clone();
        let bus = bus.clone();
        let stop = background.token();
        background.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Err(err) = catalog.follow(&bus, &store, &stop).await {
                    tracing::warn!(error = format!("{err:#}"), "the ticket read model stopped following the events; reads go to the database until it is filled again");
                }
                catalog.live.store(false, Ordering::Release);
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(REFILL_DELAY) => {}
                }
            }
        }));
    }

    async fn follow(
        &self,
        bus: &EventBus,
        store: &VersionedStore<Ticket>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        // A lost connection may have lost the ordered consumers with it (the server keeps them in
        // memory), and noticing that takes them seconds: from the loss on, reads go to the
        // database until the model is filled again.
        let mut disconnections = bus.disconnections();
        disconnections.mark_unchanged();
        // Following first, scanning second: whatever is committed during the scan arrives as an event.
        // The follow starts a replay window back: a writer publishes while it writes the record (or
        // stopped in between, leaving it to the relay, whose republishing within the stream's
        // duplicate window is dropped as a duplicate), so the scan may read a ticket older than an
        // event sent before following began. A replayed event only updates a ticket the scan
        // found: a ticket's record is inserted before its creation is published, so one the scan
        // does not know was removed from the database since (the benchmark empties it).
        // A creation is the ticket's first state, free: read both subjects as that state.
        let created = bus.follow::<TicketCreated>(REPLAY).await?.map(|followed| {
            followed.map(|f| Followed {
                replayed: f.replayed,
                event: TicketUpdated {
                    id: f.event.id,
                    version: f.event.version,
                    title: f.event.title,
                    price: f.event.price,
                    user_id: f.event.user_id,
                    order_id: None,
                },
            })
        });
        let updated = bus.follow::<TicketUpdated>(REPLAY).await?;
        let mut events = futures::stream::select(created, updated).map(|followed| {
            followed.map(|Followed { event: e, replayed }| {
                let ticket = Ticket {
                    id: e.id.oid(),
                    title: e.title,
                    price_cents: e.price.cents(),
                    user_id: e.user_id,
                    version: e.version,
                    order_id: e.order_id,
                };
                (ticket, replayed)
            })
        });
        // Replayed events that came before the scan's answer, kept for it.
        let mut replayed_early: Vec<Ticket> = Vec::new();
        // Every ticket: the one read that costs O(history), once per start (so not bounded by the
        // operation timeout, which is sized for reads of one result).
        let scan = async {
            let cursor = store.records().find(doc! {}).await?;
            anyhow::Ok(futures::TryStreamExt::try_collect::<Vec<Ticket>>(cursor).await?)
        };
        let mut scanned = std::pin::pin!(tokio::time::timeout(SCAN_TIMEOUT, scan));
        let mut filled = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = disconnections.changed() => anyhow::bail!("the connection to NATS was lost"),
                result = &mut scanned, if !filled => {
                    let all = result.map_err(|_| anyhow::anyhow!("reading every ticket took over {SCAN_TIMEOUT:?}"))??;
                    let count = all.len();
                    let mut tickets = self.write();
                    for ticket in all {
                        tickets.apply(ticket);
                    }
                    for ticket in replayed_early.drain(..) {
                        tickets.apply_if_known(ticket);
                    }
                    drop(tickets);
                    filled = true;
                    self.live.store(true, Ordering::Release);
                    tracing::info!(tickets = count, "ticket read model filled");
                }
                event = events.next() => match event {
                    Some(Ok((ticket, false))) => {
                        self.write().apply(ticket);
                    }
                    Some(Ok((ticket, true))) if !filled => replayed_early.push(ticket),
                    Some(Ok((ticket, true))) => {
                        self.write().apply_if_known(ticket);
                    }
                    // A payload no version of this service wrote: it says nothing about a ticket.
                    Some(Err(err)) => tracing::warn!(error = format!("{err:#}"), subjects = %format!("{}, {}", TicketCreated::SUBJECT, TicketUpdated::SUBJECT), "skipping an event the read model cannot read"),
                    None => anyhow::bail!("the event feed ended"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(title: &str, user: &str, version: i64, order: bool) -> Ticket {
        Ticket {
            id: ObjectId::new(),
            title: title.to_owned(),
            price_cents: 100,
            user_id: user.to_owned(),
            version,
            order_id: order.then(common::events::Id::new),
        }
    }

    #[test]
    fn a_ticket_only_moves_to_a_higher_version() {
        let mut tickets = Tickets::default();
        let first = ticket("Gig", "u1", 1, false);
        let reserved = Ticket {
            version: 2,
            order_id: Some(common::events::Id::new()),
            ..first.clone()
        };
        assert!(tickets.apply(reserved.clone()));
        assert!(!tickets.apply(first.clone()), "an older version came late");
        assert!(!tickets.apply(reserved.clone()), "a duplicate");
        assert_eq!(tickets.by_id[&first.id], reserved);
        assert!(tickets.free.is_empty());

        let released = Ticket {
            version: 3,
            order_id: None,
            ..reserved
        };
        assert!(tickets.apply(released));
        assert_eq!(tickets.free.iter().collect::<Vec<_>>(), vec![&first.id]);
    }

    #[test]
    fn pages_follow_ids_and_match_titles_in_any_case() {
        let mut tickets = Tickets::default();
        let all: Vec<Ticket> = ["Rock night", "Jazz", "ROCK day", "Opera", "rock"]
            .iter()
            .map(|title| ticket(title, "u1", 0, false))
            .collect();
        for t in &all {
            tickets.apply(t.clone());
        }
        tickets.apply(Ticket {
            version: 1,
            order_id: Some(common::events::Id::new()),
            ..all[4].clone()
        });
        let titles = |page: Vec<Ticket>| page.into_iter().map(|t| t.title).collect::<Vec<_>>();

        let free = tickets.page(tickets.free.range(after_bound(None)), Some("rOcK"), None);
        assert_eq!(titles(free), ["Rock night", "ROCK day"]);
        let second = tickets.page(
            tickets.free.range(after_bound(Some(all[0].id))),
            None,
            Some(2),
        );
        assert_eq!(titles(second), ["Jazz", "ROCK day"]);
        let owned = tickets.page(
            tickets.by_seller["u1"].range(after_bound(Some(all[2].id))),
            None,
            None,
        );
        assert_eq!(titles(owned), ["Opera", "rock"]);
    }

    #[test]
    fn the_rendered_listing_is_the_free_tickets_as_the_api_sends_them_and_follows_changes() {
        let mut tickets = Tickets::default();
        let free = ticket("Gig", "u1", 0, false);
        tickets.apply(free.clone());
        tickets.apply(ticket("Show", "u2", 1, true));
        let json = |tickets: &mut Tickets| -> serde_json::Value {
            serde_json::from_slice(&tickets.free_json().expect("rendered")).expect("JSON")
        };
        assert_eq!(json(&mut tickets), serde_json::json!([free.view()]));

        tickets.apply(Ticket {
            version: 1,
            order_id: Some(common::events::Id::new()),
            ..free
        });
        assert_eq!(json(&mut tickets), serde_json::json!([]));
    }
}
