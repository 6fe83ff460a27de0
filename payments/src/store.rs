//! The payments service's documents.
//!
//! * `orders`: a replica of the orders service's orders, filled from `order:created` and
//!   `order:cancelled`, moved only from version `v - 1` to `v` (CONSISTENCY.md pattern 5).
//! * `payments`: one per order, whose `_id` IS the order id. It is inserted as a `pending` claim
//!   before Stripe is called, so two payments for one order cannot both reach Stripe
//!   (CONSISTENCY.md pattern 2), then committed as `succeeded` with its `payment:created` event
//!   (patterns 3 and 4), or deleted when the charge fails.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::bus::EventBus;
use common::events::{OrderStatus, PaymentCreated};
use common::store::{
    Committed, PendingEvent, StoreError, VersionedRecord, VersionedStore, is_duplicate_key,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

/// The payments service's copy of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub version: i64,
    pub status: OrderStatus,
    pub user_id: String,
    /// The ticket's price in integer cents: what is charged, with no float arithmetic.
    #[serde(rename = "price")]
    pub price_cents: i64,
    pub expires_at: bson::DateTime,
}

impl Order {
    pub fn expires_at_utc(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_at.timestamp_millis()).unwrap_or_default()
    }
}

/// What inserting a replica did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The order was already there (a redelivered `order:created`).
    AlreadyPresent,
}

#[derive(Clone)]
pub struct OrderStore {
    orders: Collection<Order>,
}

impl OrderStore {
    pub fn new(db: &Database) -> Self {
        Self {
            orders: db.collection("orders"),
        }
    }

    pub fn collection(&self) -> &Collection<Order> {
        &self.orders
    }

    /// Inserts a new replica; the `_id` makes a redelivery a no-op.
    pub async fn insert(&self, order: &Order) -> mongodb::error::Result<Inserted> {
        match self.orders.insert_one(order).await {
            Ok(_) => Ok(Inserted::New),
            Err(e) if is_duplicate_key(&e) => Ok(Inserted::AlreadyPresent),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
        self.orders.find_one(doc! { "_id": id }).await
    }

    /// Moves the replica from `version - 1` to `version` as cancelled. `false` if it was not at
    /// `version - 1` any more. Two consumers applying the same event write the same document, so
    /// FerretDB's non-atomic conditional update is harmless here.
    pub async fn cancel(&self, id: ObjectId, version: i64) -> mongodb::error::Result<bool> {
        let result = self
            .orders
            .update_one(
                doc! { "_id": id, "version": version.saturating_sub(1) },
                doc! { "$set": { "status": OrderStatus::Cancelled.as_str(), "version": version } },
            )
            .await?;
        Ok(result.matched_count == 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// Claimed: a charge is (or was about to be) on its way to Stripe.
    Pending,
    /// Charged; `stripeId` names the charge.
    Succeeded,
}

/// A payment: at most one per order, because its `_id` is the order id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[serde(rename = "_id")]
    pub order_id: ObjectId,
    pub version: i64,
    /// The id the API answers with (an ObjectId in hex, like the original's payment ids).
    pub payment_id: String,
    pub status: PaymentStatus,
    /// SHA-256 of the card token, hex: the token itself is not kept.
    pub token_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_id: Option<String>,
    pub created_at: bson::DateTime,
}

impl VersionedRecord for Payment {
    fn key(&self) -> Bson {
        Bson::ObjectId(self.order_id)
    }

    fn record_id(&self) -> String {
        self.order_id.to_hex()
    }

    fn version(&self) -> i64 {
        self.version
    }
}

/// How often a succeeded charge's commit is attempted before giving up: the card has been charged,
/// so a passing database hiccup must not lose the record.
const COMMIT_ATTEMPTS: u32 = 3;
const COMMIT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The outcome of trying to claim an order for payment.
#[derive(Debug)]
pub enum Claim {
    /// This request owns the order's payment now.
    Won(Payment),
    /// Someone else does; their record, if it is visible yet.
    Taken(Option<Payment>),
}

#[derive(Clone)]
pub struct PaymentStore {
    versions: Arc<VersionedStore<Payment>>,
    changes: Collection<Document>,
}

impl PaymentStore {
    pub const COLLECTION: &'static str = "payments";

    pub fn new(db: &Database) -> Self {
        Self {
            versions: Arc::new(VersionedStore::new(db, Self::COLLECTION)),
            changes: db.collection(&format!("{}_changes", Self::COLLECTION)),
        }
    }

    /// The versioned store, for the outbox relay and indexes.
    pub fn versions(&self) -> &Arc<VersionedStore<Payment>> {
        &self.versions
    }

    pub fn records(&self) -> &Collection<Payment> {
        self.versions.records()
    }

    pub async fn get(&self, order_id: ObjectId) -> Result<Option<Payment>, StoreError> {
        self.versions.get(Bson::ObjectId(order_id)).await
    }

    /// Inserts a `pending` payment for the order: only one caller can, whatever the database.
    pub async fn claim(
        &self,
        bus: &EventBus,
        order_id: ObjectId,
        token_hash: String,
    ) -> Result<Claim, StoreError> {
        let payment = Payment {
            order_id,
            version: 0,
            payment_id: ObjectId::new().to_hex(),
            status: PaymentStatus::Pending,
            token_hash,
            stripe_id: None,
            created_at: bson::DateTime::now(),
        };
        match self.versions.create(&payment, Vec::new()).await {
            Ok(committed) => {
                // The claim has no events; marking it published now keeps the outbox relay from
                // ever re-materialising it while `release` deletes it.
                self.versions.publish(bus, &committed).await;
                Ok(Claim::Won(payment))
            }
            Err(StoreError::Duplicate) => Ok(Claim::Taken(self.get(order_id).await?)),
            Err(other) => Err(other),
        }
    }

    /// Records the charge on a claim won by this caller and stores `payment:created` with it.
    pub async fn succeed(
        &self,
        claim: &Payment,
        stripe_id: String,
    ) -> Result<(Payment, Committed), StoreError> {
        let next = Payment {
            version: claim.version + 1,
            status: PaymentStatus::Succeeded,
            stripe_id: Some(stripe_id.clone()),
            ..claim.clone()
        };
        let event = PendingEvent::of(&PaymentCreated {
            id: claim.payment_id.clone(),
            order_id: claim.order_id.to_hex(),
            stripe_id,
        })?;
        let mut attempt = 1;
        loop {
            match self
                .versions
                .commit(claim, &next, vec![event.clone()])
                .await
            {
                Ok(committed) => return Ok((next, committed)),
                // Nobody else writes a claimed payment, so only a database failure is worth retrying.
                Err(StoreError::Db(err)) if attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(order_id = %claim.order_id, error = %err, attempt,
                        "recording a succeeded charge failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(COMMIT_RETRY_DELAY).await;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Deletes a claim this caller won, after a charge that did not happen: the order can be paid
    /// again. The record goes first, so nobody can take over the change document in between and
    /// then find a stale record; both deletes only touch this caller's own payment.
    pub async fn release(&self, claim: &Payment) -> Result<(), StoreError> {
        self.records()
            .delete_one(doc! { "_id": claim.order_id, "paymentId": &claim.payment_id })
            .await?;
        // The change document of version `v` of record `id` is `"<id>:<v>"` (common::store).
        self.changes
            .delete_one(doc! {
                "_id": format!("{}:{}", claim.order_id.to_hex(), claim.version),
                "state.paymentId": &claim.payment_id,
            })
            .await?;
        Ok(())
    }
}
