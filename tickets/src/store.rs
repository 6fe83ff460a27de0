//! Tickets: `{_id, title, priceCents, userId, version, orderId}` kept by a `VersionedStore` (every
//! version claimed by an insert, events stored with the change), plus the tombstones of cancelled
//! orders that let the listeners cope with `order:cancelled` overtaking `order:created`, and the
//! in-memory read model that answers the reads (`catalog.rs`).

use common::bus::EventBus;
use common::events::{Id, TicketCreated, TicketUpdated};
use common::money::Price;
use common::store::{
    Bounded as _, Committed, Decision, IndexKind, PendingEvent, Premark, Settling, StoreError,
    VersionedRecord as _, VersionedStore, ensure_index, has_id, is_duplicate_key,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::catalog::TicketCatalog;

/// A ticket as stored. `orderId` is always written (null when free): FerretDB's indexes and
/// filters behave best with present fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub title: String,
    /// Integer cents: no float drift in storage (SPEC §8.12).
    pub price_cents: i64,
    pub user_id: String,
    pub version: i64,
    pub order_id: Option<Id>,
}

common::versioned_record!(Ticket, id);

/// The ticket JSON of the SPEC: `orderId` only while reserved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketView {
    pub id: String,
    pub title: String,
    pub price: Price,
    pub user_id: String,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Id>,
}

impl Ticket {
    pub fn price(&self) -> Price {
        Price::from_cents(self.price_cents)
    }

    pub fn view(&self) -> TicketView {
        TicketView {
            id: self.id.to_hex(),
            title: self.title.clone(),
            price: self.price(),
            user_id: self.user_id.clone(),
            version: self.version,
            order_id: self.order_id,
        }
    }

    pub fn created_event(&self) -> TicketCreated {
        TicketCreated {
            id: self.id.into(),
            version: self.version,
            title: self.title.clone(),
            price: self.price(),
            user_id: self.user_id.clone(),
        }
    }

    pub fn updated_event(&self) -> TicketUpdated {
        TicketUpdated {
            id: self.id.into(),
            version: self.version,
            title: self.title.clone(),
            price: self.price(),
            user_id: self.user_id.clone(),
            order_id: self.order_id,
        }
    }

    /// The same ticket at the next version with `order_id`, and its `ticket:updated` event.
    pub fn with_order(
        &self,
        order_id: Option<Id>,
    ) -> Result<(Ticket, Vec<PendingEvent>), StoreError> {
        let next = Ticket {
            order_id,
            version: self.version + 1,
            ..self.clone()
        };
        let events = vec![PendingEvent::of(&next.updated_event())?];
        Ok((next, events))
    }
}

/// The tickets collection, its read model and the cancelled-order tombstones. Cheap to clone.
#[derive(Clone)]
pub struct TicketStore {
    tickets: VersionedStore<Ticket>,
    catalog: TicketCatalog,
    cancelled_orders: Collection<Document>,
}

impl TicketStore {
    pub fn new(db: &Database) -> Self {
        Self {
            tickets: VersionedStore::new(db, "tickets"),
            catalog: TicketCatalog::new(db),
            cancelled_orders: db.collection("cancelled_orders"),
        }
    }

    /// The tickets' versioned store: the outbox relay, raw reads.
    pub fn tickets(&self) -> &VersionedStore<Ticket> {
        &self.tickets
    }

    /// The read model: fill it and keep it following the events (see `catalog.rs`).
    pub fn catalog(&self) -> &TicketCatalog {
        &self.catalog
    }

    /// Lists a new ticket for `seller` (see `VersionedStore::create`), visible at once to the
    /// seller on every replica.
    pub async fn create(
        &self,
        bus: &EventBus,
        ticket: &Ticket,
        events: Vec<PendingEvent>,
    ) -> Result<Committed, StoreError> {
        let committed = self.tickets.create(bus, ticket, events).await?;
        self.catalog.apply(ticket);
        self.catalog.remember_write(&ticket.user_id, ticket).await;
        Ok(committed)
    }

    /// Read, decide, commit (see `VersionedStore::modify`); the read model takes the outcome at once.
    /// `author` is the user making the change, if any (not a listener), whose next reads must see it
    /// on every replica.
    pub async fn modify<E, F>(
        &self,
        bus: &EventBus,
        id: ObjectId,
        author: Option<&str>,
        decide: F,
    ) -> Result<(Ticket, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&Ticket) -> Result<Decision<Ticket>, E>,
    {
        let outcome = self.tickets.modify(bus, Bson::ObjectId(id), decide).await?;
        Ok(self.took(outcome, author).await)
    }

    /// [`Self::modify`] from `current`, the ticket as [`Self::prepare_reservation`] read it,
    /// announced by its premark if that is the change committed, and settled as `settling` says.
    pub async fn modify_from<E, F>(
        &self,
        bus: &EventBus,
        current: Ticket,
        premark: Option<Premark>,
        settling: Settling,
        decide: F,
    ) -> Result<(Ticket, Option<Committed>), E>
    where
        E: From<StoreError>,
        F: FnMut(&Ticket) -> Result<Decision<Ticket>, E>,
    {
        let outcome = self
            .tickets
            .modify_from_premarked(bus, current, premark, settling, decide)
            .await?;
        Ok(self.took(outcome, None).await)
    }

    /// The read model takes a modification's outcome.
    async fn took(
        &self,
        (ticket, committed): (Ticket, Option<Committed>),
        author: Option<&str>,
    ) -> (Ticket, Option<Committed>) {
        self.catalog.apply(&ticket);
        if let (Some(author), Some(_)) = (author, committed) {
            self.catalog.remember_write(author, &ticket).await;
        }
        (ticket, committed)
    }

    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.tickets.ensure_indexes().await?;
        let listings = [
            // The public list: free tickets, oldest first.
            ("available", doc! { "orderId": 1, "_id": 1 }),
            // A seller's own tickets, oldest first.
            ("owned", doc! { "userId": 1, "_id": 1 }),
        ];
        for (name, keys) in listings {
            ensure_index(self.tickets.records(), name, keys, IndexKind::Plain).await?;
        }
        Ok(())
    }

    /// One ticket, as `reader` (the signed-in user, if any) last saw it at least. From the read
    /// model once it is live; from the database before, and for a ticket it does not know yet
    /// (created on another replica a moment ago).
    pub async fn get(
        &self,
        id: ObjectId,
        reader: Option<&str>,
    ) -> Result<Option<Ticket>, StoreError> {
        if self.catalog_answers(reader).await
            && let Some(ticket) = self.catalog.get(id)
        {
            return Ok(Some(ticket));
        }
        let ticket = self.tickets.get(Bson::ObjectId(id)).await?;
        if let Some(ticket) = &ticket {
            self.catalog.apply(ticket);
        }
        Ok(ticket)
    }

    /// Whether the read model may answer `reader`: it is live, and has caught up with the reader's
    /// own latest writes. With the database out of reach it still answers (reads keep working
    /// through an outage): a write the reader made just before it may then show a moment late.
    async fn catalog_answers(&self, reader: Option<&str>) -> bool {
        if !self.catalog.is_live() {
            return false;
        }
        if let Some(reader) = reader
            && let Err(err) = self.catalog.catch_up_with(reader, &self.tickets).await
        {
            tracing::debug!(error = %err, "answering from the read model without the reader's latest writes");
        }
        true
    }

    /// Tickets not reserved by any order, oldest first: those whose id comes after `after` and
    /// whose title contains `title` (any case), at most `limit` (all without). Ids start with their
    /// creation time, so the order is stable: a page never repeats a ticket or skips one that
    /// stays free.
    pub async fn list_available(
        &self,
        reader: Option<&str>,
        after: Option<ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Ticket>, StoreError> {
        if self.catalog_answers(reader).await {
            return Ok(self.catalog.list_free(after, title, limit));
        }
        self.list(doc! { "orderId": Bson::Null }, after, title, limit)
            .await
    }

    /// The whole public listing rendered as JSON by the read model, when it is live (`None`
    /// before: the caller lists from the database).
    pub async fn free_listing_json(
        &self,
        reader: Option<&str>,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        if !self.catalog_answers(reader).await {
            return Ok(None);
        }
        let json = self
            .catalog
            .free_json()
            .map_err(|e| StoreError::Other(e.into()))?;
        Ok(Some(json))
    }

    /// The tickets `user_id` listed, free or held by an order, by the same rules as
    /// [`Self::list_available`].
    pub async fn list_owned(
        &self,
        user_id: &str,
        after: Option<ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Ticket>, StoreError> {
        if self.catalog_answers(Some(user_id)).await {
            return Ok(self.catalog.list_owned(user_id, after, title, limit));
        }
        self.list(doc! { "userId": user_id }, after, title, limit)
            .await
    }

    async fn list(
        &self,
        mut filter: Document,
        after: Option<ObjectId>,
        title: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Ticket>, StoreError> {
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        if let Some(title) = title {
            filter.insert(
                "title",
                doc! { "$regex": literal_pattern(title), "$options": "i" },
            );
        }
        let find = self.tickets.records().find(filter).sort(doc! { "_id": 1 });
        let find = match limit {
            Some(limit) => find.limit(limit),
            None => find,
        };
        Ok(common::store::find_all(find).await?)
    }

    /// Remembers that `order_id` was cancelled, so that its `order:created`, if it arrives (again)
    /// later, does not reserve the ticket. Idempotent.
    pub async fn record_cancelled_order(
        &self,
        order_id: Id,
        ticket_id: Id,
    ) -> Result<(), StoreError> {
        let tombstone = doc! {
            "_id": order_id.to_string(),
            "ticketId": ticket_id.to_string(),
            "at": bson::DateTime::now(),
        };
        match self.cancelled_orders.insert_one(tombstone).bounded().await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn is_order_cancelled(&self, order_id: Id) -> Result<bool, StoreError> {
        has_id(&self.cancelled_orders, order_id.to_string()).await
    }

    /// What a reservation of `ticket_id` by `order_id` needs before it can decide, fetched side by
    /// side because each waits its turn in the database under load: the ticket as stored (to base
    /// [`Self::modify_from`] on), whether the order was cancelled (two lookups by `_id`), and the
    /// pending marker of the ticket's next version (see `VersionedStore::premark`), written
    /// meanwhile so that the reservation's claim is one insert. The version comes from the read
    /// model; `None` if it does not have the ticket or shows it held, or if the marker could not
    /// be written (the commit then writes its own).
    pub async fn prepare_reservation(
        &self,
        ticket_id: ObjectId,
        order_id: Id,
    ) -> Result<(Option<Ticket>, bool, Option<Premark>), StoreError> {
        let premark = async {
            // A ticket the read model shows held cannot be reserved now (a redelivery, or an
            // order waiting for the holder's cancellation): no marker to write and delete again.
            let known = self
                .catalog
                .get(ticket_id)
                .filter(|known| known.order_id.is_none())?;
            match self
                .tickets
                .premark(&known.record_id(), known.version)
                .await
            {
                Ok(premark) => Some(premark),
                Err(err) => {
                    tracing::warn!(%ticket_id, error = %err, "could not premark a reservation; its commit will mark itself");
                    None
                }
            }
        };
        let (ticket, cancelled, premark) = tokio::join!(
            self.tickets.stored(Bson::ObjectId(ticket_id)),
            self.is_order_cancelled(order_id),
            premark
        );
        match (ticket, cancelled) {
            (Ok(ticket), Ok(cancelled)) => Ok((ticket, cancelled, premark)),
            (Err(err), _) | (_, Err(err)) => {
                if let Some(premark) = premark {
                    self.tickets.drop_premark(premark).await;
                }
                Err(err)
            }
        }
    }
}

/// A regular expression matching `text` literally: every ASCII punctuation character escaped (a
/// title search must not be a pattern the user controls).
fn literal_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_search_is_matched_literally() {
        assert_eq!(literal_pattern("Rock"), "Rock");
        assert_eq!(literal_pattern("a.b*(c)"), "a\\.b\\*\\(c\\)");
        assert_eq!(literal_pattern("Ünïcode & ok"), "Ünïcode \\& ok");
    }
}
