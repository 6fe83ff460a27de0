//! The flash sale: signed-in users race for a handful of tickets through `POST /api/orders`; exactly
//! one order per ticket may succeed. Then the winners pay. Measured on the way: order latency, time
//! to sell out, and how long the events take to reach the other services:
//!
//! - reservation: from the 201 of `POST /api/orders` to the tickets service's `ticket:updated`
//!   carrying that order id, seen by a plain NATS subscription. The tickets service publishes it
//!   right after committing the reservation, so it is when `GET /api/tickets/{id}` starts showing
//!   the `orderId` (checked over HTTP for every ticket afterwards). Observing NATS adds no load;
//!   polling 100 tickets every few milliseconds would.
//! - completion: from the 201 of `POST /api/payments` to `GET /api/orders/{id}` answering
//!   `complete` (the orders service publishes no event for it), polled every `POLL_EVERY`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use common::testing::invariants::check_orders_money;
use futures::StreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::load::{Latencies, LatencySummary, run_all};
use crate::monitor::{Monitor, PhaseUsage};
use crate::profile::{Profiler, Session};

pub const TICKET_RESERVED: &str = "Ticket is already reserved.";
/// How long a payment may wait for Stripe before the money check counts it stuck: payments'
/// default reconciler horizon (Stripe timeout 8 s + 5 s).
const MONEY_HORIZON: Duration = Duration::from_secs(13);

/// The payments service's answers that call for a retry or tell that it is done.
pub const IN_PROGRESS: &str = "A payment for this order is already in progress.";
pub const ALREADY_PAID: &str = "Order has already been paid.";
pub const POLL_EVERY: Duration = Duration::from_millis(10);
const PROPAGATION_LIMIT: Duration = Duration::from_secs(30);
const TICKET_PRICE_EUROS: f64 = 25.0;

pub struct Seed {
    pub seller: String,
    pub ticket_ids: Vec<String>,
    pub create_ticket_latency: LatencySummary,
    /// From the last `POST /api/tickets` 201 until every ticket is in the orders service's replica.
    pub replica_ms: f64,
}

/// A seller and `count` tickets for sale, waited for until the orders service knows them all.
pub async fn seed(
    api: &Api,
    orders_db: &mongodb::Database,
    run: &str,
    count: usize,
) -> anyhow::Result<Seed> {
    eprintln!("==> seeding: a seller and {count} tickets");
    let seller = api
        .send(
            Method::POST,
            "/api/users/signup",
            None,
            Some(&json!({ "email": format!("seller-{run}@bench.test"), "password": crate::auth::PASSWORD })),
        )
        .await?;
    let Some(seller) = seller.cookie.filter(|_| seller.status == 201) else {
        bail!("seller signup: {} {}", seller.status, seller.body);
    };
    let created = run_all((0..count).collect(), 8, {
        let (api, seller, run) = (api.clone(), seller.clone(), run.to_owned());
        move |i: usize| {
            let (api, seller, run) = (api.clone(), seller.clone(), run.clone());
            async move {
                let body = json!({ "title": format!("Flash sale {run} seat {i}"), "price": TICKET_PRICE_EUROS });
                let sent = Instant::now();
                let reply = api
                    .send(Method::POST, "/api/tickets", Some(&seller), Some(&body))
                    .await?;
                let elapsed = sent.elapsed();
                match reply.id() {
                    Some(id) if reply.status == 201 => Ok((id, elapsed)),
                    _ => bail!("POST /api/tickets: {} {}", reply.status, reply.body),
                }
            }
        }
    })
    .await?
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    let created_at = Instant::now();
    let mut latencies = Latencies::new();
    let mut ticket_ids = Vec::with_capacity(count);
    for (id, elapsed) in created {
        latencies.record(elapsed);
        ticket_ids.push(id);
    }
    let ids: Vec<Bson> = ticket_ids
        .iter()
        .map(|id| ObjectId::parse_str(id).map(Bson::ObjectId))
        .collect::<Result<_, _>>()
        .context("a ticket id that is not an ObjectId")?;
    let replica = orders_db.collection::<Document>("tickets");
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        let known = replica
            .count_documents(doc! { "_id": { "$in": ids.clone() } })
            .await?;
        if known == count as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the orders service knows only {known} of the {count} new tickets after {PROPAGATION_LIMIT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Seed {
        seller,
        ticket_ids,
        create_ticket_latency: latencies.summary(),
        replica_ms: created_at.elapsed().as_secs_f64() * 1000.0,
    })
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Propagation {
    pub what: String,
    pub expected: usize,
    pub observed: usize,
    /// Seen before the client even had its 201 (recorded as 0 ms).
    pub before_the_201: usize,
    /// From the 201: a lower bound of the propagation (the change was committed before it).
    pub latency: LatencySummary,
    /// From sending the request: an upper bound (includes the request itself).
    pub from_request_sent: LatencySummary,
    /// From the event that set it off, as seen on NATS (`order:created` for a reservation): the
    /// handling service's own time, whatever the client's answer was delayed by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_event: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FlashSale {
    pub users: usize,
    pub tickets: usize,
    pub contenders_per_ticket: usize,
    /// Requests in flight at most (the proxy's worker_connections bound the connections).
    pub in_flight: usize,
    /// 201 answers.
    pub sold: usize,
    /// 400 `Ticket is already reserved.` answers.
    pub refused: usize,
    /// Any other answer or transport error.
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// 201s beyond the first for a ticket.
    pub oversold: usize,
    /// Tickets for which no client saw a 201.
    pub unsold: usize,
    /// Live orders in the database whose 201 never reached its client (the request timed out).
    pub sold_unseen_by_client: usize,
    /// Orders in the orders database holding one of the sale's tickets (reservation key).
    pub live_orders_in_database: u64,
    /// Orders in the orders database for the sale's tickets, any status.
    pub orders_in_database: u64,
    /// Of those, cancelled ones (an expired reservation would show here).
    pub cancelled_orders_in_database: u64,
    /// Tickets held by more than one order that is not cancelled.
    pub tickets_with_several_live_orders: usize,
    /// Tickets whose `GET /api/tickets/{id}` shows the winning order's id.
    pub tickets_showing_their_order: usize,
    /// From the first request to the last 201.
    pub sold_out_ms: f64,
    /// From the first request to the last answer.
    pub all_answered_ms: f64,
    pub answers_per_second: f64,
    pub order_latency: LatencySummary,
    pub winning_order_latency: LatencySummary,
    pub reservation: Propagation,
    /// (ms since the start, orders sold so far), one point per 201.
    pub sold_timeline: Vec<(f64, usize)>,
    pub usage: PhaseUsage,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Payments {
    pub orders: usize,
    pub paid: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// 404 answers retried while the payments service's replica had not the order yet.
    pub retried_not_found: u64,
    /// 409 (changed concurrently) or "in progress" answers retried.
    pub retried_conflict: u64,
    pub payment_latency: LatencySummary,
    pub completion: Propagation,
    pub poll_every_ms: f64,
    pub polls: u64,
    pub completed_in_database: u64,
    /// The money invariant over the paid orders (`common::testing::invariants`), from the
    /// databases: stripe-mock keeps no ledger of charges.
    pub money_violations: Vec<String>,
    pub usage: PhaseUsage,
}

struct Attempt {
    user: usize,
    ticket: usize,
    outcome: Result<(u16, String), String>,
    order_id: Option<String>,
    latency: Duration,
    answered: Instant,
}

/// Records when each order id first appears in a `ticket:updated` event.
struct Observer {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    task: JoinHandle<()>,
}

impl Observer {
    /// Records when each message of `subject` was first seen, by the order id in its field
    /// `order_id_field`.
    async fn start(
        nats_url: &str,
        subject: String,
        order_id_field: &'static str,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        let mut subscriber = client.subscribe(subject).await?;
        // The subscription is registered on the server before any order is sent.
        client.flush().await?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let _client = client;
                while let Some(message) = subscriber.next().await {
                    let at = Instant::now();
                    let order_id = serde_json::from_slice::<serde_json::Value>(&message.payload)
                        .ok()
                        .and_then(|v| v[order_id_field].as_str().map(str::to_owned));
                    if let (Some(order_id), Ok(mut seen)) = (order_id, seen.lock()) {
                        seen.entry(order_id).or_insert(at);
                    }
                }
            }
        });
        Ok(Self { seen, task })
    }

    fn seen(&self, order_id: &str) -> Option<Instant> {
        self.seen.lock().ok()?.get(order_id).copied()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct SaleSetup<'a> {
    pub cookies: &'a [String],
    pub ticket_ids: &'a [String],
    pub in_flight: usize,
    pub nats_url: &'a str,
    pub subject_prefix: &'a str,
    pub orders_db: &'a mongodb::Database,
    pub profiler: Option<&'a Profiler>,
}

/// At most this many error answers are kept as samples for the report.
const ERROR_SAMPLES: usize = 5;

/// Keeps the first few errors: enough to tell what went wrong, not one line per failure.
fn sample_error(samples: &mut Vec<String>, error: impl FnOnce() -> String) {
    if samples.len() < ERROR_SAMPLES {
        samples.push(error());
    }
}

/// One request of the sale: a user, the ticket it wants (index and id) and its session cookie.
type Order = (usize, usize, String, String);

/// The sale; returns the figures and, per ticket, the winner (user index, order id).
pub async fn run(
    api: &Api,
    monitor: &Monitor,
    setup: &SaleSetup<'_>,
) -> anyhow::Result<(FlashSale, Vec<(usize, String)>)> {
    let (users, tickets) = (setup.cookies.len(), setup.ticket_ids.len());
    anyhow::ensure!(
        tickets > 0 && users >= tickets,
        "need at least as many users as tickets"
    );
    let observer = Observer::start(
        setup.nats_url,
        format!("{}ticket:updated", setup.subject_prefix),
        "orderId",
    )
    .await?;
    let created = Observer::start(
        setup.nats_url,
        format!("{}order:created", setup.subject_prefix),
        "id",
    )
    .await?;
    let Race {
        attempts,
        started,
        all_answered,
        usage,
        profiling,
    } = race(api, monitor, setup).await?;
    let tally = Tally::of(&attempts, started, tickets);

    // Reservation propagation, as seen on NATS; the profile covers it too.
    let winning = tally.winning();
    wait_until_seen(&observer, &winning).await;
    if let (Some(profiler), Some(session)) = (setup.profiler, profiling) {
        profiler.stop(session).await?;
    }
    let reservation = reservation_figures(&observer, &created, &winning);

    let database = DatabaseOrders::of(setup.orders_db, setup.ticket_ids).await?;
    let sold_unseen_by_client = tally.unseen_by_client(&database.live_order_of);
    let tickets_showing_their_order =
        tickets_showing_their_order(api, setup.ticket_ids, &database.live_order_of).await?;

    // Oversold: a ticket with two live orders, or two 201s for one ticket. A second 201 could only
    // be legitimate after the first order expired, which the long reservation window rules out
    // (scripts/bench.sh); a cancelled order fails the run as well, so that nothing hides there.
    // Exactly one order per ticket must exist, whether or not its 201 reached the client.
    let passed = tally.oversold == 0
        && database.tickets_with_several_live_orders == 0
        && database.cancelled_orders == 0
        && database.live_orders == tickets as u64
        && database.orders == tickets as u64
        && tickets_showing_their_order == tickets;
    let winners = tally.first_winners();
    Ok((
        FlashSale {
            users,
            tickets,
            contenders_per_ticket: users / tickets,
            in_flight: setup.in_flight,
            sold: tally.sold,
            refused: tally.refused,
            errors: tally.errors,
            error_samples: tally.error_samples,
            oversold: tally.oversold,
            unsold: tally.unsold,
            live_orders_in_database: database.live_orders,
            orders_in_database: database.orders,
            cancelled_orders_in_database: database.cancelled_orders,
            tickets_with_several_live_orders: database.tickets_with_several_live_orders,
            sold_unseen_by_client,
            tickets_showing_their_order,
            sold_out_ms: tally.sold_out_ms,
            all_answered_ms: all_answered.as_secs_f64() * 1000.0,
            answers_per_second: attempts.len() as f64 / all_answered.as_secs_f64(),
            order_latency: tally.latencies.summary(),
            winning_order_latency: tally.winning_latencies.summary(),
            reservation,
            sold_timeline: tally.sold_timeline,
            usage,
            passed,
        },
        winners,
    ))
}

/// The requests of the sale and what they were answered.
struct Race {
    attempts: Vec<Attempt>,
    started: Instant,
    /// From the first request to the last answer.
    all_answered: Duration,
    usage: PhaseUsage,
    /// Still recording: the propagation that follows belongs to the sale's profile.
    profiling: Option<Session>,
}

/// Every user sends its order, `setup.in_flight` at a time.
async fn race(api: &Api, monitor: &Monitor, setup: &SaleSetup<'_>) -> anyhow::Result<Race> {
    let work = orders_to_send(setup);
    eprintln!(
        "==> flash sale: {} users race for {} tickets ({} in flight at most)",
        setup.cookies.len(),
        setup.ticket_ids.len(),
        setup.in_flight
    );
    let profiling = match setup.profiler {
        Some(profiler) => Some(profiler.start("flash-sale").await?),
        None => None,
    };
    let mark = monitor.begin("flash sale").await;
    let started = Instant::now();
    let attempts = run_all(work, setup.in_flight, {
        let api = api.clone();
        move |order: Order| {
            let api = api.clone();
            async move { send_order(&api, order).await }
        }
    })
    .await?;
    let all_answered = started.elapsed();
    let usage = monitor.end(mark).await;
    Ok(Race {
        attempts,
        started,
        all_answered,
        usage,
        profiling,
    })
}

/// User u wants ticket u % tickets: every ticket has users / tickets contenders. Users start in a
/// shuffled order so that the contenders of a ticket are spread over the whole burst.
fn orders_to_send(setup: &SaleSetup<'_>) -> Vec<Order> {
    let tickets = setup.ticket_ids.len();
    let mut order: Vec<usize> = (0..setup.cookies.len()).collect();
    shuffle(&mut order, seed_from_clock());
    order
        .into_iter()
        .map(|user| {
            let ticket = user % tickets;
            (
                user,
                ticket,
                setup.cookies[user].clone(),
                setup.ticket_ids[ticket].clone(),
            )
        })
        .collect()
}

async fn send_order(api: &Api, (user, ticket, cookie, ticket_id): Order) -> Attempt {
    let body = json!({ "ticketId": ticket_id });
    let sent = Instant::now();
    let reply = api
        .send(Method::POST, "/api/orders", Some(&cookie), Some(&body))
        .await;
    let answered = Instant::now();
    let (outcome, order_id) = match reply {
        Ok(reply) => {
            let message = reply.body["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let id = reply.id().filter(|_| reply.status == 201);
            (Ok((reply.status, message)), id)
        }
        Err(err) => (Err(format!("{err:#}")), None),
    };
    Attempt {
        user,
        ticket,
        outcome,
        order_id,
        latency: answered - sent,
        answered,
    }
}

/// The answers of the sale, counted as the clients saw them.
struct Tally<'a> {
    latencies: Latencies,
    winning_latencies: Latencies,
    /// Per ticket index, the attempts that got a 201 for it.
    winners: BTreeMap<usize, Vec<&'a Attempt>>,
    refused: usize,
    errors: usize,
    error_samples: Vec<String>,
    sold: usize,
    oversold: usize,
    unsold: usize,
    sold_timeline: Vec<(f64, usize)>,
    sold_out_ms: f64,
}

impl<'a> Tally<'a> {
    fn of(attempts: &'a [Attempt], started: Instant, tickets: usize) -> Self {
        let mut latencies = Latencies::new();
        let mut winning_latencies = Latencies::new();
        let mut winners: BTreeMap<usize, Vec<&Attempt>> = BTreeMap::new();
        let (mut refused, mut errors) = (0, 0);
        let mut error_samples = Vec::new();
        for attempt in attempts {
            latencies.record(attempt.latency);
            match (&attempt.outcome, &attempt.order_id) {
                (Ok((201, _)), Some(_)) => {
                    winning_latencies.record(attempt.latency);
                    winners.entry(attempt.ticket).or_default().push(attempt);
                }
                (Ok((400, message)), _) if message == TICKET_RESERVED => refused += 1,
                (outcome, _) => {
                    errors += 1;
                    sample_error(&mut error_samples, || format!("{outcome:?}"));
                }
            }
        }
        let sold: usize = winners.values().map(Vec::len).sum();
        let oversold: usize = winners.values().map(|w| w.len().saturating_sub(1)).sum();
        let unsold = tickets - winners.len();
        let mut sold_at: Vec<Duration> = winners
            .values()
            .flatten()
            .map(|a| a.answered - started)
            .collect();
        sold_at.sort();
        let sold_timeline = sold_at
            .iter()
            .enumerate()
            .map(|(i, at)| (at.as_secs_f64() * 1000.0, i + 1))
            .collect();
        let sold_out_ms = sold_at.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        eprintln!(
            "    sold {sold} (oversold {oversold}, unsold {unsold}), refused {refused}, errors {errors}; sold out in {sold_out_ms:.0} ms"
        );
        Self {
            latencies,
            winning_latencies,
            winners,
            refused,
            errors,
            error_samples,
            sold,
            oversold,
            unsold,
            sold_timeline,
            sold_out_ms,
        }
    }

    /// Each 201 with its order id.
    fn winning(&self) -> Vec<(&'a Attempt, String)> {
        self.winners
            .values()
            .flatten()
            .filter_map(|a| a.order_id.clone().map(|id| (*a, id)))
            .collect()
    }

    /// Live orders in the database whose 201 never reached the client (it timed out).
    fn unseen_by_client(&self, live_order_of: &HashMap<String, String>) -> usize {
        let client_seen: std::collections::HashSet<&str> = self
            .winners
            .values()
            .flatten()
            .filter_map(|a| a.order_id.as_deref())
            .collect();
        live_order_of
            .values()
            .filter(|id| !client_seen.contains(id.as_str()))
            .count()
    }

    /// Per ticket, the user who got the first 201 and its order id.
    fn first_winners(&self) -> Vec<(usize, String)> {
        self.winners
            .values()
            .filter_map(|w| w.first())
            .filter_map(|a| a.order_id.clone().map(|id| (a.user, id)))
            .collect()
    }
}

/// Until NATS has shown every winning order's reservation, or `PROPAGATION_LIMIT`.
async fn wait_until_seen(observer: &Observer, winning: &[(&Attempt, String)]) {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while winning.iter().any(|(_, id)| observer.seen(id).is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn reservation_figures(
    observer: &Observer,
    created: &Observer,
    winning: &[(&Attempt, String)],
) -> Propagation {
    let mut reservation = Latencies::new();
    let mut from_request_sent = Latencies::new();
    let mut from_event = Latencies::new();
    let mut before_the_201 = 0;
    for (attempt, id) in winning {
        if let Some(seen) = observer.seen(id) {
            if let Some(event) = created.seen(id) {
                from_event.record(seen.saturating_duration_since(event));
            }
            if seen < attempt.answered {
                before_the_201 += 1;
            }
            reservation.record(seen.saturating_duration_since(attempt.answered));
            from_request_sent
                .record(seen.saturating_duration_since(attempt.answered - attempt.latency));
        }
    }
    let reservation = Propagation {
        what:
            "POST /api/orders 201 → ticket:updated with the order id (tickets service reserved it)"
                .to_owned(),
        expected: winning.len(),
        observed: reservation.count() as usize,
        before_the_201,
        latency: reservation.summary(),
        from_request_sent: from_request_sent.summary(),
        from_event: (from_event.count() > 0).then(|| from_event.summary()),
    };
    eprintln!(
        "    reservation propagation: {}/{} seen, p50 {:.1} ms, p99 {:.1} ms",
        reservation.observed,
        reservation.expected,
        reservation.latency.p50_ms,
        reservation.latency.p99_ms
    );
    reservation
}

/// The database's truth about the sale's tickets: one live order per ticket, and nothing left by
/// the losers.
struct DatabaseOrders {
    /// Orders holding one of the tickets (reservation key).
    live_orders: u64,
    /// Orders for the tickets, any status.
    orders: u64,
    cancelled_orders: u64,
    /// Tickets held by more than one order that is not cancelled.
    tickets_with_several_live_orders: usize,
    /// Per ticket id, the id of an order that is not cancelled.
    live_order_of: HashMap<String, String>,
}

impl DatabaseOrders {
    async fn of(orders_db: &mongodb::Database, ticket_ids: &[String]) -> anyhow::Result<Self> {
        let orders = orders_db.collection::<Document>("orders");
        let ids: Vec<Bson> = ticket_ids
            .iter()
            .map(|id| Bson::String(id.clone()))
            .collect();
        let live_orders = orders
            .count_documents(doc! { "reservation": { "$in": ids.clone() } })
            .await?;
        // Per ticket id: (orders not cancelled, cancelled orders).
        let mut per_ticket: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut live_order_of: HashMap<String, String> = HashMap::new();
        let mut cursor = orders.find(doc! { "ticketId": { "$in": ids } }).await?;
        while let Some(order) = cursor.next().await {
            let order = order?;
            let ticket = order.get_str("ticketId").unwrap_or_default().to_owned();
            let entry = per_ticket.entry(ticket.clone()).or_default();
            if order.get_str("status") == Ok("cancelled") {
                entry.1 += 1;
            } else {
                entry.0 += 1;
                if let Ok(id) = order.get_object_id("_id") {
                    live_order_of.insert(ticket, id.to_hex());
                }
            }
        }
        Ok(Self {
            live_orders,
            orders: per_ticket
                .values()
                .map(|(live, cancelled)| live + cancelled)
                .sum(),
            cancelled_orders: per_ticket.values().map(|(_, cancelled)| cancelled).sum(),
            tickets_with_several_live_orders: per_ticket
                .values()
                .filter(|(live, _)| *live > 1)
                .count(),
            live_order_of,
        })
    }
}

/// The same over HTTP: how many tickets show the order that holds them.
async fn tickets_showing_their_order(
    api: &Api,
    ticket_ids: &[String],
    live_order_of: &HashMap<String, String>,
) -> anyhow::Result<usize> {
    let mut showing = 0;
    for ticket_id in ticket_ids {
        let shown = api
            .send(
                Method::GET,
                &format!("/api/tickets/{ticket_id}"),
                None,
                None,
            )
            .await?;
        if let Some(holder) = live_order_of.get(ticket_id)
            && shown.body["orderId"].as_str() == Some(holder.as_str())
        {
            showing += 1;
        }
    }
    Ok(showing)
}

struct PaymentOutcome {
    paid: Option<Duration>,
    completed_after: Option<Duration>,
    retried_not_found: u64,
    retried_conflict: u64,
    polls: u64,
    error: Option<String>,
}

/// Every winner pays at once; then each order is polled until it is `complete`.
pub async fn pay(
    api: &Api,
    monitor: &Monitor,
    orders_db: &mongodb::Database,
    payments_db: &mongodb::Database,
    winners: Vec<(String, String)>,
) -> anyhow::Result<Payments> {
    let count = winners.len();
    eprintln!("==> payments: {count} winners pay at once");
    let mark = monitor.begin("payments").await;
    let outcomes = run_all(winners.clone(), count, {
        let api = api.clone();
        move |(cookie, order_id): (String, String)| {
            let api = api.clone();
            async move { pay_one(&api, &cookie, &order_id).await }
        }
    })
    .await?;
    let usage = monitor.end(mark).await;
    let mut payments = payment_figures(&outcomes, usage);
    let ids: Vec<Bson> = winners
        .iter()
        .filter_map(|(_, id)| ObjectId::parse_str(id).ok().map(Bson::ObjectId))
        .collect();
    payments.completed_in_database = orders_db
        .collection::<Document>("orders")
        .count_documents(doc! { "_id": { "$in": ids }, "status": "complete" })
        .await?;
    let order_ids: Vec<String> = winners.iter().map(|(_, id)| id.clone()).collect();
    let money = check_orders_money(&order_ids, orders_db, payments_db, MONEY_HORIZON).await?;
    payments.money_violations = money.violations;
    eprintln!(
        "    paid {}/{count}; payment p50 {:.0} ms; completion p50 {:.1} ms, p99 {:.1} ms",
        payments.paid,
        payments.payment_latency.p50_ms,
        payments.completion.latency.p50_ms,
        payments.completion.latency.p99_ms
    );
    Ok(payments)
}

/// The figures the clients saw; what the databases hold is filled in by `pay`.
fn payment_figures(outcomes: &[PaymentOutcome], usage: PhaseUsage) -> Payments {
    let mut payment_latency = Latencies::new();
    let mut completion = Latencies::new();
    let mut completion_from_sent = Latencies::new();
    let (mut paid, mut errors, mut retried_not_found, mut polls) = (0, 0, 0, 0);
    let mut retried_conflict = 0;
    let mut error_samples = Vec::new();
    for outcome in outcomes {
        retried_not_found += outcome.retried_not_found;
        retried_conflict += outcome.retried_conflict;
        polls += outcome.polls;
        if let Some(latency) = outcome.paid {
            paid += 1;
            payment_latency.record(latency);
        }
        if let (Some(after), Some(paid)) = (outcome.completed_after, outcome.paid) {
            completion.record(after);
            completion_from_sent.record(after + paid);
        }
        if let Some(error) = &outcome.error {
            errors += 1;
            sample_error(&mut error_samples, || error.clone());
        }
    }
    Payments {
        orders: outcomes.len(),
        paid,
        errors,
        error_samples,
        retried_not_found,
        retried_conflict,
        payment_latency: payment_latency.summary(),
        completion: Propagation {
            what: "POST /api/payments 201 → GET /api/orders/{id} says complete".to_owned(),
            expected: outcomes.len(),
            observed: completion.count() as usize,
            before_the_201: 0,
            latency: completion.summary(),
            from_request_sent: completion_from_sent.summary(),
            from_event: None,
        },
        poll_every_ms: POLL_EVERY.as_secs_f64() * 1000.0,
        polls,
        completed_in_database: 0,
        money_violations: Vec::new(),
        usage,
    }
}

async fn pay_one(api: &Api, cookie: &str, order_id: &str) -> PaymentOutcome {
    let mut outcome = PaymentOutcome {
        paid: None,
        completed_after: None,
        retried_not_found: 0,
        retried_conflict: 0,
        polls: 0,
        error: None,
    };
    let body = json!({ "orderId": order_id, "token": "tok_visa" });
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    let paid_at = loop {
        let sent = Instant::now();
        match api
            .send(Method::POST, "/api/payments", Some(cookie), Some(&body))
            .await
        {
            // 202: Stripe's answer was late and the payment is being confirmed; the order
            // completes once payments' reconciler has settled it.
            Ok(reply) if reply.status == 201 || reply.status == 202 => {
                let at = Instant::now();
                outcome.paid = Some(at - sent);
                break at;
            }
            // The payments service has not seen order:created yet.
            Ok(reply) if reply.status == 404 && Instant::now() < deadline => {
                outcome.retried_not_found += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // "Changed concurrently, please retry" (409), or a payment still in progress: a
            // client retries, as the answer says.
            Ok(reply)
                if (reply.status == 409 || reply.body.to_string().contains(IN_PROGRESS))
                    && Instant::now() < deadline =>
            {
                outcome.retried_conflict += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // An earlier attempt went through after all (its answer was the 409).
            Ok(reply)
                if outcome.retried_conflict > 0
                    && reply.body.to_string().contains(ALREADY_PAID) =>
            {
                let at = Instant::now();
                outcome.paid = Some(at - sent);
                break at;
            }
            Ok(reply) => {
                outcome.error = Some(format!(
                    "POST /api/payments: {} {}",
                    reply.status, reply.body
                ));
                return outcome;
            }
            Err(err) => {
                outcome.error = Some(format!("POST /api/payments: {err:#}"));
                return outcome;
            }
        }
    };
    let path = format!("/api/orders/{order_id}");
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while Instant::now() < deadline {
        outcome.polls += 1;
        if let Ok(reply) = api.send(Method::GET, &path, Some(cookie), None).await
            && reply.body["status"] == "complete"
        {
            outcome.completed_after = Some(paid_at.elapsed());
            return outcome;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    outcome.error = Some(format!(
        "order {order_id} not complete {PROPAGATION_LIMIT:?} after its payment"
    ));
    outcome
}

fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
        | 1
}

/// Fisher–Yates with xorshift64: no need for a cryptographic generator to shuffle a queue.
pub fn shuffle<T>(items: &mut [T], mut state: u64) {
    state |= 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shuffle_keeps_every_item_and_moves_some() {
        let mut items: Vec<usize> = (0..1000).collect();
        shuffle(&mut items, 42);
        assert_ne!(items, (0..1000).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..1000).collect::<Vec<_>>());
    }
}
