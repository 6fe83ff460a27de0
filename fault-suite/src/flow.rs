//! The scripted purchase flow, as real clients would drive it: every call is retried on connection
//! errors, 5xx and eventual-consistency 404s, and an operation counts as acknowledged once the
//! service has confirmed it (directly, or as found on a later read after a lost response). A payment
//! answered 202 (being confirmed) is acknowledged too: its outcome is settled later, by the payments
//! reconciler, and checked after convergence.
//!
//! Two flows: [`Flow::run`] (buy, cancel, re-buy, pay, let expire) and [`Flow::race`] (pay in the
//! last instant of the reservation window while Stripe is slow, so that the order expires while its
//! charge is in flight).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use common::testing::stripe_double::Behaviour;
use common::testing::{returned_cookie, with_cookie_and_json};
use futures::future::join_all;
use mongodb::bson::DateTime;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::stack::Stack;

#[derive(Default)]
pub struct Stats {
    pub attempted: AtomicUsize,
    pub acknowledged: AtomicUsize,
    /// Requests sent (each retry counts).
    pub sent: AtomicUsize,
    /// Requests that failed as a browser would show it: no answer (connection refused or reset
    /// past what the HTTP client retries by itself, like a browser) or a 5xx.
    pub failed: AtomicUsize,
}

/// A write a service acknowledged (directly, or as found on a later read after a lost answer). Every
/// one must be present once the system has converged, whatever happened meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A user signed up (the email, as sent).
    Signup { email: String },
    /// A ticket listed (201), with its title and price in cents.
    Ticket {
        id: String,
        title: String,
        price_cents: i64,
    },
    /// An order created (201) for a ticket.
    Order { id: String, ticket: String },
    /// An order cancelled by its buyer (204).
    Cancel { order: String },
    /// A payment answered (201, 202 or 400 "refunded"; a payment refused as too late wrote
    /// nothing).
    Payment { order: String, answer: PayAnswer },
}

/// How `POST /api/payments` ended for a buyer (after retrying transient answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayAnswer {
    /// 201, or 400 "Order has already been paid." on a retry.
    Paid,
    /// 202: Stripe's answer was late or unreadable; the payments reconciler settles it.
    Confirming,
    /// 400 "The order was cancelled while it was being paid; your payment is refunded."
    Refunded,
    /// 400: the order was cancelled or its window was over before it was charged.
    TooLate,
}

/// Answers of the payments service, as its routes spell them.
const ALREADY_PAID: &str = "Order has already been paid.";
const REFUNDED: &str = "The order was cancelled while it was being paid; your payment is refunded.";
const CANCELLED_ORDER: &str = "Canncelled order unabled for payment.";
const EXPIRED_ORDER: &str = "Order has expired.";

/// An order paid in the last instant of its window ([`Flow::race`]).
#[derive(Debug, Clone)]
pub struct RaceOrder {
    pub order: String,
    /// Its buyer's cookie.
    pub buyer: String,
    pub ticket: String,
    /// What the buyer was told.
    pub answer: PayAnswer,
    /// How long before the end of the window the payment was sent, and with which Stripe delay.
    pub lead: Duration,
    pub stripe_delay: Duration,
}

/// What the flow did, for the convergence check.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub tickets: Vec<String>,
    /// Buyers' cookies, one per ticket.
    pub buyers: Vec<String>,
    /// Orders that were paid (201 or "already paid" after a retry).
    pub paid_orders: Vec<String>,
    /// Orders whose payment was answered 202: they end `complete` (the reconciler confirmed the
    /// charge in time) or `cancelled` with their charge refunded (the window ended first).
    pub confirming_orders: Vec<String>,
    /// Orders whose payment was answered "refunded": they end `cancelled`, their charge refunded.
    pub refunded_orders: Vec<String>,
    /// Orders whose payment came too late (cancelled or expired meanwhile): they end `cancelled`.
    pub too_late_orders: Vec<String>,
    /// Orders left to expire.
    pub expiring_orders: Vec<String>,
    /// Orders cancelled by their buyer.
    pub cancelled_orders: Vec<String>,
    /// Orders paid in the last instant of their window ([`Flow::race`]).
    pub race_orders: Vec<RaceOrder>,
    /// When the last raced order's window ended.
    pub race_expired_at: Option<DateTime>,
}

impl Outcome {
    /// Adds what another run of the flow did (the rolling restart runs the flow in rounds).
    pub fn absorb(&mut self, other: Outcome) {
        self.tickets.extend(other.tickets);
        self.buyers.extend(other.buyers);
        self.paid_orders.extend(other.paid_orders);
        self.confirming_orders.extend(other.confirming_orders);
        self.refunded_orders.extend(other.refunded_orders);
        self.too_late_orders.extend(other.too_late_orders);
        self.expiring_orders.extend(other.expiring_orders);
        self.cancelled_orders.extend(other.cancelled_orders);
        self.race_orders.extend(other.race_orders);
        self.race_expired_at = self.race_expired_at.max(other.race_expired_at);
    }

    fn record_payment(&mut self, order: &str, answer: PayAnswer) {
        let list = match answer {
            PayAnswer::Paid => &mut self.paid_orders,
            PayAnswer::Confirming => &mut self.confirming_orders,
            PayAnswer::Refunded => &mut self.refunded_orders,
            PayAnswer::TooLate => &mut self.too_late_orders,
        };
        list.push(order.to_owned());
    }

    /// The orders nobody paid: left to expire, or cancelled by their buyer.
    pub fn unpaid_orders(&self) -> impl Iterator<Item = &String> {
        self.expiring_orders.iter().chain(&self.cancelled_orders)
    }
}

/// Where the flow is, for faults that must land in a given phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Signing up, listing tickets, ordering.
    Setup,
    /// The first payments are being sent (the paid third, while the first third cancels).
    Paying,
    /// Re-buying the cancelled third and paying for it.
    SecondPayments,
    /// The flow has ended (or failed).
    Done,
}

/// Which orders the scripted flow leaves to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A third cancelled, re-bought and paid; a third paid; a third left to expire.
    WithExpiry,
    /// A third cancelled, re-bought and paid; two thirds paid; none left to expire (for runs with a
    /// reservation window longer than the run).
    NoExpiry,
}

/// How long a client retries an operation by default (as a browser's user would, give or take).
pub const RETRY_FOR: Duration = Duration::from_secs(45);

pub struct Flow<'a> {
    pub stack: &'a Stack,
    pub stats: Stats,
    /// How long each operation is retried before the flow gives up.
    retry_for: Duration,
    /// Every acknowledged write, in order.
    writes: std::sync::Mutex<Vec<Write>>,
    phase: watch::Sender<Phase>,
    /// Whether the second payments (of the re-bought third) may be sent.
    second_payments: watch::Sender<bool>,
}

struct Reply {
    status: StatusCode,
    body: Value,
    cookie: Option<String>,
}

impl<'a> Flow<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Self {
            stack,
            stats: Stats::default(),
            retry_for: RETRY_FOR,
            writes: std::sync::Mutex::new(Vec::new()),
            phase: watch::Sender::new(Phase::Setup),
            second_payments: watch::Sender::new(true),
        }
    }

    /// Clients that keep retrying for `retry_for` (longer than an outage they must ride out).
    pub fn retrying_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// Every write acknowledged so far.
    pub fn writes(&self) -> Vec<Write> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn acknowledged(&self, write: Write) {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(write);
    }

    /// Waits until the flow has reached `phase` (or ended).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives as long as the flow: `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|current| *current >= phase).await;
    }

    /// Holds the second payments until [`Flow::release_second_payments`].
    pub fn hold_second_payments(&self) {
        self.second_payments.send_replace(false);
    }

    pub fn release_second_payments(&self) {
        self.second_payments.send_replace(true);
    }

    fn enter(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    async fn send(
        &self,
        method: Method,
        service: &str,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let request = with_cookie_and_json(
            self.stack
                .http
                .request(method, self.stack.url(service, path)?),
            cookie,
            body,
        );
        let response = request.send().await?;
        let status = response.status();
        let cookie = returned_cookie(response.headers());
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            cookie,
        })
    }

    /// Sends until `done` accepts the reply (Some) or the retry window ends; transient answers
    /// (connection errors, 5xx, and the statuses in `transient`) are retried.
    async fn until<T>(
        &self,
        what: &str,
        transient: &[StatusCode],
        mut attempt: impl AsyncFnMut() -> anyhow::Result<Reply>,
        mut done: impl FnMut(&Reply) -> Option<T>,
    ) -> anyhow::Result<T> {
        self.stats.attempted.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.retry_for;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            let answer = attempt().await;
            if answer
                .as_ref()
                .map_or(true, |reply| reply.status.is_server_error())
            {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            match answer {
                Ok(reply) => {
                    if let Some(value) = done(&reply) {
                        self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                        return Ok(value);
                    }
                    if !(reply.status.is_server_error() || transient.contains(&reply.status)) {
                        bail!("{what}: unexpected {} {}", reply.status, reply.body);
                    }
                    last = format!("{} {}", reply.status, reply.body);
                }
                Err(err) => last = format!("{err:#}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "{what}: gave up after {:?}; last answer: {last}",
            self.retry_for
        )
    }

    pub async fn signup(&self, email: &str) -> anyhow::Result<String> {
        let body = json!({ "email": email, "password": "password" });
        let signin = json!({ "email": email, "password": "password" });
        let cookie = self
            .until(
                "signup",
                &[StatusCode::BAD_REQUEST],
                async || {
                    let reply = self
                        .send(Method::POST, "auth", "/api/users/signup", None, Some(&body))
                        .await?;
                    // A lost 201 makes the retry answer "Email in use": sign in instead.
                    if reply.status == StatusCode::BAD_REQUEST {
                        return self
                            .send(
                                Method::POST,
                                "auth",
                                "/api/users/signin",
                                None,
                                Some(&signin),
                            )
                            .await;
                    }
                    Ok(reply)
                },
                |reply| {
                    reply
                        .status
                        .is_success()
                        .then(|| reply.cookie.clone())
                        .flatten()
                },
            )
            .await?;
        self.acknowledged(Write::Signup {
            email: email.to_owned(),
        });
        Ok(cookie)
    }

    pub async fn create_ticket(
        &self,
        seller: &str,
        title: &str,
        price: f64,
    ) -> anyhow::Result<String> {
        let body = json!({ "title": title, "price": price });
        let id = self
            .until(
                "create ticket",
                &[],
                async || {
                    self.send(
                        Method::POST,
                        "tickets",
                        "/api/tickets",
                        Some(seller),
                        Some(&body),
                    )
                    .await
                },
                created_id,
            )
            .await?;
        self.acknowledged(Write::Ticket {
            id: id.clone(),
            title: title.to_owned(),
            // The prices here are whole cents.
            price_cents: (price * 100.0).round() as i64,
        });
        Ok(id)
    }

    /// The buyer's live order for a ticket, if any (to recover from a lost 201).
    async fn live_order(&self, buyer: &str, ticket: &str) -> anyhow::Result<Option<String>> {
        let reply = self
            .send(Method::GET, "orders", "/api/orders", Some(buyer), None)
            .await?;
        Ok(reply
            .body
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|order| {
                let live = matches!(order["status"].as_str(), Some("created" | "complete"));
                (live && order["ticket"]["id"] == ticket)
                    .then(|| order["id"].as_str().map(str::to_owned))
                    .flatten()
            }))
    }

    pub async fn order(&self, buyer: &str, ticket: &str) -> anyhow::Result<String> {
        let body = json!({ "ticketId": ticket });
        let id = self
            .until(
                "order",
                &[StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST],
                async || {
                    let reply = self
                        .send(
                            Method::POST,
                            "orders",
                            "/api/orders",
                            Some(buyer),
                            Some(&body),
                        )
                        .await?;
                    if reply.status == StatusCode::BAD_REQUEST
                        && let Some(id) = self.live_order(buyer, ticket).await?
                    {
                        return Ok(Reply {
                            status: StatusCode::CREATED,
                            body: json!({ "id": id }),
                            cookie: None,
                        });
                    }
                    Ok(reply)
                },
                created_id,
            )
            .await?;
        self.acknowledged(Write::Order {
            id: id.clone(),
            ticket: ticket.to_owned(),
        });
        Ok(id)
    }

    pub async fn cancel(&self, buyer: &str, order: &str) -> anyhow::Result<()> {
        let path = format!("/api/orders/{order}");
        self.until(
            "cancel",
            &[],
            async || {
                self.send(Method::DELETE, "orders", &path, Some(buyer), None)
                    .await
            },
            |reply| (reply.status == StatusCode::NO_CONTENT).then_some(()),
        )
        .await?;
        self.acknowledged(Write::Cancel {
            order: order.to_owned(),
        });
        Ok(())
    }

    /// Pays `order`. Retries what a client retries (connection errors, 5xx, 404 while the payments
    /// service has not heard of the order, 409 while an attempt is open); 202 and the final 400s
    /// end it (see [`PayAnswer`]).
    pub async fn pay(&self, buyer: &str, order: &str) -> anyhow::Result<PayAnswer> {
        let body = json!({ "orderId": order, "token": "tok_visa" });
        let answer = self
            .until(
                "pay",
                &[
                    StatusCode::NOT_FOUND,
                    StatusCode::CONFLICT,
                    StatusCode::BAD_REQUEST,
                ],
                async || {
                    self.send(
                        Method::POST,
                        "payments",
                        "/api/payments",
                        Some(buyer),
                        Some(&body),
                    )
                    .await
                },
                |reply| match reply.status {
                    StatusCode::CREATED => Some(PayAnswer::Paid),
                    StatusCode::ACCEPTED => Some(PayAnswer::Confirming),
                    StatusCode::BAD_REQUEST => match error_message(&reply.body) {
                        Some(ALREADY_PAID) => Some(PayAnswer::Paid),
                        Some(REFUNDED) => Some(PayAnswer::Refunded),
                        Some(CANCELLED_ORDER | EXPIRED_ORDER) => Some(PayAnswer::TooLate),
                        // Anything else (a duplicate key while the database recovers ...) is retried.
                        _ => None,
                    },
                    _ => None,
                },
            )
            .await?;
        if answer != PayAnswer::TooLate {
            self.acknowledged(Write::Payment {
                order: order.to_owned(),
                answer,
            });
        }
        Ok(answer)
    }

    /// When an order's reservation window ends, as the orders service says (ms since the epoch).
    async fn expires_at(&self, buyer: &str, order: &str) -> anyhow::Result<i64> {
        let path = format!("/api/orders/{order}");
        let deadline = Instant::now() + self.retry_for;
        loop {
            let reply = self
                .send(Method::GET, "orders", &path, Some(buyer), None)
                .await;
            if let Ok(reply) = &reply
                && reply.status == StatusCode::OK
                && let Some(at) = reply.body["expiresAt"].as_str()
            {
                return Ok(DateTime::parse_rfc3339_str(at)
                    .with_context(|| format!("expiresAt {at:?} of order {order}"))?
                    .timestamp_millis());
            }
            if Instant::now() > deadline {
                bail!("cannot read order {order}'s expiresAt");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Signs up a seller and `n` buyers, lists `n` tickets and orders each for one buyer.
    async fn setup(
        &self,
        run: &str,
        n: usize,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let seller = self.signup(&format!("seller-{run}@test.com")).await?;
        let titles: Vec<String> = (0..n).map(|i| format!("Show {i}")).collect();
        let emails: Vec<String> = (0..n).map(|i| format!("buyer{i}-{run}@test.com")).collect();
        let tickets: Vec<String> = join_all(
            titles
                .iter()
                .enumerate()
                .map(|(i, title)| self.create_ticket(&seller, title, 10.0 + i as f64)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
        let buyers: Vec<String> = join_all(emails.iter().map(|email| self.signup(email)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let orders: Vec<String> =
            join_all(buyers.iter().zip(&tickets).map(|(b, t)| self.order(b, t)))
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
        Ok((tickets, buyers, orders))
    }

    /// The scripted flow for `n` tickets (a multiple of 3): a third cancelled, re-bought and paid; a
    /// third paid; a third left to expire (or paid too, with [`Shape::NoExpiry`]).
    pub async fn run(&self, run: &str, n: usize, shape: Shape) -> anyhow::Result<Outcome> {
        let outcome = self.scripted(run, n, shape).await;
        self.enter(Phase::Done);
        outcome
    }

    async fn scripted(&self, run: &str, n: usize, shape: Shape) -> anyhow::Result<Outcome> {
        let (tickets, buyers, orders) = self.setup(run, n).await?;
        let third = n / 3;
        let paid_until = match shape {
            Shape::WithExpiry => 2 * third,
            Shape::NoExpiry => n,
        };
        let mut outcome = Outcome {
            tickets: tickets.clone(),
            buyers: buyers.clone(),
            ..Outcome::default()
        };

        self.enter(Phase::Paying);
        let cancels = join_all((0..third).map(|i| self.cancel(&buyers[i], &orders[i])));
        let pays = join_all((third..paid_until).map(|i| self.pay(&buyers[i], &orders[i])));
        let (cancelled, paid) = tokio::join!(cancels, pays);
        cancelled.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let paid = paid.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        for (order, answer) in orders[third..paid_until].iter().zip(paid) {
            outcome.record_payment(order, answer);
        }
        outcome.cancelled_orders = orders[..third].to_vec();
        outcome.expiring_orders = orders[paid_until..].to_vec();

        // The cancelled tickets are bought again (the buyer's cancellation released them) and paid.
        let rebought: Vec<String> =
            join_all((0..third).map(|i| self.order(&buyers[i], &tickets[i])))
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()
                .context("re-buying released tickets")?;
        let mut released = self.second_payments.subscribe();
        let _ = released.wait_for(|released| *released).await;
        self.enter(Phase::SecondPayments);
        let paid = join_all(
            rebought
                .iter()
                .enumerate()
                .map(|(i, order)| self.pay(&buyers[i], order)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
        for (order, answer) in rebought.iter().zip(paid) {
            outcome.record_payment(order, answer);
        }
        Ok(outcome)
    }

    /// The pay-versus-expiry race for `n` tickets (even): every buyer orders, then pays in the last
    /// instant of the order's window while Stripe answers late, so that the order expires while its
    /// charge is in flight. The first half pays `SLOW.0` before the end of the window with Stripe
    /// answering after `SLOW.1` (longer than the payments service's Stripe timeout: the buyer gets
    /// 202 and the reconciler finds the charge after the order was cancelled); the second half pays
    /// `FAST.0` before the end with Stripe answering after `FAST.1` (within the timeout, after the
    /// end of the window: the charge usually comes back after the cancellation, and is refunded at
    /// once: 400 "your payment is refunded").
    pub async fn race(&self, run: &str, n: usize) -> anyhow::Result<Outcome> {
        let outcome = self.racing(run, n).await;
        self.enter(Phase::Done);
        outcome
    }

    async fn racing(&self, run: &str, n: usize) -> anyhow::Result<Outcome> {
        const SLOW: (Duration, Duration) = (Duration::from_millis(1000), Duration::from_secs(3));
        const FAST: (Duration, Duration) =
            (Duration::from_millis(400), Duration::from_millis(1300));
        let stripe = &self.stack.stripe_double;
        stripe.set(Behaviour::Normal { delay: SLOW.1 });
        let (tickets, buyers, orders) = self.setup(run, n).await?;
        let expiries: Vec<i64> = join_all(
            buyers
                .iter()
                .zip(&orders)
                .map(|(buyer, order)| self.expires_at(buyer, order)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
        let half = n / 2;
        let slow_half: Vec<&String> = orders[..half].iter().collect();
        self.enter(Phase::Paying);

        let (expiries_ref, buyers_ref, orders_ref) = (&expiries, &buyers, &orders);
        let pay_at = move |i: usize, lead: Duration| async move {
            let lead_ms = i64::try_from(lead.as_millis()).unwrap_or(i64::MAX);
            let wait_ms = expiries_ref[i] - lead_ms - DateTime::now().timestamp_millis();
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))).await;
            self.pay(&buyers_ref[i], &orders_ref[i]).await
        };
        let slow = join_all((0..half).map(|i| pay_at(i, SLOW.0)));
        // Stripe turns faster once the slow half's charges have reached it, just before the fast
        // half pays (what the slow half was told does not change: the double fixes each answer's
        // delay when the request arrives).
        let switch = async {
            let earliest_fast = expiries[half..].iter().copied().min().unwrap_or_default();
            let switch_at_ms = earliest_fast - i64::try_from(FAST.0.as_millis()).unwrap_or(0) - 100;
            while DateTime::now().timestamp_millis() < switch_at_ms {
                let arrived = slow_half
                    .iter()
                    .filter(|order| !stripe.charges_of(order).is_empty())
                    .count();
                if arrived == slow_half.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stripe.set(Behaviour::Normal { delay: FAST.1 });
            join_all((half..n).map(|i| pay_at(i, FAST.0))).await
        };
        let (slow, fast) = tokio::join!(slow, switch);
        // Every raced payment has its answer: Stripe is quick again for the reconciler.
        stripe.set(Behaviour::Normal {
            delay: Duration::ZERO,
        });
        let answers: Vec<PayAnswer> = slow
            .into_iter()
            .chain(fast)
            .collect::<anyhow::Result<_>>()?;
        let race_orders = answers
            .into_iter()
            .enumerate()
            .map(|(i, answer)| {
                let (lead, stripe_delay) = if i < half { SLOW } else { FAST };
                RaceOrder {
                    order: orders[i].clone(),
                    buyer: buyers[i].clone(),
                    ticket: tickets[i].clone(),
                    answer,
                    lead,
                    stripe_delay,
                }
            })
            .collect();
        Ok(Outcome {
            tickets,
            buyers,
            race_orders,
            race_expired_at: expiries.iter().copied().max().map(DateTime::from_millis),
            ..Outcome::default()
        })
    }
}

/// The first error message of an answer in the error shape.
fn error_message(body: &Value) -> Option<&str> {
    body["errors"][0]["message"].as_str()
}

/// The id of what a 201 created; `None` for any other answer.
fn created_id(reply: &Reply) -> Option<String> {
    (reply.status == StatusCode::CREATED)
        .then(|| reply.body["id"].as_str().map(str::to_owned))
        .flatten()
}
