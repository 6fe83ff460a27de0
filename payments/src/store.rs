//! The payments service's documents.
//!
//! * `orders`: a replica of the orders service's orders, filled from `order:created` and
//!   `order:cancelled`, moved only from version `v - 1` to `v` (CONSISTENCY.md pattern 5).
//! * `payments`: one per order, whose `_id` IS the order id: the order's payment as a persisted state
//!   machine (CONSISTENCY.md pattern 7). Each attempt to pay is recorded as `pending`, with its own
//!   id, *before* Stripe is called; every transition is a versioned commit with its events
//!   (patterns 3 and 4), so two attempts for one order can never both reach Stripe:
//!
//! ```text
//!   (none) ──► pending ──► succeeded ──► refunding ──► refunded
//!                 │  ▲ │        ▲     ▲
//!                 │  │ └► unknown ┘     │ (a charge whose order was cancelled meanwhile)
//!                 ▼  │        └─────────┘
//!               failed  (a new attempt may start from here; unknown may end here too)
//! ```
//!
//! An attempt paid with a PaymentMethod (the page's checkout) is a PaymentIntent: it can also wait
//! for the buyer's 3-D Secure, as `requires_action`, which ends like `unknown` does (`succeeded`,
//! `refunding` or `failed`); Stripe still working on it is `unknown` with the intent's id.
//!
//! `unknown` is an answer from Stripe that was late, lost or unreadable: the charge may exist, so
//! the attempt is never released on it; the reconciler repeats the keyed request until Stripe
//! gives a definite answer. `refunding` is a charge that must go back because its order was
//! cancelled; the refund is repeated (keyed by the charge) until Stripe confirms it.
//!
//! * `unsettled_payments`: the reconciler's work list, so that it reads O(payments waiting for
//!   Stripe) rather than every payment ever made (FerretDB filters anything but `_id` alone by
//!   decoding the whole collection). A marker `<order id>:<version>` is written before any commit
//!   that moves a payment into an unsettled state from a settled one (or from nothing), and deleted
//!   by the reconciler once it reads the payment settled at that version or later. A later entry
//!   into an unsettled state has a higher version and so its own marker, which that deletion cannot
//!   touch; a marker whose commit never happened (a crash, a lost race) is dropped once old.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::bus::EventBus;
use common::events::{OrderStatus, PaymentCreated, PaymentUpdated};
use common::store::{
    Bounded as _, Committed, Decision, MIGRATIONS_COLLECTION, PendingEvent, ReplicaUpdate,
    StoreError, VersionedRecord as _, VersionedStore, is_duplicate_key,
};
use futures::TryStreamExt as _;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, doc};
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

common::versioned_record!(Order, id);

/// What inserting a replica did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The order was already there (a redelivered `order:created`).
    AlreadyPresent,
}

/// The order replica: each version claimed by an insert (`orders_changes`), so a late duplicate
/// cannot roll it back (CONSISTENCY.md pattern 5). Cheap to clone.
#[derive(Clone)]
pub struct OrderStore {
    orders: VersionedStore<Order>,
}

impl OrderStore {
    pub fn new(db: &Database) -> Self {
        Self {
            orders: VersionedStore::new(db, "orders"),
        }
    }

    pub fn collection(&self) -> &Collection<Order> {
        self.orders.records()
    }

    /// Inserts a new replica; a redelivery is recognised (and a crashed insert finished).
    pub async fn insert(&self, order: &Order) -> Result<Inserted, StoreError> {
        Ok(if self.orders.create_replica(order).await? {
            Inserted::New
        } else {
            Inserted::AlreadyPresent
        })
    }

    /// The replica, with any version a crash left half-applied finished first.
    pub async fn get(&self, id: ObjectId) -> Result<Option<Order>, StoreError> {
        self.orders.get(Bson::ObjectId(id)).await
    }

    /// The replica as stored, which may lag its newest change: for a caller that decides on it
    /// only what [`Self::refresh`] checks again before acting (the payment saga re-reads before
    /// charging), so one read is saved.
    pub async fn stored(&self, id: ObjectId) -> Result<Option<Order>, StoreError> {
        self.orders.stored(Bson::ObjectId(id)).await
    }

    /// `order` again if no version came after it (one lookup by `_id`), else the replica as
    /// [`Self::get`] reads it: for a caller that read the order a moment ago.
    pub async fn refresh(&self, order: &Order) -> Result<Option<Order>, StoreError> {
        if self
            .orders
            .is_newest(&order.record_id(), order.version)
            .await?
        {
            return Ok(Some(order.clone()));
        }
        self.get(order.id).await
    }

    /// Moves the replica to `version` as cancelled, from `version - 1` only.
    pub async fn cancel(&self, id: ObjectId, version: i64) -> Result<ReplicaUpdate, StoreError> {
        self.orders
            .apply_replica_version(Bson::ObjectId(id), version, |current| Order {
                status: OrderStatus::Cancelled,
                version,
                ..current.clone()
            })
            .await
    }
}

/// Where an order's payment stands. Spelled in the events and the database as below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// An attempt is recorded and its charge is (or was about to be) on its way to Stripe.
    Pending,
    /// Stripe's answer was late, lost or unreadable: the charge may exist. The reconciler asks again.
    Unknown,
    /// Stripe definitely did not charge; the order may be paid by a new attempt.
    Failed,
    /// Charged; `stripeId` names the charge.
    Succeeded,
    /// Charged, but the order was cancelled: the charge is being refunded.
    Refunding,
    /// The charge was refunded; `refundId` names the refund.
    Refunded,
    /// A PaymentIntent waits for the buyer's 3-D Secure (`intentId` names it).
    #[serde(rename = "requires_action")]
    RequiresAction,
}

impl PaymentStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Unknown => "unknown",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Refunding => "refunding",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::RequiresAction => "requires_action",
        }
    }

    /// Whether the attempt still waits for Stripe's (or the buyer's) answer to its charge.
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            PaymentStatus::Pending | PaymentStatus::Unknown | PaymentStatus::RequiresAction
        )
    }

    /// The states the reconciler looks after.
    pub const UNSETTLED: [PaymentStatus; 4] = [
        PaymentStatus::Pending,
        PaymentStatus::Unknown,
        PaymentStatus::Refunding,
        PaymentStatus::RequiresAction,
    ];
}

/// How an attempt asks Stripe for the money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A Charge of a card token (the SPEC's `POST /api/payments`). Records from before intents
    /// have no `via`: they are charges.
    #[default]
    Charge,
    /// A PaymentIntent confirmed with a PaymentMethod (the page's checkout).
    Intent,
}

/// An order's payment: at most one per order, because its `_id` is the order id. Its current attempt
/// is `paymentId`; earlier attempts live in the change documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[serde(rename = "_id")]
    pub order_id: ObjectId,
    pub version: i64,
    /// The current attempt's id (an ObjectId in hex, like the original's payment ids): what the API
    /// answers with, and what the charge's idempotency key and metadata derive from.
    pub payment_id: String,
    pub status: PaymentStatus,
    /// What the attempt charges, in euro cents.
    #[serde(default)]
    pub amount_cents: i64,
    /// SHA-256 of the card token (or PaymentMethod id), hex.
    pub token_hash: String,
    /// A charge or a PaymentIntent.
    #[serde(default)]
    pub via: Via,
    /// The card token (or PaymentMethod id), only while the charge's outcome is open: repeating a
    /// keyed request needs the same parameters. It is removed with the first definite answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The charge, or the PaymentIntent that succeeded: set only once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_id: Option<String>,
    /// The PaymentIntent, once Stripe has named it (it may still wait for the buyer or for Stripe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Why the attempt failed, for the logs and the order page (a decline message is the customer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How many attempts this order has had.
    #[serde(default = "one")]
    pub attempts: i64,
    /// Set, durably, just before the charge is sent to Stripe. A `pending` attempt without it was
    /// never sent (its process stopped, or could not reach the database, in between): the
    /// reconciler fails it instead of sending a first charge long after the buyer left. Records of
    /// the previous release, which has no such mark, count as sent.
    #[serde(default = "yes")]
    pub charge_sent: bool,
    /// The order was cancelled while this attempt was open: if it turns out charged, the charge goes
    /// straight to `refunding`.
    #[serde(default)]
    pub order_cancelled: bool,
    pub created_at: bson::DateTime,
    /// When the state last changed: the reconciler's horizon counts from here.
    #[serde(default = "long_ago")]
    pub updated_at: bson::DateTime,
}

fn one() -> i64 {
    1
}

fn yes() -> bool {
    true
}

fn long_ago() -> bson::DateTime {
    bson::DateTime::from_millis(0)
}

common::versioned_record!(Payment, order_id);

impl Payment {
    /// The `payment:updated` event of this state.
    pub fn updated_event(&self) -> PaymentUpdated {
        PaymentUpdated {
            id: self.payment_id.clone(),
            order_id: self.order_id.into(),
            version: self.version,
            status: self.status.as_str().to_owned(),
            stripe_id: self.stripe_id.clone(),
            refund_id: self.refund_id.clone(),
        }
    }

    /// The next version of this payment in `status`, stamped now.
    fn next(&self, status: PaymentStatus) -> Self {
        Self {
            version: self.version + 1,
            status,
            updated_at: bson::DateTime::now(),
            ..self.clone()
        }
    }

    /// The events of a commit that moved the payment to this state.
    fn events(&self) -> Result<Vec<PendingEvent>, StoreError> {
        let mut events = Vec::with_capacity(2);
        if self.status == PaymentStatus::Succeeded
            && let Some(stripe_id) = &self.stripe_id
        {
            events.push(PendingEvent::of(&PaymentCreated {
                id: self.payment_id.clone(),
                order_id: self.order_id.into(),
                stripe_id: stripe_id.clone(),
            })?);
        }
        events.push(PendingEvent::of(&self.updated_event())?);
        Ok(events)
    }
}

/// How an attempt's charge ended, as far as Stripe said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Charged {
        stripe_id: String,
    },
    Failed {
        reason: String,
    },
    Unknown,
    /// A PaymentIntent that is neither paid nor failed yet: waiting for the buyer's 3-D Secure
    /// (`action`) or for Stripe.
    Waiting {
        intent_id: String,
        action: bool,
    },
}

/// The outcome of trying to start an attempt.
#[derive(Debug)]
pub enum Begin {
    /// This caller owns the new attempt (status `pending`) and must see its charge through.
    Started(Payment),
    /// The order's payment is not open for a new attempt; its current state, if visible yet.
    Busy(Option<Payment>),
}

/// That the payment of `orderId` entered an unsettled state at `version` (see the module's doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsettledMarker {
    /// `<order id>:<version>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub order_id: ObjectId,
    pub version: i64,
    pub at: bson::DateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct Migration {
    #[serde(rename = "_id")]
    name: String,
    at: bson::DateTime,
}

/// The one-time marking of payments left unsettled before `unsettled_payments` existed.
const UNSETTLED_BACKFILL: &str = "unsettled_payments-from-payments";

/// How old a marker whose version was never committed must be before the reconciler drops it: its
/// writer may be stalled between the marker and the commit (a paused database).
const DANGLING_MARKER_AGE: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct PaymentStore {
    payments: VersionedStore<Payment>,
    unsettled: Collection<UnsettledMarker>,
    migrations: Collection<Migration>,
}

impl PaymentStore {
    pub const COLLECTION: &'static str = "payments";
    pub const UNSETTLED_COLLECTION: &'static str = "unsettled_payments";

    pub fn new(db: &Database) -> Self {
        Self {
            payments: VersionedStore::new(db, Self::COLLECTION),
            unsettled: db.collection(Self::UNSETTLED_COLLECTION),
            migrations: db.collection(MIGRATIONS_COLLECTION),
        }
    }

    /// The payments' versioned store: reads, commits, the outbox relay.
    pub fn payments(&self) -> &VersionedStore<Payment> {
        &self.payments
    }

    pub fn records(&self) -> &Collection<Payment> {
        self.payments.records()
    }

    /// The outbox's index, and markers for payments left unsettled before markers existed.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.payments.ensure_indexes().await?;
        self.backfill_unsettled().await?;
        Ok(())
    }

    /// Marks every unsettled payment written before `unsettled_payments` existed, once per
    /// database. Reads every payment (run at start, never per request); idempotent, and marked
    /// done only once complete, so a start cut short runs it again.
    pub async fn backfill_unsettled(&self) -> Result<usize, StoreError> {
        if self
            .migrations
            .find_one(doc! { "_id": UNSETTLED_BACKFILL })
            .bounded()
            .await?
            .is_some()
        {
            return Ok(0);
        }
        // Not bounded as a whole: a long history may take more than one operation timeout.
        let mut payments = self.records().find(doc! {}).await?;
        let mut marked = 0;
        while let Some(payment) = payments.try_next().await? {
            if PaymentStatus::UNSETTLED.contains(&payment.status) {
                self.mark_unsettled(payment.order_id, payment.version)
                    .await?;
                marked += 1;
            }
        }
        let done = Migration {
            name: UNSETTLED_BACKFILL.to_owned(),
            at: bson::DateTime::now(),
        };
        match self.migrations.insert_one(&done).bounded().await {
            Ok(_) => {}
            // Another replica finished it at the same moment.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(marked)
    }

    /// Writes the marker of a payment entering an unsettled state at `version` (before the commit).
    async fn mark_unsettled(&self, order_id: ObjectId, version: i64) -> Result<(), StoreError> {
        let marker = UnsettledMarker {
            id: format!("{}:{version}", order_id.to_hex()),
            order_id,
            version,
            at: bson::DateTime::now(),
        };
        match self.unsettled.insert_one(&marker).bounded().await {
            Ok(_) => Ok(()),
            // Written by an earlier try of the same transition, or a writer racing for it.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The unsettled markers (for tests).
    pub async fn unsettled_markers(&self) -> Result<Vec<UnsettledMarker>, StoreError> {
        Ok(common::store::find_all(self.unsettled.find(doc! {})).await?)
    }

    pub async fn get(&self, order_id: ObjectId) -> Result<Option<Payment>, StoreError> {
        self.payments.get(Bson::ObjectId(order_id)).await
    }

    /// One versioned transition of the order's payment: `next` sees the payment as stored (again,
    /// up to date, after losing a race to another writer or before leaving it as it is) and
    /// returns the next state, or `None` to leave it; the commit carries that state's events. A
    /// transition into an unsettled state from a settled one is marked for the reconciler first.
    async fn transition<F>(
        &self,
        bus: &EventBus,
        order_id: ObjectId,
        next: F,
    ) -> Result<(Payment, Option<Committed>), StoreError>
    where
        F: FnMut(&Payment) -> Option<Payment>,
    {
        let current = self
            .payments
            .stored(Bson::ObjectId(order_id))
            .await?
            .ok_or(StoreError::NotFound)?;
        self.transition_from(bus, current, next).await
    }

    /// [`Self::transition`] starting from `current`, the payment as this caller last had it (the
    /// attempt it just recorded), without reading it first: if another writer moved it meanwhile,
    /// the commit loses its version claim and `next` decides again on the newest. One lookup less
    /// on the way of every charge.
    async fn transition_from<F>(
        &self,
        bus: &EventBus,
        current: Payment,
        mut next: F,
    ) -> Result<(Payment, Option<Committed>), StoreError>
    where
        F: FnMut(&Payment) -> Option<Payment>,
    {
        let unsettled = |status| PaymentStatus::UNSETTLED.contains(&status);
        let order_id = current.order_id;
        self.payments
            .modify_from_prepared(
                bus,
                current,
                |current: &Payment| match next(current) {
                    Some(next) => Ok(Decision::Commit {
                        events: next.events()?,
                        next,
                    }),
                    None => Ok(Decision::Unchanged),
                },
                |current: &Payment, next: &Payment| {
                    let marked = unsettled(next.status) && !unsettled(current.status);
                    let version = next.version;
                    async move {
                        if marked {
                            self.mark_unsettled(order_id, version).await?;
                        }
                        Ok(())
                    }
                },
            )
            .await
    }

    /// Records a new `pending` attempt to pay `order` with `token` (a card token, or a
    /// PaymentMethod for [`Via::Intent`]), unless the order's payment is open, paid or refunded.
    /// Exclusive on any database: the first attempt is an insert of the order's id, a later one
    /// (after `failed`) a claim of the next version.
    pub async fn begin(
        &self,
        bus: &EventBus,
        order: &Order,
        via: Via,
        token: &str,
        token_hash: String,
    ) -> Result<Begin, StoreError> {
        // A new attempt: its own id, the order's price, the card token while its outcome is open.
        let attempt = |attempts: i64| {
            let now = bson::DateTime::now();
            Payment {
                order_id: order.id,
                version: 0,
                payment_id: ObjectId::new().to_hex(),
                status: PaymentStatus::Pending,
                amount_cents: order.price_cents,
                token_hash: token_hash.clone(),
                via,
                source: Some(token.to_owned()),
                stripe_id: None,
                intent_id: None,
                refund_id: None,
                failure: None,
                attempts,
                charge_sent: false,
                order_cancelled: false,
                created_at: now,
                updated_at: now,
            }
        };
        let first = attempt(1);
        self.mark_unsettled(order.id, first.version).await?;
        match self.payments.create(bus, &first, first.events()?).await {
            Ok(_) => return Ok(Begin::Started(first)),
            Err(StoreError::Duplicate) => {}
            Err(other) => return Err(other),
        }
        let modified = self
            .transition(bus, order.id, |current| {
                (current.status == PaymentStatus::Failed).then(|| Payment {
                    version: current.version + 1,
                    created_at: current.created_at,
                    ..attempt(current.attempts + 1)
                })
            })
            .await;
        match modified {
            Ok((payment, Some(_))) => Ok(Begin::Started(payment)),
            Ok((payment, None)) => Ok(Begin::Busy(Some(payment))),
            // The first attempt's record is being written right now.
            Err(StoreError::NotFound) => Ok(Begin::Busy(None)),
            Err(other) => Err(other),
        }
    }

    /// Marks `attempt` as about to be sent to Stripe. Returns the payment as it stands: marked, or
    /// unchanged when it is no longer this caller's to send (settled by someone else, or its order
    /// cancelled meanwhile: then it must not be sent at all). Starts from `attempt` as recorded (see
    /// [`Self::transition_from`]).
    pub async fn mark_sent(
        &self,
        bus: &EventBus,
        attempt: &Payment,
    ) -> Result<(Payment, Option<Committed>), StoreError> {
        self.transition_from(bus, attempt.clone(), |current| {
            let sendable = current.payment_id == attempt.payment_id
                && current.status == PaymentStatus::Pending
                && !current.charge_sent
                && !current.order_cancelled;
            sendable.then(|| Payment {
                charge_sent: true,
                ..current.next(PaymentStatus::Pending)
            })
        })
        .await
    }

    /// Records what Stripe said about `attempt`'s charge. Only an attempt that is still open and
    /// still the order's current one moves; whoever settles it first (the request, the reconciler
    /// of any replica) wins, and the others get the settled payment back unchanged. Starts from
    /// `attempt` as the caller has it (see [`Self::transition_from`]).
    pub async fn settle(
        &self,
        bus: &EventBus,
        attempt: &Payment,
        settlement: Settlement,
    ) -> Result<(Payment, Option<Committed>), StoreError> {
        self.transition_from(bus, attempt.clone(), |current| {
            let open = current.payment_id == attempt.payment_id && current.status.is_open();
            Some(match (&settlement, current.status) {
                _ if !open => return None,
                // A buyer's 3-D Secure is still awaited whatever a lost answer would have said.
                (Settlement::Unknown, PaymentStatus::Unknown | PaymentStatus::RequiresAction) => {
                    return None;
                }
                (Settlement::Unknown, _) => current.next(PaymentStatus::Unknown),
                (Settlement::Waiting { intent_id, action }, status) => {
                    let waiting = if *action {
                        PaymentStatus::RequiresAction
                    } else {
                        PaymentStatus::Unknown
                    };
                    if status == waiting && current.intent_id.as_ref() == Some(intent_id) {
                        return None;
                    }
                    Payment {
                        intent_id: Some(intent_id.clone()),
                        ..current.next(waiting)
                    }
                }
                // Charged for an order cancelled meanwhile: the charge must go back.
                (Settlement::Charged { stripe_id }, _) if current.order_cancelled => Payment {
                    stripe_id: Some(stripe_id.clone()),
                    source: None,
                    ..current.next(PaymentStatus::Refunding)
                },
                (Settlement::Charged { stripe_id }, _) => Payment {
                    stripe_id: Some(stripe_id.clone()),
                    source: None,
                    ..current.next(PaymentStatus::Succeeded)
                },
                (Settlement::Failed { reason }, _) => Payment {
                    failure: Some(reason.clone()),
                    source: None,
                    ..current.next(PaymentStatus::Failed)
                },
            })
        })
        .await
    }

    /// Records that the order was cancelled: a succeeded payment goes to `refunding`; an open
    /// attempt is marked, so that its settlement sends a charge straight to `refunding`. Both are
    /// versioned commits, so a settlement racing this either sees the mark or is seen by it.
    /// `None` when the order has no payment record.
    pub async fn order_cancelled(
        &self,
        bus: &EventBus,
        order_id: ObjectId,
    ) -> Result<Option<(Payment, Option<Committed>)>, StoreError> {
        let modified = self
            .transition(bus, order_id, |current| match current.status {
                PaymentStatus::Succeeded => Some(current.next(PaymentStatus::Refunding)),
                status if status.is_open() && !current.order_cancelled => Some(Payment {
                    order_cancelled: true,
                    version: current.version + 1,
                    ..current.clone()
                }),
                _ => None,
            })
            .await;
        match modified {
            Ok(done) => Ok(Some(done)),
            Err(StoreError::NotFound) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Records the refund of a `refunding` payment.
    pub async fn refunded(
        &self,
        bus: &EventBus,
        order_id: ObjectId,
        refund_id: Option<String>,
    ) -> Result<(Payment, Option<Committed>), StoreError> {
        self.transition(bus, order_id, |current| {
            (current.status == PaymentStatus::Refunding).then(|| Payment {
                refund_id: refund_id.clone(),
                ..current.next(PaymentStatus::Refunded)
            })
        })
        .await
    }

    /// Payments waiting for Stripe (open charges, refunds to make) whose last change is older than
    /// `before`, oldest first, at most `limit` markers' worth. Reads the markers and each payment by
    /// `_id`, and drops the markers that are done with (their payment settled at their version or
    /// later, or their commit long missing).
    pub async fn unsettled(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Payment>, StoreError> {
        let markers: Vec<UnsettledMarker> = common::store::find_all(
            self.unsettled
                .find(doc! {})
                .sort(doc! { "at": 1 })
                .limit(limit),
        )
        .await?;
        let mut by_order: BTreeMap<ObjectId, Vec<UnsettledMarker>> = BTreeMap::new();
        for marker in markers {
            by_order.entry(marker.order_id).or_default().push(marker);
        }
        let now_ms = bson::DateTime::now().timestamp_millis();
        let dangling_ms = now_ms - i64::try_from(DANGLING_MARKER_AGE.as_millis()).unwrap_or(0);
        let before_ms = before.timestamp_millis();
        let mut found = Vec::new();
        for (order_id, markers) in by_order {
            let payment = self.get(order_id).await?;
            for marker in &markers {
                let done = match &payment {
                    // Settled at or after the version the marker announced: a later entry into an
                    // unsettled state has a later version and a marker of its own.
                    Some(payment) if payment.version >= marker.version => {
                        !PaymentStatus::UNSETTLED.contains(&payment.status)
                    }
                    // The marked commit has not happened: in flight, or never will.
                    _ => marker.at.timestamp_millis() <= dangling_ms,
                };
                if done {
                    self.unsettled
                        .delete_one(doc! { "_id": &marker.id })
                        .bounded()
                        .await?;
                }
            }
            if let Some(payment) = payment
                && PaymentStatus::UNSETTLED.contains(&payment.status)
                && payment.updated_at.timestamp_millis() < before_ms
            {
                found.push(payment);
            }
        }
        found.sort_by_key(|payment| payment.updated_at);
        Ok(found)
    }
}
