//! Paying an order as a saga (CONSISTENCY.md pattern 7): record the attempt, charge it detached
//! from the request, settle it only on a definite answer, reconcile what stayed open, and refund a
//! charge whose order was cancelled.
//!
//! Guarantees, on MongoDB and FerretDB alike:
//! * one charge per attempt (its idempotency key is the attempt id) and one open attempt per order
//!   (the payment record's versions are claimed by insert);
//! * an answer that is late, lost or unreadable leaves the attempt `unknown`, never released; the
//!   reconciler ([`PaymentSaga::spawn_reconciler`]) repeats the same keyed request, until Stripe
//!   answers definitely (an attempt still `pending` only once it is older than the Stripe timeout
//!   plus a margin, when its own request cannot be running any more);
//! * a request cut by its client, or a pod stopping, does not cut the charge: it runs on a task
//!   that graceful shutdown waits for; a crash leaves a `pending` attempt for the reconciler;
//! * an order that ends `cancelled` keeps no charge: whichever of "charge succeeded" and "order
//!   cancelled" this service learns second starts the refund (keyed by the charge). The
//!   `order:cancelled` listener refunds a succeeded payment, or marks an open attempt so that its
//!   settlement goes straight to `refunding` (both versioned commits: one sees the other); an
//!   attempt re-reads the replica after it is recorded and before charging, so a cancellation that
//!   came before the attempt existed is seen too.
//!
//! An attempt paid through the page's checkout is a PaymentIntent, created and confirmed by one
//! keyed request; the same guarantees hold. One that needs the buyer's 3-D Secure waits as
//! `requires_action` until the page asks again ([`PaymentSaga::check_intent`]) or the reconciler
//! retrieves it; once the order's window has closed (or the order is cancelled) the reconciler
//! cancels it at Stripe, and one that succeeded anyway is refunded like a late charge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::bus::EventBus;
use common::events::OrderStatus;
use common::store::StoreError;
use futures::StreamExt as _;
use mongodb::bson::oid::ObjectId;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::store::{
    Begin, Order, OrderStore, Payment, PaymentStatus, PaymentStore, Settlement, Via,
};
use crate::stripe::{
    ChargeRequest, IntentOutcome, IntentRequest, IntentState, Refundable, StripeGateway,
    StripeOutcome, Unprocessed,
};

/// What the failure of an attempt cancelled before its charge is recorded as.
pub const CANCELLED_BEFORE_CHARGE: &str = "The order was cancelled before it was charged.";
/// What the failure of an attempt whose window closed before its charge is recorded as.
pub const EXPIRED_BEFORE_CHARGE: &str = "The order's window closed before it was charged.";
/// What the failure of an attempt that never reached Stripe is recorded as.
pub const NEVER_SENT: &str = "The charge was never sent to Stripe.";
/// What the failure of a PaymentIntent cancelled while it waited for the buyer is recorded as.
pub const NOT_AUTHENTICATED_IN_TIME: &str =
    "The buyer did not authenticate the payment before the order's window closed.";

/// How often recording a settlement is tried before it is left to the reconciler.
const SETTLE_ATTEMPTS: u32 = 3;
const SETTLE_RETRY_DELAY: Duration = Duration::from_millis(200);
/// How many unsettled payments one reconciler pass takes per state.
const RECONCILE_BATCH: i64 = 200;
/// How many of them it asks Stripe about at once.
const RECONCILE_CONCURRENCY: usize = 8;

/// When the reconciler runs and what it takes.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileTiming {
    /// A `pending` attempt is reconciled once its last change is this old: longer than its own
    /// charge request can still be running (the Stripe timeout plus a margin for the database
    /// writes around it).
    pub horizon: Duration,
    /// An `unknown` attempt or a `refunding` payment (no request of ours is waiting on Stripe for
    /// it) is asked about again once its last change is this old.
    pub retry_after: Duration,
    /// Between passes while this process may have left something unsettled.
    pub interval: Duration,
    /// Between passes otherwise (what other replicas that crashed left behind).
    pub sweep: Duration,
    /// The longest wait between passes while Stripe keeps failing.
    pub max_backoff: Duration,
}

impl ReconcileTiming {
    /// The margin added to the Stripe timeout for the horizon.
    pub const MARGIN: Duration = Duration::from_secs(5);

    pub fn for_stripe_timeout(timeout: Duration) -> Self {
        Self {
            horizon: timeout + Self::MARGIN,
            retry_after: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            sweep: Duration::from_secs(30),
            max_backoff: Duration::from_secs(15),
        }
    }
}

/// What one reconciler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcilePass {
    /// Payments it brought to a final state (or to `refunding` done).
    pub settled: usize,
    /// Payments it asked Stripe about that are still unsettled (no definite answer yet).
    pub unresolved: usize,
    /// How soon the next payment that was not due yet becomes due.
    pub next_due: Option<Duration>,
}

/// How an attempt to pay ended, for the HTTP answer.
#[derive(Debug)]
pub enum PayOutcome {
    /// Charged and recorded.
    Paid(Payment),
    /// Stripe refused the card: its message for the customer.
    Declined(String),
    /// Stripe could not be reached or asked us to slow down; nothing was charged.
    Unavailable,
    /// Stripe refused our request (bad key ...): nothing was charged, and it is our fault.
    Misconfigured(String),
    /// The order was cancelled before the charge; nothing was charged.
    OrderCancelled,
    /// The order's window closed before the charge; nothing was charged.
    Expired,
    /// The order was cancelled while it was charged: the charge is refunded (or being refunded).
    Refunded,
    /// The charge's outcome is not known yet (or it is known but could not be recorded yet): the
    /// reconciler settles it.
    Confirming,
    /// The order's payment is not open for a new attempt: its current state, if visible yet.
    Busy(Option<Payment>),
    /// The PaymentIntent waits for the buyer's 3-D Secure, which the page does with Stripe.js and
    /// this secret.
    ActionRequired { client_secret: String },
}

/// The payments saga: cheap to clone, shared by the route, the listener and the reconciler.
#[derive(Clone)]
pub struct PaymentSaga {
    payments: PaymentStore,
    orders: OrderStore,
    stripe: StripeGateway,
    bus: EventBus,
    /// Charges in flight, detached from their requests; graceful shutdown waits for them.
    charges: TaskTracker,
    /// Set when this process may have left a payment unsettled (at start, after an uncertain
    /// answer, a refund not done, a settlement not recorded): the reconciler then runs every
    /// interval instead of every sweep.
    reconcile_wanted: Arc<AtomicBool>,
}

impl PaymentSaga {
    pub fn new(
        payments: PaymentStore,
        orders: OrderStore,
        stripe: StripeGateway,
        bus: EventBus,
    ) -> Self {
        Self {
            payments,
            orders,
            stripe,
            bus,
            charges: TaskTracker::new(),
            reconcile_wanted: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn payments(&self) -> &PaymentStore {
        &self.payments
    }

    /// Starts an attempt to pay `order` with `token` (a card token to charge, or for
    /// [`Via::Intent`] a PaymentMethod) and waits for it. The attempt runs on its own task: if the
    /// caller is dropped (the client went away) the charge still completes and is recorded.
    pub async fn pay(
        &self,
        order: &Order,
        via: Via,
        token: &str,
    ) -> Result<PayOutcome, StoreError> {
        let token_hash = crate::stripe::token_hash(token);
        let attempt = match self
            .payments
            .begin(&self.bus, order, via, token, token_hash)
            .await?
        {
            Begin::Started(attempt) => attempt,
            Begin::Busy(current) => return Ok(PayOutcome::Busy(current)),
        };
        let saga = self.clone();
        // In the request's trace: the charge's logs and its `payment:created` belong to it.
        let order = order.clone();
        let task = self.charges.spawn(
            async move { saga.charge(&order, attempt).await }.instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(outcome) => outcome,
            Err(join) => Err(StoreError::Other(anyhow::anyhow!(
                "the charge task failed: {join}"
            ))),
        }
    }

    /// Charges a recorded `pending` attempt of `read`, the order as read before the attempt
    /// was recorded, and records the answer.
    async fn charge(&self, read: &Order, attempt: Payment) -> Result<PayOutcome, StoreError> {
        // The attempt is recorded: if the order was cancelled meanwhile, the `order:cancelled`
        // listener either marked the attempt (seen by `mark_sent` or the settlement below) or
        // cancelled the replica before the attempt was recorded, which this read sees (every
        // version of the replica is claimed by an insert, so "none after `read`" is one lookup).
        let order = match self.orders.refresh(read).await {
            Ok(order) => order,
            Err(err) => {
                // Not charging is always safe; the buyer can try again. If even this cannot be
                // recorded, the attempt stays `pending` unsent, and the reconciler fails it.
                tracing::warn!(order_id = %attempt.order_id, error = %err, "cannot re-read the order before charging");
                self.fail(&attempt, "database unavailable before the charge")
                    .await?;
                return Err(err);
            }
        };
        let expires_at = order.as_ref().map(Order::expires_at_utc);
        let window_closed = || expires_at.is_some_and(|at| at <= Utc::now());
        let refusal = match &order {
            Some(order) if order.status == OrderStatus::Cancelled => {
                Some((CANCELLED_BEFORE_CHARGE, PayOutcome::OrderCancelled))
            }
            // The window closed while the attempt was being recorded: too late to charge.
            Some(_) if window_closed() => Some((EXPIRED_BEFORE_CHARGE, PayOutcome::Expired)),
            _ => None,
        };
        if let Some((reason, answer)) = refusal {
            self.fail(&attempt, reason).await?;
            return Ok(answer);
        }
        // Durably "sent" before sending: a crash from here on leaves an attempt the reconciler
        // repeats; a crash before it, one it fails without charging.
        let (attempt, _) = self.payments.mark_sent(&self.bus, &attempt).await?;
        if !attempt.charge_sent || attempt.status != PaymentStatus::Pending {
            if attempt.order_cancelled && attempt.status == PaymentStatus::Pending {
                self.fail(&attempt, CANCELLED_BEFORE_CHARGE).await?;
                return Ok(PayOutcome::OrderCancelled);
            }
            return Ok(PayOutcome::Busy(Some(attempt)));
        }
        // A stalled database can hold `mark_sent` past the window's end: the order is then being
        // expired, and a charge sent now would only be refunded. (Crashing between the mark and
        // this record leaves an attempt the reconciler repeats; its charge is refunded then.)
        if window_closed() {
            self.fail(&attempt, EXPIRED_BEFORE_CHARGE).await?;
            return Ok(PayOutcome::Expired);
        }
        let (settlement, answer) = match attempt.via {
            Via::Charge => charge_settlement(
                &attempt,
                self.stripe.charge(&charge_request(&attempt)).await,
            ),
            Via::Intent => intent_settlement(
                &attempt,
                self.stripe.create_intent(&intent_request(&attempt)).await,
            ),
        };
        self.conclude(&attempt, settlement, answer, expires_at)
            .await
    }

    /// Asks Stripe again about the order's PaymentIntent once the buyer has done its 3-D Secure in
    /// the page (or gave up), and records the answer. Anything but an intent still open is
    /// answered as it stands.
    pub async fn check_intent(&self, order: &Order) -> Result<PayOutcome, StoreError> {
        let Some(payment) = self.payments.get(order.id).await? else {
            return Ok(PayOutcome::Busy(None));
        };
        let intent_id = match (&payment.intent_id, payment.status) {
            (Some(id), PaymentStatus::RequiresAction | PaymentStatus::Unknown) => id.clone(),
            (_, PaymentStatus::Succeeded) => return Ok(PayOutcome::Paid(payment)),
            _ => return Ok(PayOutcome::Busy(Some(payment))),
        };
        let saga = self.clone();
        let expires_at = order.expires_at_utc();
        // Detached like a charge: a success read here is recorded even if the page goes away.
        let task = self.charges.spawn(
            async move {
                let outcome = match saga.stripe.retrieve_intent(&intent_id).await {
                    // Not reading an intent says nothing about it: it stays open, never failed.
                    IntentOutcome::Other(other) => {
                        tracing::warn!(order_id = %payment.order_id, intent = %intent_id, answer = ?other,
                            "could not read the payment intent; the reconciler will");
                        IntentOutcome::Other(StripeOutcome::Uncertain(format!("{other:?}")))
                    }
                    intent => intent,
                };
                let (settlement, answer) = intent_settlement(&payment, outcome);
                saga.conclude(&payment, settlement, answer, Some(expires_at))
                    .await
            }
            .instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(outcome) => outcome,
            Err(join) => Err(StoreError::Other(anyhow::anyhow!(
                "the intent check failed: {join}"
            ))),
        }
    }

    /// Records what Stripe said about an attempt and tells the buyer: `answer` when Stripe's
    /// answer decides it, else what the recorded state means. `expires_at` is the end of the
    /// order's window (unknown if its replica was missing).
    async fn conclude(
        &self,
        attempt: &Payment,
        settlement: Settlement,
        answer: Option<PayOutcome>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<PayOutcome, StoreError> {
        let Some((settled, announced)) = self.record_or_leave(attempt, settlement).await else {
            return Ok(PayOutcome::Confirming);
        };
        // Read once the settlement is recorded, not before: recording can take seconds (a stalled
        // database, retries), and only an announcement in the stream before the window's end is
        // sure to go before the order's expiry.
        let window_closed = expires_at.is_some_and(|at| at <= Utc::now());
        if settled.status == PaymentStatus::RequiresAction && settled.order_cancelled {
            // The reconciler cancels the intent: no point asking the buyer to authenticate.
            return Ok(PayOutcome::OrderCancelled);
        }
        if let Some(answer) = answer {
            return Ok(answer);
        }
        match settled.status {
            // The orders service lets a `payment:created` that is in the stream before the order's
            // expiry go first. Charged, but announced only after the window closed (or not yet,
            // the relay will): the expiry may be first, and a cancelled order's charge is refunded.
            // "Paid" could be untrue, so the buyer is told the payment is being confirmed.
            PaymentStatus::Succeeded
                if settled.payment_id == attempt.payment_id && (!announced || window_closed) =>
            {
                tracing::warn!(order_id = %attempt.order_id, announced,
                    "charged, but not announced before the order's window closed; the orders service decides");
                Ok(PayOutcome::Confirming)
            }
            PaymentStatus::Succeeded if settled.payment_id == attempt.payment_id => {
                Ok(PayOutcome::Paid(settled))
            }
            PaymentStatus::Refunding if settled.payment_id == attempt.payment_id => {
                tracing::warn!(order_id = %attempt.order_id, "the order was cancelled while it was charged; refunding");
                self.finish_refund(&settled).await?;
                Ok(PayOutcome::Refunded)
            }
            // Someone else (a reconciler) settled it first, differently: report what is stored.
            _ => Ok(PayOutcome::Busy(Some(settled))),
        }
    }

    /// Records a settlement, retrying a failing database a little; `None` if it could not be
    /// recorded (the attempt stays open and the reconciler repeats the charge with its key). With
    /// the payment as stored, whether this call's events are in the stream.
    async fn record_or_leave(
        &self,
        attempt: &Payment,
        settlement: Settlement,
    ) -> Option<(Payment, bool)> {
        let mut tries = 1;
        loop {
            match self.record_announced(attempt, settlement.clone()).await {
                Ok(payment) => return Some(payment),
                Err(err) if tries < SETTLE_ATTEMPTS => {
                    tracing::warn!(order_id = %attempt.order_id, error = %err, tries,
                        "recording a charge's answer failed; retrying");
                    tries += 1;
                    tokio::time::sleep(SETTLE_RETRY_DELAY).await;
                }
                Err(err) => {
                    tracing::error!(order_id = %attempt.order_id, attempt = %attempt.payment_id, ?settlement,
                        error = %err, "could not record a charge's answer; left to the reconciler");
                    self.reconcile_wanted.store(true, Ordering::Release);
                    return None;
                }
            }
        }
    }

    /// Commits a settlement and publishes its events. Returns the payment as stored.
    async fn record(
        &self,
        attempt: &Payment,
        settlement: Settlement,
    ) -> Result<Payment, StoreError> {
        Ok(self.record_announced(attempt, settlement).await?.0)
    }

    /// Records that `attempt` failed, with `reason`.
    async fn fail(&self, attempt: &Payment, reason: &str) -> Result<Payment, StoreError> {
        self.record(
            attempt,
            Settlement::Failed {
                reason: reason.into(),
            },
        )
        .await
    }

    /// [`Self::record`], and whether the events this call committed are in the stream now
    /// (`false` when it committed nothing: someone else settled the attempt).
    async fn record_announced(
        &self,
        attempt: &Payment,
        settlement: Settlement,
    ) -> Result<(Payment, bool), StoreError> {
        if matches!(settlement, Settlement::Unknown | Settlement::Waiting { .. }) {
            self.reconcile_wanted.store(true, Ordering::Release);
        }
        let (payment, committed) = self.payments.settle(&self.bus, attempt, settlement).await?;
        if committed.is_some() {
            // Counted where the settlement is committed, so a repeat that changed nothing is not.
            metrics::counter!("payment_attempts_total", "status" => payment.status.as_str())
                .increment(1);
        }
        Ok((payment, committed.is_some_and(|c| c.in_stream)))
    }

    /// Refunds a `refunding` payment's charge (keyed by the charge: asking twice refunds once) and
    /// records `refunded`. A refund Stripe did not confirm stays `refunding` for the reconciler.
    async fn finish_refund(&self, payment: &Payment) -> Result<Payment, StoreError> {
        let Some(stripe_id) = payment.stripe_id.as_deref() else {
            return Err(StoreError::Other(anyhow::anyhow!(
                "payment of order {} is refunding but has no charge id",
                payment.order_id
            )));
        };
        let order_id = payment.order_id;
        let of = match payment.via {
            Via::Charge => Refundable::Charge(stripe_id),
            Via::Intent => Refundable::PaymentIntent(stripe_id),
        };
        match self.stripe.refund(of, &order_id.to_hex()).await {
            StripeOutcome::Done(refund_id) => {
                let refund_id = Some(refund_id).filter(|id| !id.is_empty());
                let (refunded, committed) = self
                    .payments
                    .refunded(&self.bus, order_id, refund_id)
                    .await?;
                if committed.is_some() {
                    tracing::info!(%order_id, %stripe_id, "charge refunded");
                }
                Ok(refunded)
            }
            other => {
                self.reconcile_wanted.store(true, Ordering::Release);
                tracing::warn!(%order_id, %stripe_id, answer = ?other, "refund not confirmed by Stripe; will retry");
                Ok(payment.clone())
            }
        }
    }

    /// What the `order:cancelled` listener does once the replica is cancelled: a charge the order
    /// kept is refunded; an open attempt is marked so that its charge, if it succeeds, is refunded.
    pub async fn order_cancelled(&self, order_id: ObjectId) -> Result<(), StoreError> {
        let Some((payment, _)) = self.payments.order_cancelled(&self.bus, order_id).await? else {
            // No attempt yet: one that starts now re-reads the replica before charging.
            return Ok(());
        };
        if payment.status == PaymentStatus::Refunding {
            tracing::warn!(%order_id, "a paid order was cancelled; refunding its charge");
            // Detached, like a charge: the listener acknowledges within the bus's ack wait instead
            // of waiting for Stripe, and shutdown still waits for the refund. `refunding` is
            // durable, so a refund that fails here is made by the reconciler.
            let saga = self.clone();
            self.charges.spawn(
                async move {
                    if let Err(err) = saga.finish_refund(&payment).await {
                        saga.reconcile_wanted.store(true, Ordering::Release);
                        tracing::warn!(%order_id, error = %err, "refund not recorded; left to the reconciler");
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        Ok(())
    }

    /// One reconciler pass: every unsettled payment that is due is asked about again, a few at a
    /// time. A `pending` attempt is due once older than `timing.horizon` (its own request may still
    /// be waiting for Stripe until then); an `unknown` attempt or a `refunding` payment once older
    /// than `timing.retry_after` (nobody is waiting for Stripe on it any more).
    pub async fn reconcile_once(
        &self,
        timing: &ReconcileTiming,
    ) -> Result<ReconcilePass, StoreError> {
        let now = Utc::now();
        let unsettled = self.payments.unsettled(now, RECONCILE_BATCH).await?;
        let mut pass = ReconcilePass::default();
        let mut due = Vec::new();
        for payment in unsettled {
            let wait = match payment.status {
                // Its own request may still be running; a buyer may still be authenticating.
                PaymentStatus::Pending | PaymentStatus::RequiresAction => timing.horizon,
                _ => timing.retry_after,
            };
            let age_ms = now.timestamp_millis() - payment.updated_at.timestamp_millis();
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            if age_ms < wait_ms {
                let until = Duration::from_millis(u64::try_from(wait_ms - age_ms).unwrap_or(0));
                pass.next_due = Some(pass.next_due.map_or(until, |d: Duration| d.min(until)));
                continue;
            }
            due.push(payment);
        }
        let outcomes: Vec<Result<PaymentStatus, StoreError>> =
            futures::stream::iter(due.into_iter().map(|payment| async move {
                match payment.status {
                    PaymentStatus::Refunding => Ok(self.finish_refund(&payment).await?.status),
                    _ => self.reconcile_charge(&payment).await,
                }
            }))
            .buffer_unordered(RECONCILE_CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            if PaymentStatus::UNSETTLED.contains(&outcome?) {
                pass.unresolved += 1;
            } else {
                pass.settled += 1;
            }
        }
        Ok(pass)
    }

    /// Repeats an open attempt's charge with the same key and parameters: Stripe answers with what
    /// the first request did, or does it now if it never arrived.
    async fn reconcile_charge(&self, attempt: &Payment) -> Result<PaymentStatus, StoreError> {
        if attempt.status == PaymentStatus::Pending && !attempt.charge_sent {
            // Stopped between recording the attempt and sending it: nothing reached Stripe.
            let failed = self.fail(attempt, NEVER_SENT).await?;
            tracing::info!(order_id = %attempt.order_id, attempt = %attempt.payment_id,
                "failed an attempt that was never sent to Stripe");
            return Ok(failed.status);
        }
        if attempt.via == Via::Intent {
            return self.reconcile_intent(attempt).await;
        }
        if attempt.source.is_none() {
            tracing::error!(order_id = %attempt.order_id, attempt = %attempt.payment_id,
                "an open attempt without its card token cannot be repeated; it needs a person");
            return Ok(attempt.status);
        }
        let settlement = match self.stripe.charge(&charge_request(attempt)).await {
            StripeOutcome::Done(stripe_id) => Settlement::Charged { stripe_id },
            StripeOutcome::Refused { detail, .. } => Settlement::Failed { reason: detail },
            // A repeat that was not processed says nothing about the first request.
            other => {
                tracing::info!(order_id = %attempt.order_id, attempt = %attempt.payment_id, answer = ?other,
                    "an open charge is still not confirmed");
                Settlement::Unknown
            }
        };
        let settled = self.record(attempt, settlement).await?;
        tracing::info!(order_id = %attempt.order_id, attempt = %attempt.payment_id, status = settled.status.as_str(),
            "reconciled a payment attempt");
        if settled.status == PaymentStatus::Refunding {
            return Ok(self.finish_refund(&settled).await?.status);
        }
        Ok(settled.status)
    }

    /// Settles an open PaymentIntent attempt: an intent not named yet is asked for again by
    /// repeating its keyed creation, a named one is retrieved (a repeat would only get the first
    /// answer back). One still waiting for the buyer once its order's window has closed, or its
    /// order is cancelled, is cancelled at Stripe.
    async fn reconcile_intent(&self, attempt: &Payment) -> Result<PaymentStatus, StoreError> {
        let outcome = match &attempt.intent_id {
            Some(intent_id) => self.stripe.retrieve_intent(intent_id).await,
            None if attempt.source.is_some() => {
                self.stripe.create_intent(&intent_request(attempt)).await
            }
            None => {
                tracing::error!(order_id = %attempt.order_id, attempt = %attempt.payment_id,
                    "an open attempt without its PaymentMethod cannot be repeated; it needs a person");
                return Ok(attempt.status);
            }
        };
        let named = attempt.intent_id.is_some();
        let outcome = match outcome {
            IntentOutcome::Intent {
                id,
                state: IntentState::RequiresAction { .. },
            } if attempt.order_cancelled || self.window_closed(attempt).await? => {
                tracing::info!(order_id = %attempt.order_id, intent = %id,
                    "the buyer did not authenticate in time; cancelling the payment intent");
                match self.stripe.cancel_intent(&id).await {
                    IntentOutcome::Intent {
                        id,
                        state: IntentState::Failed { .. },
                    } => IntentOutcome::Intent {
                        id,
                        state: IntentState::Failed {
                            customer: String::new(),
                            detail: NOT_AUTHENTICATED_IN_TIME.to_owned(),
                        },
                    },
                    // Refused (it succeeded meanwhile) or not confirmed: the next pass retrieves it.
                    _ => IntentOutcome::Other(StripeOutcome::Uncertain("cancel refused".into())),
                }
            }
            other => other,
        };
        let settlement = match outcome {
            IntentOutcome::Intent { id, state } => match state {
                IntentState::Succeeded => Settlement::Charged { stripe_id: id },
                IntentState::RequiresAction { .. } => Settlement::Waiting {
                    intent_id: id,
                    action: true,
                },
                IntentState::Processing => Settlement::Waiting {
                    intent_id: id,
                    action: false,
                },
                IntentState::Failed { detail, .. } => Settlement::Failed { reason: detail },
            },
            // A refused creation is a decline; a refused read of an intent we named says nothing.
            IntentOutcome::Other(StripeOutcome::Refused { detail, .. }) if !named => {
                Settlement::Failed { reason: detail }
            }
            IntentOutcome::Other(other) => {
                tracing::info!(order_id = %attempt.order_id, attempt = %attempt.payment_id, answer = ?other,
                    "an open payment intent is still not confirmed");
                Settlement::Unknown
            }
        };
        let settled = self.record(attempt, settlement).await?;
        tracing::info!(order_id = %attempt.order_id, attempt = %attempt.payment_id, status = settled.status.as_str(),
            "reconciled a payment intent");
        if settled.status == PaymentStatus::Refunding {
            return Ok(self.finish_refund(&settled).await?.status);
        }
        Ok(settled.status)
    }

    /// Whether the window of the attempt's order has closed (a missing replica counts as closed).
    async fn window_closed(&self, attempt: &Payment) -> Result<bool, StoreError> {
        Ok(self
            .orders
            .get(attempt.order_id)
            .await?
            .is_none_or(|order| order.expires_at_utc() <= Utc::now()))
    }

    /// Runs the reconciler until `shutdown`: every `interval` while this process may have left a
    /// payment unsettled (backing off while Stripe keeps failing), else every `sweep`.
    pub fn spawn_reconciler(
        &self,
        shutdown: CancellationToken,
        timing: ReconcileTiming,
    ) -> JoinHandle<()> {
        let saga = self.clone();
        tokio::spawn(async move {
            let mut schedule = ReconcileSchedule::new(timing);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(schedule.wait()) => {}
                }
                let wanted = saga.reconcile_wanted.swap(false, Ordering::AcqRel);
                if !schedule.due(wanted, Instant::now()) {
                    continue;
                }
                let result = saga.reconcile_once(&timing).await;
                match &result {
                    Ok(pass) if pass.settled > 0 => tracing::info!(
                        settled = pass.settled,
                        unresolved = pass.unresolved,
                        "payment reconciler settled payments"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "payment reconciler pass failed"),
                }
                if schedule.after_pass(result.as_ref().ok(), Instant::now()) {
                    saga.reconcile_wanted.store(true, Ordering::Release);
                }
            }
        })
    }

    /// A task that, once `shutdown` fires, waits for the charges in flight (each ends within the
    /// Stripe timeout), so stopping the service never cuts a charge between Stripe and the record.
    pub fn spawn_drain(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let charges = self.charges.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            charges.close();
            if !charges.is_empty() {
                tracing::info!(in_flight = charges.len(), "waiting for charges in flight");
            }
            charges.wait().await;
        })
    }
}

/// When the reconciler runs next: the decisions of [`PaymentSaga::spawn_reconciler`], apart from
/// the clock and the database.
#[derive(Debug)]
struct ReconcileSchedule {
    timing: ReconcileTiming,
    wait: Duration,
    backoff: Duration,
    since_sweep: Duration,
    /// After a pass failed (the database was down), passes go on every interval until then, wanted
    /// or not: an attempt written half-way when it failed (its change but not its record) is
    /// invisible to a pass until the outbox relay completes it, some time after the database is
    /// back, and must not wait for the next sweep.
    eager_until: Option<Instant>,
}

impl ReconcileSchedule {
    fn new(timing: ReconcileTiming) -> Self {
        Self {
            timing,
            wait: timing.interval,
            backoff: timing.interval,
            since_sweep: Duration::ZERO,
            eager_until: None,
        }
    }

    /// How long to sleep before [`Self::due`] is asked.
    fn wait(&self) -> Duration {
        self.wait
    }

    /// After sleeping [`Self::wait`]: whether to run a pass now.
    fn due(&mut self, wanted: bool, now: Instant) -> bool {
        self.since_sweep += self.wait;
        let eager = self.eager_until.is_some_and(|until| now < until);
        if !wanted && !eager && self.since_sweep < self.timing.sweep {
            self.wait = self.timing.interval;
            return false;
        }
        self.since_sweep = Duration::ZERO;
        true
    }

    /// After a pass (`None` if it failed): sets the next wait; `true` if the next look should
    /// happen at the next wait even with nothing new wanted.
    fn after_pass(&mut self, pass: Option<&ReconcilePass>, now: Instant) -> bool {
        let timing = self.timing;
        let Some(pass) = pass else {
            self.eager_until = Some(now + timing.sweep);
            self.backoff = (self.backoff * 2).min(timing.max_backoff);
            self.wait = self.backoff;
            return true;
        };
        if pass.unresolved > 0 {
            // Stripe still gives no definite answer: ask less and less often.
            self.backoff = (self.backoff * 2).min(timing.max_backoff);
            self.wait = self.backoff;
            return true;
        }
        self.backoff = timing.interval;
        if let Some(next_due) = pass.next_due {
            // Come back exactly when the next payment becomes due.
            self.wait = next_due.clamp(timing.interval, timing.sweep);
            return true;
        }
        self.wait = timing.interval;
        false
    }
}

/// What a charge's answer settles, and what the buyer is told if the answer decides it.
fn charge_settlement(
    attempt: &Payment,
    outcome: StripeOutcome,
) -> (Settlement, Option<PayOutcome>) {
    match outcome {
        StripeOutcome::Done(stripe_id) => (Settlement::Charged { stripe_id }, None),
        StripeOutcome::Refused { customer, detail } => {
            tracing::info!(order_id = %attempt.order_id, %detail, "Stripe refused the charge");
            (
                Settlement::Failed { reason: detail },
                Some(PayOutcome::Declined(customer)),
            )
        }
        StripeOutcome::NotDone(Unprocessed::Unavailable(cause)) => {
            tracing::warn!(order_id = %attempt.order_id, %cause, "Stripe unavailable; nothing charged");
            (
                Settlement::Failed { reason: cause },
                Some(PayOutcome::Unavailable),
            )
        }
        StripeOutcome::NotDone(Unprocessed::Misconfigured(cause)) => (
            Settlement::Failed {
                reason: cause.clone(),
            },
            Some(PayOutcome::Misconfigured(cause)),
        ),
        StripeOutcome::Uncertain(cause) => {
            tracing::warn!(order_id = %attempt.order_id, attempt = %attempt.payment_id, %cause,
                "the charge's outcome is unknown; the reconciler will ask Stripe again");
            (Settlement::Unknown, Some(PayOutcome::Confirming))
        }
    }
}

/// What a PaymentIntent's answer settles, and what the buyer is told if the answer decides it.
fn intent_settlement(
    attempt: &Payment,
    outcome: IntentOutcome,
) -> (Settlement, Option<PayOutcome>) {
    let (id, state) = match outcome {
        IntentOutcome::Intent { id, state } => (id, state),
        IntentOutcome::Other(other) => return charge_settlement(attempt, other),
    };
    match state {
        IntentState::Succeeded => (Settlement::Charged { stripe_id: id }, None),
        IntentState::RequiresAction { client_secret } => (
            Settlement::Waiting {
                intent_id: id,
                action: true,
            },
            Some(PayOutcome::ActionRequired { client_secret }),
        ),
        IntentState::Processing => {
            tracing::warn!(order_id = %attempt.order_id, intent = %id,
                "the payment intent is still processing; the reconciler will ask Stripe again");
            (
                Settlement::Waiting {
                    intent_id: id,
                    action: false,
                },
                Some(PayOutcome::Confirming),
            )
        }
        IntentState::Failed { customer, detail } => {
            tracing::info!(order_id = %attempt.order_id, %detail, "the payment intent failed");
            (
                Settlement::Failed { reason: detail },
                Some(PayOutcome::Declined(customer)),
            )
        }
    }
}

fn intent_request(attempt: &Payment) -> IntentRequest<'_> {
    IntentRequest {
        amount_cents: attempt.amount_cents,
        payment_method: attempt.source.as_deref().unwrap_or_default(),
        order_id: attempt.order_id.to_hex(),
        attempt_id: &attempt.payment_id,
    }
}

fn charge_request(attempt: &Payment) -> ChargeRequest<'_> {
    ChargeRequest {
        amount_cents: attempt.amount_cents,
        source: attempt.source.as_deref().unwrap_or_default(),
        order_id: attempt.order_id.to_hex(),
        attempt_id: &attempt.payment_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> ReconcileTiming {
        ReconcileTiming::for_stripe_timeout(Duration::from_secs(10))
    }

    /// Sleeps through the schedule from `now` until a pass is due or `limit` has passed; the time
    /// of that pass.
    fn next_pass(
        schedule: &mut ReconcileSchedule,
        now: &mut Instant,
        limit: Duration,
    ) -> Option<Duration> {
        let start = *now;
        while *now - start < limit {
            *now += schedule.wait();
            if schedule.due(false, *now) {
                return Some(*now - start);
            }
        }
        None
    }

    #[test]
    fn with_nothing_wanted_the_reconciler_only_sweeps() {
        let timing = timing();
        let mut schedule = ReconcileSchedule::new(timing);
        let mut now = Instant::now();
        assert!(schedule.due(true, now), "a start is wanted");
        assert!(!schedule.after_pass(Some(&ReconcilePass::default()), now));
        assert_eq!(
            next_pass(&mut schedule, &mut now, timing.sweep * 2),
            Some(timing.sweep)
        );
    }

    #[test]
    fn after_a_failed_pass_the_reconciler_keeps_looking_every_interval_for_a_sweep() {
        let timing = timing();
        let mut schedule = ReconcileSchedule::new(timing);
        let mut now = Instant::now();
        assert!(schedule.due(true, now));
        assert!(
            schedule.after_pass(None, now),
            "a failed pass is looked at again"
        );
        // The database is back: the first pass finds nothing (the half-written attempt is not
        // materialised yet), and still the next passes come every interval, not after a sweep.
        now += schedule.wait();
        assert!(schedule.due(true, now));
        schedule.after_pass(Some(&ReconcilePass::default()), now);
        for _ in 0..5 {
            assert_eq!(
                next_pass(&mut schedule, &mut now, timing.sweep),
                Some(timing.interval)
            );
            schedule.after_pass(Some(&ReconcilePass::default()), now);
        }
        // A sweep after the failure it calms down again.
        let mut gaps = Vec::new();
        for _ in 0..40 {
            gaps.push(next_pass(&mut schedule, &mut now, timing.sweep * 2));
            schedule.after_pass(Some(&ReconcilePass::default()), now);
        }
        assert_eq!(gaps.last(), Some(&Some(timing.sweep)));
    }

    #[test]
    fn while_stripe_gives_no_answer_passes_back_off_up_to_the_maximum() {
        let timing = timing();
        let mut schedule = ReconcileSchedule::new(timing);
        let now = Instant::now();
        let unresolved = ReconcilePass {
            unresolved: 1,
            ..ReconcilePass::default()
        };
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert!(schedule.due(true, now));
            assert!(schedule.after_pass(Some(&unresolved), now));
            waits.push(schedule.wait().as_secs());
        }
        assert_eq!(waits, vec![2, 4, 8, 15, 15, 15]);
    }
}
