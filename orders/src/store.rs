//! This service's documents: orders (versioned, with their outbox) and the replica of tickets that
//! the tickets service announces.
//!
//! An order claims its ticket through `reservation`, a field under a unique index that holds the
//! ticket id while the order is live and `released:<order id>` once it is cancelled
//! (`shared/CONSISTENCY.md`, pattern 1). Creating an order is therefore a single insert that either
//! wins the ticket or fails with a duplicate key; nothing checks first and inserts later.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::bus::EventBus;
use common::events::{
    Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef,
};
use common::money::Price;
use common::store::{
    Bounded as _, Committed, Decision, IndexKind, PendingEvent, StoreError, VersionedStore,
    ensure_index, is_duplicate_key,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

pub const ORDERS_COLLECTION: &str = "orders";
pub const TICKETS_COLLECTION: &str = "tickets";
/// Who last won or was last found holding a reservation: a hint that spares losing buyers a search.
pub const HOLDERS_COLLECTION: &str = "reservation_holders";
/// The unique index that makes a ticket's reservation exclusive.
pub const RESERVATION_INDEX: &str = "reservation_unique";
pub const USER_INDEX: &str = "user_id";
/// The expiry sweeper's index: orders by status, oldest expiry first.
pub const EXPIRY_INDEX: &str = "status_expires_at";

/// How many times creating an order is attempted when the holder of the ticket turns out to have
/// been released already (see [`OrderStore::create_order`]).
const CREATE_ATTEMPTS: usize = 3;

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

common::versioned_record!(Order, id);

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

/// Orders and the ticket replica. Cheap to clone.
#[derive(Clone)]
pub struct OrderStore {
    orders: VersionedStore<Order>,
    /// The replica: each version claimed by an insert (`tickets_changes`), so a late duplicate
    /// cannot roll it back (CONSISTENCY.md pattern 5).
    tickets: VersionedStore<Ticket>,
    holders: Collection<ReservationHolder>,
}

impl OrderStore {
    pub fn new(db: &Database) -> Self {
        Self {
            orders: VersionedStore::new(db, ORDERS_COLLECTION),
            tickets: VersionedStore::new(db, TICKETS_COLLECTION),
            holders: db.collection(HOLDERS_COLLECTION),
        }
    }

    pub fn orders(&self) -> &VersionedStore<Order> {
        &self.orders
    }

    /// The ticket replica's versioned store (the listeners' way to change it).
    pub fn tickets(&self) -> &VersionedStore<Ticket> {
        &self.tickets
    }

    /// The unique reservation index (the whole point of this service), the per-user index of
    /// `GET /api/orders`, and the outbox index. The replica needs none: it is looked up by `_id`.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let records = self.orders.records();
        for (name, keys, kind) in [
            (
                RESERVATION_INDEX,
                doc! { "reservation": 1 },
                IndexKind::Unique,
            ),
            (USER_INDEX, doc! { "userId": 1 }, IndexKind::Plain),
            (
                EXPIRY_INDEX,
                doc! { "status": 1, "expiresAt": 1 },
                IndexKind::Plain,
            ),
        ] {
            ensure_index(records, name, keys, kind).await?;
        }
        self.orders.ensure_indexes().await
    }

    /// Orders still `created` whose window closed before `before`, oldest first, at most `limit`
    /// (the expiry sweeper's query).
    pub async fn overdue(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        let before = mongodb::bson::DateTime::from_millis(before.timestamp_millis());
        Ok(common::store::find_all(
            self.orders
                .records()
                .find(doc! {
                    "status": OrderStatus::Created.as_str(),
                    "expiresAt": { "$lt": before },
                })
                .sort(doc! { "expiresAt": 1 })
                .limit(limit),
        )
        .await?)
    }

    /// The replica of a ticket, with any version a crash left half-applied finished first.
    pub async fn find_ticket(&self, id: ObjectId) -> Result<Option<Ticket>, StoreError> {
        self.tickets.get(Bson::ObjectId(id)).await
    }

    /// The replica tickets of `orders`, by id, in one query.
    pub async fn tickets_of(
        &self,
        orders: &[Order],
    ) -> mongodb::error::Result<HashMap<Id, Ticket>> {
        let mut ids: Vec<ObjectId> = orders.iter().map(|order| order.ticket_id.oid()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let tickets: Vec<Ticket> =
            common::store::find_all(self.tickets.records().find(doc! { "_id": { "$in": ids } }))
                .await?;
        Ok(tickets
            .into_iter()
            .map(|ticket| (ticket.id.into(), ticket))
            .collect())
    }

    /// A user's orders, oldest first (ObjectIds start with their creation time).
    pub async fn orders_of_user(&self, user_id: &str) -> mongodb::error::Result<Vec<Order>> {
        common::store::find_all(
            self.orders
                .records()
                .find(doc! { "userId": user_id })
                .sort(doc! { "_id": 1 }),
        )
        .await
    }

    /// Inserts `order` (version 0) with its events. [`StoreError::Duplicate`] means another live
    /// order holds the ticket.
    ///
    /// The insert alone decides. Only after it failed do we look at the holder: if its release was
    /// committed but not yet written to its record (a crash between the two writes of a commit),
    /// reading it through the store completes the release, and the insert is tried again.
    /// The winner records itself as the holder, so that losers need not search for it.
    pub async fn create_order(
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

    /// Whether a live order holds `reservation`, after bringing its holder up to date.
    async fn still_reserved(&self, reservation: &str) -> Result<bool, StoreError> {
        if let Some(hint) = self
            .holders
            .find_one(doc! { "_id": reservation })
            .bounded()
            .await?
            && self.holds(hint.order_id, reservation).await?
        {
            return Ok(true);
        }
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
        if !self.holds(holder.id, reservation).await? {
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
        match self
            .holders
            .replace_one(doc! { "_id": reservation }, &hint)
            .upsert(true)
            .await
        {
            Ok(_) => {}
            // Recorded by someone else at the same moment (FerretDB's upsert is not atomic).
            Err(err) if is_duplicate_key(&err) => {}
            // Only a shortcut for later buyers; the answer stands without it.
            Err(err) => {
                tracing::warn!(reservation, error = %err, "could not record the reservation holder");
            }
        }
    }

    /// Whether order `id`, brought up to date, holds `reservation`.
    async fn holds(&self, id: ObjectId, reservation: &str) -> Result<bool, StoreError> {
        let current = self.orders.get(Bson::ObjectId(id)).await?;
        Ok(current.is_some_and(|order| order.reservation == reservation))
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
