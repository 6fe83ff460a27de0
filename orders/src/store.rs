//! This service's documents: orders (versioned, with their outbox) and the replica of tickets that
//! the tickets service announces.
//!
//! An order claims its ticket through `reservation`, a field under a unique index that holds the
//! ticket id while the order is live and `released:<order id>` once it is cancelled
//! (`shared/CONSISTENCY.md`, pattern 1). Creating an order is therefore a single insert that either
//! wins the ticket or fails with a duplicate key; nothing checks first and inserts later.
//!
//! FerretDB's SQLite backend looks documents up by index only for a filter of `_id` alone; any
//! other filter decodes the whole collection. So what a hot path needs is kept under `_id` keys,
//! written before the order so that a crash leaves at most an entry without its order, which
//! readers skip: a user's order ids ([`UserOrders`], `user_orders`), and a marker per order that can
//! still expire (`order_expiries`, what the expiry sweeper reads).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::bus::EventBus;
use common::events::{
    Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef,
};
use common::money::Price;
use common::store::{
    Bounded as _, Committed, Decision, IndexKind, MIGRATIONS_COLLECTION, PendingEvent, StoreError,
    VersionedRecord, VersionedStore, ensure_index, is_duplicate_key,
};
use futures::{StreamExt as _, TryStreamExt as _};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::recent::{Recent, Remembered};

pub const ORDERS_COLLECTION: &str = "orders";
pub const TICKETS_COLLECTION: &str = "tickets";
/// Who last won or was last found holding a reservation: a hint that spares losing buyers a search.
pub const HOLDERS_COLLECTION: &str = "reservation_holders";
/// The unique index that makes a ticket's reservation exclusive.
pub const RESERVATION_INDEX: &str = "reservation_unique";
/// Each user's order ids, under the user id (`GET /api/orders`).
pub const USER_ORDERS_COLLECTION: &str = "user_orders";
/// A marker per order that may still expire, under the order id (the expiry sweeper's work list).
pub const EXPIRIES_COLLECTION: &str = "order_expiries";
/// The expiry markers by expiry (MongoDB; FerretDB reads the whole, small, collection).
pub const EXPIRY_INDEX: &str = "expires_at";
/// The one-time copy of orders written before `user_orders` and `order_expiries` existed.
const INDEXES_BACKFILL: &str = "user_orders-and-order_expiries-from-orders";
/// How many orders or tickets one listing reads at once.
const LISTING_CONCURRENCY: usize = 8;
/// How long past its expiry a marker whose order is missing is kept: the order's insert, made right
/// after the marker, may be stalled (a paused database) and land late.
const DANGLING_EXPIRY_AGE: Duration = Duration::from_secs(600);

/// How many times creating an order is attempted when the holder of the ticket turns out to have
/// been released already (see [`OrderStore::reserve_ticket`]).
const CREATE_ATTEMPTS: usize = 3;

/// How many locks buyers of the same ticket queue on in one process (see [`ClaimQueue`]).
const CLAIM_QUEUE_STRIPES: usize = 1024;

/// Buyers of one ticket take turns within a process, so that in a flash sale the first writes its
/// order and the others, behind it, are refused without writing (and taking back) a user entry, an
/// expiry marker and an order each. Only a shortcut: the unique reservation index still decides,
/// across processes and replicas. Striped (tickets sharing a stripe share a turn) so that it needs
/// no clean-up; each stripe remembers the last holder seen in it.
#[derive(Clone)]
struct ClaimQueue {
    stripes: Arc<[tokio::sync::Mutex<Option<SeenHolder>>]>,
    hasher: RandomState,
}

/// An order seen holding a reservation: by this process's winning insert, or by a read of the
/// order through the store. `seen_at` is when that insert or read was sent: the order held the
/// reservation at some moment after it, at version `version`.
struct SeenHolder {
    reservation: String,
    order_id: ObjectId,
    version: i64,
    seen_at: Instant,
}

impl ClaimQueue {
    fn new() -> Self {
        Self {
            stripes: (0..CLAIM_QUEUE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for the turn on `reservation`; held until the guard is dropped (also when the request
    /// is dropped half-way).
    async fn turn(&self, reservation: &str) -> tokio::sync::MutexGuard<'_, Option<SeenHolder>> {
        let stripe = self.hasher.hash_one(reservation) as usize % self.stripes.len();
        // In range: a remainder of the length.
        self.stripes[stripe].lock().await
    }
}

/// What [`OrderStore::reserve_ticket`] did.
#[derive(Debug)]
pub enum Reservation {
    /// The order was written and holds the ticket.
    Created { order: Order, ticket: Ticket },
    /// A live order holds the ticket.
    Taken,
    /// No such ticket in the replica.
    UnknownTicket,
}

/// The orders service's copy of a ticket, under the ticket's own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub title: String,
    /// In cents.
    pub price: i64,
    pub version: i64,
}

common::versioned_record!(Ticket, id);

impl Ticket {
    pub fn price(&self) -> Price {
        Price::from_cents(self.price)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub user_id: String,
    pub status: OrderStatus,
    #[serde(with = "bson_datetime")]
    pub expires_at: DateTime<Utc>,
    pub version: i64,
    pub ticket_id: Id,
    /// Unique: the ticket id while the order holds its ticket, `released:<order id>` afterwards.
    pub reservation: String,
    /// Set when the order was cancelled while it was being paid and the charge was refunded
    /// (`payment:updated` with status `refunded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Refund>,
}

/// A charge of a cancelled order that the payments service refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    pub payment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_id: Option<String>,
}

impl VersionedRecord for Order {
    fn key(&self) -> Bson {
        Bson::ObjectId(self.id)
    }

    fn record_id(&self) -> String {
        self.id.to_hex()
    }

    fn version(&self) -> i64 {
        self.version
    }

    /// A paid order never changes again (a cancelled one still records its refund).
    fn is_final(&self) -> bool {
        self.status == OrderStatus::Complete
    }
}

/// The reservation value of an order in `status`: every live status claims the ticket.
pub fn reservation(status: OrderStatus, order_id: &ObjectId, ticket_id: Id) -> String {
    if status.reserves_ticket() {
        ticket_id.to_string()
    } else {
        format!("released:{}", order_id.to_hex())
    }
}

impl Order {
    /// A new order (version 0, `created`) for `ticket`.
    pub fn new(user_id: &str, ticket: &Ticket, expires_at: DateTime<Utc>) -> Self {
        let id = ObjectId::new();
        let ticket_id = Id::from(ticket.id);
        Self {
            id,
            user_id: user_id.to_owned(),
            status: OrderStatus::Created,
            expires_at,
            version: 0,
            reservation: reservation(OrderStatus::Created, &id, ticket_id),
            ticket_id,
            refund: None,
        }
    }

    /// The next version of this order in `status`, with the reservation that status implies.
    pub fn with_status(&self, status: OrderStatus) -> Self {
        Self {
            status,
            version: self.version + 1,
            reservation: reservation(status, &self.id, self.ticket_id),
            ..self.clone()
        }
    }

    pub fn created_event(&self, price: Price) -> OrderCreated {
        OrderCreated {
            id: self.id.into(),
            version: self.version,
            status: self.status,
            user_id: self.user_id.clone(),
            expires_at: self.expires_at,
            ticket: OrderCreatedTicket {
                id: self.ticket_id,
                price,
            },
        }
    }

    pub fn cancelled_event(&self) -> OrderCancelled {
        OrderCancelled {
            id: self.id.into(),
            version: self.version,
            ticket: TicketRef { id: self.ticket_id },
        }
    }
}

/// The one way an order is cancelled (by its owner or by expiry): status `cancelled`, the ticket
/// released, version + 1, and `order:cancelled` in the same commit.
pub fn cancellation(current: &Order) -> Result<Decision<Order>, StoreError> {
    let next = current.with_status(OrderStatus::Cancelled);
    let events = vec![PendingEvent::of(&next.cancelled_event())?];
    Ok(Decision::Commit { next, events })
}

/// The order that last won, or was last found holding, a reservation (`_id`). Only a hint: it is
/// believed only after the order itself, read through the store, still holds the reservation, and
/// the unique index alone decides who wins. It exists because FerretDB looks documents up by index
/// only for a filter of `_id` alone: finding the holder by `reservation` reads every order, which is
/// what each of a flash sale's many losing buyers would otherwise do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReservationHolder {
    #[serde(rename = "_id")]
    reservation: String,
    order_id: ObjectId,
}

/// A user's order ids, oldest first: the `_id`-keyed index of `GET /api/orders`. Versioned, so two
/// orders a user places at once cannot overwrite each other's entry. An id whose order does not
/// exist (its create lost the ticket, or crashed before the order was written) is skipped by readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOrders {
    #[serde(rename = "_id")]
    pub user_id: String,
    pub order_ids: Vec<ObjectId>,
    pub version: i64,
}

impl VersionedRecord for UserOrders {
    fn key(&self) -> Bson {
        Bson::String(self.user_id.clone())
    }

    fn record_id(&self) -> String {
        self.user_id.clone()
    }

    fn version(&self) -> i64 {
        self.version
    }
}

/// An order that may still expire: written before the order, deleted by the sweeper once the order
/// is no longer `created`. Only a work list: the order itself, read through the store, decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryMarker {
    #[serde(rename = "_id")]
    pub order_id: ObjectId,
    #[serde(with = "bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Migration {
    #[serde(rename = "_id")]
    name: String,
    at: mongodb::bson::DateTime,
}

/// Orders and the ticket replica. Cheap to clone.
#[derive(Clone)]
pub struct OrderStore {
    orders: VersionedStore<Order>,
    /// The replica: each version claimed by an insert (`tickets_changes`), so a late duplicate
    /// cannot roll it back (CONSISTENCY.md pattern 5).
    tickets: VersionedStore<Ticket>,
    holders: Collection<ReservationHolder>,
    user_orders: VersionedStore<UserOrders>,
    expiries: Collection<ExpiryMarker>,
    migrations: Collection<Migration>,
    claims: ClaimQueue,
    /// The orders this process created, showed or changed lately, as it last saw them. Whose an
    /// order is and which ticket it holds never change, so a remembered order answers those without
    /// a read; a listener that changes an order can start from it (a copy someone has moved past
    /// only loses its version claim, then the order is read); and a paid order never changes again.
    recent: Recent<Order>,
    /// Each ticket of the replica as this process last read or applied it lately: a read of the
    /// ticket then only asks whether a change came after it (`VersionedStore::newest_from`).
    recent_tickets: Recent<RememberedTicket>,
}

/// How many orders this process remembers (a few MB at most), and how many tickets.
const REMEMBERED: u64 = 10_000;

impl Remembered for Order {
    fn recent_id(&self) -> ObjectId {
        self.id
    }

    fn recent_version(&self) -> i64 {
        self.version
    }
}

/// A ticket of the replica as seen, and which order holds it at that version when this process
/// learned it from the ticket's own `ticket:updated` (the replica does not keep it).
#[derive(Debug, Clone)]
pub struct RememberedTicket {
    pub ticket: Ticket,
    pub held_by: Option<ObjectId>,
}

impl Remembered for RememberedTicket {
    fn recent_id(&self) -> ObjectId {
        self.ticket.id
    }

    fn recent_version(&self) -> i64 {
        self.ticket.version
    }

    fn adds_to(&self, kept: &Self) -> bool {
        self.held_by.is_some() && kept.held_by.is_none()
    }
}

impl OrderStore {
    pub fn new(db: &Database) -> Self {
        let recent = Recent::new(REMEMBERED);
        // An order is remembered as soon as its new version is claimed, before the record write:
        // a buyer polling their paid order is then answered from memory at once.
        let orders = VersionedStore::new(db, ORDERS_COLLECTION).on_claimed({
            let recent = recent.clone();
            move |order: &Order| recent.remember(order)
        });
        Self {
            orders,
            tickets: VersionedStore::new(db, TICKETS_COLLECTION),
            holders: db.collection(HOLDERS_COLLECTION),
            user_orders: VersionedStore::new(db, USER_ORDERS_COLLECTION),
            expiries: db.collection(EXPIRIES_COLLECTION),
            migrations: db.collection(MIGRATIONS_COLLECTION),
            claims: ClaimQueue::new(),
            recent,
            recent_tickets: Recent::new(REMEMBERED),
        }
    }

    /// Order `id` as this process last saw it, if it did lately: for what never changes (its
    /// buyer, its ticket), or as the base of a change.
    pub fn recent_order(&self, id: ObjectId) -> Option<Order> {
        self.recent.get(id)
    }

    /// Remembers `order` as seen now.
    pub fn remember(&self, order: &Order) {
        self.recent.remember(order);
    }

    /// The index of users' orders (for tests).
    pub fn user_orders(&self) -> &VersionedStore<UserOrders> {
        &self.user_orders
    }

    pub fn orders(&self) -> &VersionedStore<Order> {
        &self.orders
    }

    /// The ticket replica's versioned store (the listeners' way to change it).
    pub fn tickets(&self) -> &VersionedStore<Ticket> {
        &self.tickets
    }

    /// The unique reservation index (the whole point of this service), the expiry markers' index
    /// and the outbox's. Everything else is looked up by `_id`.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        ensure_index(
            self.orders.records(),
            RESERVATION_INDEX,
            doc! { "reservation": 1 },
            IndexKind::Unique,
        )
        .await?;
        ensure_index(
            &self.expiries,
            EXPIRY_INDEX,
            doc! { "expiresAt": 1 },
            IndexKind::Plain,
        )
        .await?;
        self.orders.ensure_indexes().await
    }

    /// Enters every order written before `user_orders` and `order_expiries` existed into them,
    /// once per database. Reads all orders (run at start, never per request); idempotent, and
    /// marked done only once complete, so a start cut short runs it again.
    pub async fn backfill(&self, bus: &EventBus) -> Result<usize, StoreError> {
        if self
            .migrations
            .find_one(doc! { "_id": INDEXES_BACKFILL })
            .bounded()
            .await?
            .is_some()
        {
            return Ok(0);
        }
        let mut by_user: BTreeMap<String, Vec<ObjectId>> = BTreeMap::new();
        // Not bounded as a whole: a long history may take more than one operation timeout.
        let mut orders = self.orders.records().find(doc! {}).await?;
        let mut entered = 0;
        while let Some(order) = orders.try_next().await? {
            if order.status == OrderStatus::Created {
                self.mark_expiry(&order).await?;
            }
            by_user.entry(order.user_id).or_default().push(order.id);
            entered += 1;
        }
        // Most users have no entry yet: one insert each, a few at once.
        futures::stream::iter(by_user)
            .map(|(user_id, ids)| async move {
                let first = UserOrders {
                    user_id: user_id.clone(),
                    order_ids: ids.clone(),
                    version: 0,
                };
                if self.user_orders.create_replica(&first).await? {
                    return Ok(());
                }
                self.add_to_user(bus, &user_id, &ids).await
            })
            .buffer_unordered(LISTING_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let done = Migration {
            name: INDEXES_BACKFILL.to_owned(),
            at: mongodb::bson::DateTime::now(),
        };
        match self.migrations.insert_one(&done).bounded().await {
            Ok(_) => {}
            // Another replica finished it at the same moment.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(entered)
    }

    /// Adds `ids` to the user's order ids (those not there yet), creating the entry on the first.
    async fn add_to_user(
        &self,
        bus: &EventBus,
        user_id: &str,
        ids: &[ObjectId],
    ) -> Result<(), StoreError> {
        let key = Bson::String(user_id.to_owned());
        for _ in 0..CREATE_ATTEMPTS {
            let added = self
                .user_orders
                .modify(bus, key.clone(), |current: &UserOrders| {
                    let missing: Vec<ObjectId> = ids
                        .iter()
                        .filter(|id| !current.order_ids.contains(id))
                        .copied()
                        .collect();
                    if missing.is_empty() {
                        return Ok(Decision::Unchanged);
                    }
                    let mut next = current.clone();
                    next.order_ids.extend(missing);
                    next.version += 1;
                    Ok(Decision::Commit {
                        next,
                        events: Vec::new(),
                    })
                })
                .await;
            match added {
                Ok(_) => return Ok(()),
                Err(StoreError::NotFound) => {
                    let first = UserOrders {
                        user_id: user_id.to_owned(),
                        order_ids: ids.to_vec(),
                        version: 0,
                    };
                    // `false`: another order of the user created the entry first; add to it.
                    if self.user_orders.create_replica(&first).await? {
                        return Ok(());
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Takes `id` out of the user's order ids (an order that lost its ticket). Best effort: readers
    /// skip an id without an order anyway.
    async fn remove_from_user(&self, bus: &EventBus, user_id: &str, id: ObjectId) {
        let removed = self
            .user_orders
            .modify(
                bus,
                Bson::String(user_id.to_owned()),
                |current: &UserOrders| {
                    if !current.order_ids.contains(&id) {
                        return Ok::<_, StoreError>(Decision::Unchanged);
                    }
                    let mut next = current.clone();
                    next.order_ids.retain(|other| *other != id);
                    next.version += 1;
                    Ok(Decision::Commit {
                        next,
                        events: Vec::new(),
                    })
                },
            )
            .await;
        if let Err(err) = removed {
            tracing::warn!(order_id = %id, error = %err, "could not drop a lost order from its user's list");
        }
    }

    /// Records that `order` may expire (before the order is written).
    async fn mark_expiry(&self, order: &Order) -> Result<(), StoreError> {
        let marker = ExpiryMarker {
            order_id: order.id,
            expires_at: order.expires_at,
        };
        match self.expiries.insert_one(&marker).bounded().await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the expiry marker of an order that can no longer expire (or does not exist).
    pub async fn forget_expiry(&self, order_id: ObjectId) -> Result<(), StoreError> {
        self.expiries
            .delete_one(doc! { "_id": order_id })
            .bounded()
            .await?;
        Ok(())
    }

    /// Expiry markers whose order's window closed before `before`, oldest first, at most `limit`
    /// (the expiry sweeper's work list: O(orders that may still expire), not O(all orders)).
    pub async fn overdue(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ExpiryMarker>, StoreError> {
        let before = mongodb::bson::DateTime::from_millis(before.timestamp_millis());
        Ok(common::store::find_all(
            self.expiries
                .find(doc! { "expiresAt": { "$lt": before } })
                .sort(doc! { "expiresAt": 1 })
                .limit(limit),
        )
        .await?)
    }

    /// Whether a marker whose order is missing is old enough to drop (see [`DANGLING_EXPIRY_AGE`]).
    pub fn is_dangling(marker: &ExpiryMarker, now: DateTime<Utc>) -> bool {
        let age = chrono::Duration::from_std(DANGLING_EXPIRY_AGE).unwrap_or(chrono::Duration::MAX);
        marker.expires_at < now - age
    }

    /// The replica of a ticket, with any version a crash left half-applied finished first.
    pub async fn find_ticket(&self, id: ObjectId) -> Result<Option<Ticket>, StoreError> {
        let ticket = match self.recent_tickets.get(id) {
            Some(known) => Some(self.tickets.newest_from(known.ticket).await?),
            None => self.tickets.get(Bson::ObjectId(id)).await?,
        };
        if let Some(ticket) = &ticket {
            self.remember_ticket(ticket, None);
        }
        Ok(ticket)
    }

    /// Remembers `ticket` of the replica as read or applied just now (unless a later version of it
    /// is remembered already), with the order holding it at that version if the ticket's event
    /// said so: the next [`Self::find_ticket`] starts from it.
    pub fn remember_ticket(&self, ticket: &Ticket, held_by: Option<ObjectId>) {
        self.recent_tickets.remember(&RememberedTicket {
            ticket: ticket.clone(),
            held_by,
        });
    }

    /// The ticket of a paid order from memory alone, once this process has applied the ticket's
    /// reservation by that order: a paid order is never cancelled and a reserved ticket cannot be
    /// edited, so that version of the ticket is its last. `None` otherwise (read it).
    pub fn final_ticket_of(&self, order: &Order) -> Option<Ticket> {
        if !order.is_final() {
            return None;
        }
        self.recent_tickets
            .get(order.ticket_id.oid())
            .filter(|seen| seen.held_by == Some(order.id))
            .map(|seen| seen.ticket)
    }

    /// The replica tickets of `orders`, each looked up by `_id` (a few at once).
    pub async fn tickets_of(
        &self,
        orders: &[Order],
    ) -> mongodb::error::Result<HashMap<Id, Ticket>> {
        let mut ids: Vec<ObjectId> = orders.iter().map(|order| order.ticket_id.oid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let tickets: Vec<Option<Ticket>> = futures::stream::iter(ids)
            .map(|id| {
                self.tickets
                    .records()
                    .find_one(doc! { "_id": id })
                    .bounded()
            })
            .buffer_unordered(LISTING_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(tickets
            .into_iter()
            .flatten()
            .map(|ticket| (ticket.id.into(), ticket))
            .collect())
    }

    /// A user's orders, oldest first (ObjectIds start with their creation time): the user's order
    /// ids, then each order by `_id` (a few at once).
    pub async fn orders_of_user(&self, user_id: &str) -> Result<Vec<Order>, StoreError> {
        let Some(index) = self
            .user_orders
            .get(Bson::String(user_id.to_owned()))
            .await?
        else {
            return Ok(Vec::new());
        };
        let found: Vec<Option<Order>> = futures::stream::iter(index.order_ids)
            .map(|id| self.orders.records().find_one(doc! { "_id": id }).bounded())
            .buffer_unordered(LISTING_CONCURRENCY)
            .try_collect()
            .await?;
        // Missing: an order that lost its ticket or whose insert a crash cut short.
        let mut orders: Vec<Order> = found
            .into_iter()
            .flatten()
            .filter(|order| order.user_id == user_id)
            .collect();
        orders.sort_unstable_by_key(|order| order.id);
        Ok(orders)
    }

    /// Creates an order of `user_id` for ticket `ticket_id`, reserving the ticket for `window`.
    ///
    /// The order's insert alone decides (the unique reservation index). Before it, within one
    /// process, buyers of the ticket take turns ([`ClaimQueue`]) and a buyer is refused without a
    /// write when:
    /// - this process saw a live order holding the ticket after the buyer arrived (its winning
    ///   insert, or another buyer's read): the ticket was held at a moment within the buyer's
    ///   request, so the refusal is an answer the buyer could have had. This is how most of a flash
    ///   sale's losers are answered without touching the database;
    /// - the last holder seen still holds it: one lookup by `_id` of the change that would claim
    ///   its next version, and a read of the order only if that change exists;
    /// - or else the recorded holder, read through the store by `_id`, still holds it.
    ///
    /// The user entry and the expiry marker are written before the order, so that a crash leaves at
    /// most an entry without its order (which readers skip); a lost insert takes them back.
    pub async fn reserve_ticket(
        &self,
        bus: &EventBus,
        user_id: &str,
        ticket_id: ObjectId,
        window: chrono::TimeDelta,
    ) -> Result<Reservation, StoreError> {
        let arrived = Instant::now();
        let reservation = Id::from(ticket_id).to_string();
        let mut turn = self.claims.turn(&reservation).await;
        if let Some(seen) = turn.as_mut().filter(|seen| seen.reservation == reservation) {
            if seen.seen_at > arrived {
                return Ok(Reservation::Taken);
            }
            let reading = Instant::now();
            if let Some(version) = self.still_holding(seen).await? {
                seen.version = version;
                seen.seen_at = reading;
                return Ok(Reservation::Taken);
            }
            *turn = None;
        }
        let reading = Instant::now();
        if let Some((order_id, version)) = self.recorded_holder(&reservation).await? {
            *turn = Some(SeenHolder {
                reservation,
                order_id,
                version,
                seen_at: reading,
            });
            return Ok(Reservation::Taken);
        }
        let Some(ticket) = self.find_ticket(ticket_id).await? else {
            return Ok(Reservation::UnknownTicket);
        };
        let expires_at = Utc::now()
            .checked_add_signed(window)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("expiration date out of range")))?;
        let order = Order::new(user_id, &ticket, expires_at);
        let events = vec![PendingEvent::of(&order.created_event(ticket.price()))?];
        self.add_to_user(bus, &order.user_id, &[order.id]).await?;
        self.mark_expiry(&order).await?;
        let sent = Instant::now();
        match self.insert_order(bus, &order, events).await {
            Ok(_) => {
                self.remember(&order);
                *turn = Some(SeenHolder {
                    reservation,
                    order_id: order.id,
                    version: order.version,
                    seen_at: sent,
                });
                Ok(Reservation::Created { order, ticket })
            }
            Err(StoreError::Duplicate) => {
                self.remove_from_user(bus, &order.user_id, order.id).await;
                if let Err(err) = self.forget_expiry(order.id).await {
                    tracing::warn!(order_id = %order.id, error = %err, "could not drop the expiry marker of a lost order; the sweeper will");
                }
                Ok(Reservation::Taken)
            }
            Err(other) => Err(other),
        }
    }

    /// Inserts `order`; [`StoreError::Duplicate`] means another live order holds the ticket.
    /// Only after a failed insert do we look at the holder: if its release was committed but not
    /// yet written to its record (a crash between the two writes of a commit), reading it through
    /// the store completes the release, and the insert is tried again. The winner records itself
    /// as the holder, so that losers need not search for it.
    async fn insert_order(
        &self,
        bus: &EventBus,
        order: &Order,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        for _ in 0..CREATE_ATTEMPTS {
            match self.orders.create(bus, order, events.clone()).await {
                Err(StoreError::Duplicate) => {
                    if self.still_reserved(&order.reservation).await? {
                        return Err(StoreError::Duplicate);
                    }
                }
                Ok(committed) => {
                    self.record_holder(&order.reservation, order.id).await;
                    return Ok(committed);
                }
                other => return other,
            }
        }
        Err(StoreError::Duplicate)
    }

    /// The holder recorded for `reservation` and the version at which it holds it, if it (brought
    /// up to date) still does.
    async fn recorded_holder(
        &self,
        reservation: &str,
    ) -> Result<Option<(ObjectId, i64)>, StoreError> {
        let Some(hint) = self
            .holders
            .find_one(doc! { "_id": reservation })
            .bounded()
            .await?
        else {
            return Ok(None);
        };
        let holding = self.holding_version(hint.order_id, reservation).await?;
        Ok(holding.map(|version| (hint.order_id, version)))
    }

    /// Whether a live order holds `reservation`, after bringing its holder up to date.
    async fn still_reserved(&self, reservation: &str) -> Result<bool, StoreError> {
        if self.recorded_holder(reservation).await?.is_some() {
            return Ok(true);
        }
        // Only when the hint is missing or stale (a crash or a failed write after a win): a search
        // of every order, after which the hint is recorded again.
        let Some(holder) = self
            .orders
            .records()
            .find_one(doc! { "reservation": reservation })
            .bounded()
            .await?
        else {
            // Released between our insert and this read.
            return Ok(false);
        };
        if self
            .holding_version(holder.id, reservation)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.record_holder(reservation, holder.id).await;
        Ok(true)
    }

    /// Records `order_id` as the holder of `reservation` (a hint: see [`ReservationHolder`]).
    async fn record_holder(&self, reservation: &str, order_id: ObjectId) {
        let hint = ReservationHolder {
            reservation: reservation.to_owned(),
            order_id,
        };
        // An insert first: a ticket's first sale (most of them) needs no read of a previous hint,
        // which an upsert makes on FerretDB.
        let recorded = match self.holders.insert_one(&hint).bounded().await {
            Err(err) if is_duplicate_key(&err) => self
                .holders
                .replace_one(doc! { "_id": reservation }, &hint)
                .bounded()
                .await
                .map(drop),
            other => other.map(drop),
        };
        match recorded {
            Ok(()) => {}
            // Only a shortcut for later buyers; the answer stands without it.
            Err(err) => {
                tracing::warn!(reservation, error = %err, "could not record the reservation holder");
            }
        }
    }

    /// The version at which order `id`, brought up to date, holds `reservation`; `None` if it
    /// does not hold it (or does not exist).
    async fn holding_version(
        &self,
        id: ObjectId,
        reservation: &str,
    ) -> Result<Option<i64>, StoreError> {
        let current = self.orders.get(Bson::ObjectId(id)).await?;
        Ok(current
            .filter(|order| order.reservation == reservation)
            .map(|order| order.version))
    }

    /// The version at which a holder seen earlier holds its reservation now, if it still does.
    /// Most often nothing changed the order since it was seen: then one lookup of the change that
    /// would claim the next version says so, where reading the order through the store takes two.
    /// This is what answers most losers of a flash sale.
    async fn still_holding(&self, seen: &SeenHolder) -> Result<Option<i64>, StoreError> {
        if self
            .orders
            .is_newest(&seen.order_id.to_hex(), seen.version)
            .await?
        {
            return Ok(Some(seen.version));
        }
        self.holding_version(seen.order_id, &seen.reservation).await
    }
}

/// `DateTime<Utc>` stored as a BSON date (milliseconds), so the database can compare and sort it.
mod bson_datetime {
    use chrono::{DateTime, Utc};
    use mongodb::bson;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        bson::DateTime::from_millis(at.timestamp_millis()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let stored = bson::DateTime::deserialize(deserializer)?;
        DateTime::from_timestamp_millis(stored.timestamp_millis())
            .ok_or_else(|| serde::de::Error::custom("date out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            id: ObjectId::new(),
            title: "Concert".into(),
            price: 2050,
            version: 0,
        }
    }

    #[test]
    fn a_new_order_reserves_its_ticket() {
        let ticket = ticket();
        let order = Order::new("u1", &ticket, Utc::now());
        assert_eq!(order.status, OrderStatus::Created);
        assert_eq!(order.version, 0);
        assert_eq!(order.reservation, ticket.id.to_hex());
        assert_eq!(order.ticket_id, ticket.id.to_hex());
    }

    #[test]
    fn only_a_cancelled_order_releases_its_ticket_under_a_value_unique_to_the_order() {
        let ticket = ticket();
        let order = Order::new("u1", &ticket, Utc::now());
        for status in [OrderStatus::AwaitingPayment, OrderStatus::Complete] {
            assert_eq!(order.with_status(status).reservation, ticket.id.to_hex());
        }
        let cancelled = order.with_status(OrderStatus::Cancelled);
        assert_eq!(cancelled.version, 1);
        assert_eq!(
            cancelled.reservation,
            format!("released:{}", order.id.to_hex())
        );
    }

    #[test]
    fn orders_round_trip_through_bson_with_millisecond_dates() -> anyhow::Result<()> {
        let expires_at = DateTime::from_timestamp_millis(1_700_000_000_123)
            .ok_or_else(|| anyhow::anyhow!("date"))?;
        let order = Order::new("u1", &ticket(), expires_at);
        let document = mongodb::bson::to_document(&order)?;
        assert!(matches!(document.get("expiresAt"), Some(Bson::DateTime(_))));
        assert_eq!(document.get_str("status")?, "created");
        assert_eq!(mongodb::bson::from_document::<Order>(document)?, order);
        Ok(())
    }
}
