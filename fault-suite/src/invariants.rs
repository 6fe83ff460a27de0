//! The invariants that hold whatever the run did, read straight from the services' databases, the
//! Stripe double's ledger and the bus: they are checked after every scenario of the table and at
//! the end of a chaos run.
//!
//! * no ticket has two live orders or two `complete` ones, or two charges kept (sold twice);
//! * every ticket is reserved in tickets by exactly the order that holds it live in orders, and is
//!   at the same version in the orders service's replica (no event lost);
//! * no ticket or order changed more often than its history explains (no side effect applied
//!   twice, e.g. by a duplicate delivery);
//! * no order is still `created` past its window plus the sweeper's grace;
//! * every order is in the payments service's replica, cancelled there when cancelled in orders;
//! * every write a service acknowledged is present;
//! * the dead-letter stream holds exactly the poison the run injected, every consumer that saw it
//!   left it there, and each service's `/readyz` counts its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::bus::DeadLetter;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;

use crate::degradation;
use crate::flow::{Outcome, PayAnswer, Write};
use crate::stack::{CONSUMERS, SWEEP_GRACE, SWEEP_INTERVAL, Stack};

/// Which invariant a problem breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Money,
    SoldTwice,
    Overdue,
    Reservation,
    Versions,
    Replicas,
    Writes,
    DeadLetters,
    Outcomes,
    Flows,
    Faults,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Money,
        Kind::SoldTwice,
        Kind::Overdue,
        Kind::Reservation,
        Kind::Versions,
        Kind::Replicas,
        Kind::Writes,
        Kind::DeadLetters,
        Kind::Outcomes,
        Kind::Flows,
        Kind::Faults,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Money => {
                "money invariant (every charge refunded or the one payment of a complete order; \
                 nothing waiting for Stripe)"
            }
            Kind::SoldTwice => "no ticket sold twice (two complete orders or two kept charges)",
            Kind::Overdue => "no order `created` past its window plus the sweeper's grace",
            Kind::Reservation => "every ticket reserved by exactly the order that holds it live",
            Kind::Versions => "tickets and orders at the same versions; no change applied twice",
            Kind::Replicas => "every order in the payments replica, cancelled there when cancelled",
            Kind::Writes => "every acknowledged write present",
            Kind::DeadLetters => "no unexpected dead letters (injected poison all dead-lettered)",
            Kind::Outcomes => "every order ended as its buyer was told",
            Kind::Flows => "every scripted flow completed",
            Kind::Faults => "every fault injected, every service ready again",
        }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub text: String,
}

impl Problem {
    pub fn new(kind: Kind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// How long past its window plus the grace an order may still be `created` (a sweep pass under
/// load, a service restarting).
const SWEEP_SLACK: Duration = Duration::from_secs(5);

/// An order as the orders service stores it.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub status: String,
    pub ticket: String,
    pub version: i64,
    pub expires_at_ms: i64,
    /// The order records that its charge was refunded.
    pub refunded: bool,
}

impl OrderRow {
    fn live(&self) -> bool {
        matches!(
            self.status.as_str(),
            "created" | "awaiting:payment" | "complete"
        )
    }
}

/// A ticket as the tickets service stores it.
#[derive(Debug, Clone)]
pub struct TicketRow {
    pub title: String,
    pub price_cents: i64,
    pub version: i64,
    pub order: Option<String>,
}

/// One read of every service's state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub orders: BTreeMap<String, OrderRow>,
    pub tickets: BTreeMap<String, TicketRow>,
    /// The orders service's replica of tickets: version by ticket id.
    pub replica_tickets: HashMap<String, i64>,
    /// The payments service's replica of orders: status by order id.
    pub payments_replica: HashMap<String, String>,
    /// Payment records by order id: their status.
    pub payments: HashMap<String, String>,
    /// Accounts by normalised email: the claims in `emails`.
    pub users: HashSet<String>,
}

fn id_text(value: Option<&Bson>) -> Option<String> {
    match value? {
        Bson::ObjectId(oid) => Some(oid.to_hex()),
        Bson::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn int(doc: &Document, key: &str) -> i64 {
    match doc.get(key) {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => -1,
    }
}

async fn all(db: &mongodb::Database, collection: &str) -> anyhow::Result<Vec<Document>> {
    Ok(db
        .collection::<Document>(collection)
        .find(doc! {})
        .await?
        .try_collect()
        .await?)
}

impl Snapshot {
    pub async fn read(stack: &Stack) -> anyhow::Result<Self> {
        let orders_db = stack.database("orders")?;
        let tickets_db = stack.database("tickets")?;
        let payments_db = stack.database("payments")?;
        let auth_db = stack.database("auth")?;
        let mut snapshot = Snapshot::default();
        for order in all(&orders_db, "orders").await? {
            let Some(id) = id_text(order.get("_id")) else {
                continue;
            };
            let expires_at_ms = match order.get("expiresAt") {
                Some(Bson::DateTime(at)) => at.timestamp_millis(),
                _ => 0,
            };
            snapshot.orders.insert(
                id,
                OrderRow {
                    status: order.get_str("status").unwrap_or("?").to_owned(),
                    ticket: order.get_str("ticketId").unwrap_or("?").to_owned(),
                    version: int(&order, "version"),
                    expires_at_ms,
                    refunded: matches!(order.get("refund"), Some(Bson::Document(_))),
                },
            );
        }
        for ticket in all(&tickets_db, "tickets").await? {
            let Some(id) = id_text(ticket.get("_id")) else {
                continue;
            };
            snapshot.tickets.insert(
                id,
                TicketRow {
                    title: ticket.get_str("title").unwrap_or("?").to_owned(),
                    price_cents: int(&ticket, "priceCents"),
                    version: int(&ticket, "version"),
                    order: ticket.get_str("orderId").ok().map(str::to_owned),
                },
            );
        }
        for ticket in all(&orders_db, "tickets").await? {
            if let Some(id) = id_text(ticket.get("_id")) {
                snapshot.replica_tickets.insert(id, int(&ticket, "version"));
            }
        }
        for order in all(&payments_db, "orders").await? {
            if let Some(id) = id_text(order.get("_id")) {
                let status = order.get_str("status").unwrap_or("?").to_owned();
                snapshot.payments_replica.insert(id, status);
            }
        }
        for payment in all(&payments_db, "payments").await? {
            if let Some(id) = id_text(payment.get("_id")) {
                let status = payment.get_str("status").unwrap_or("?").to_owned();
                snapshot.payments.insert(id, status);
            }
        }
        // The claim in `emails` is the account (auth/src/store.rs); `users` is written after it and
        // may be missing when the signup's request failed between the two writes.
        for claim in all(&auth_db, "emails").await? {
            if let Ok(email) = claim.get_str("_id") {
                snapshot.users.insert(email.to_owned());
            }
        }
        Ok(snapshot)
    }
}

/// The charges of each order at the Stripe double: how many, and how many of them were kept (not
/// refunded).
fn charges_by_order(stack: &Stack) -> HashMap<String, (usize, usize)> {
    let mut by_order: HashMap<String, (usize, usize)> = HashMap::new();
    for charge in stack.stripe_double.charges() {
        if let Some(order) = charge.order_id {
            let entry = by_order.entry(order).or_default();
            entry.0 += 1;
            if charge.refund_id.is_none() {
                entry.1 += 1;
            }
        }
    }
    by_order
}

/// What the dead-letter check found.
#[derive(Debug, Default, Clone)]
pub struct DeadLetters {
    /// Letters of injected poison.
    pub expected: usize,
    /// Letters nobody injected: each is a problem.
    pub unexpected: Vec<DeadLetter>,
}

/// Every problem with the state of the run, against `writes` (what was acknowledged).
pub async fn check(stack: &Stack, snapshot: &Snapshot, writes: &[Write]) -> Vec<Problem> {
    let mut problems = Vec::new();
    state_problems(stack, snapshot, &mut problems);
    write_problems(stack, snapshot, writes, &mut problems);
    match dead_letter_problems(stack).await {
        Ok((_, found)) => problems.extend(found),
        Err(err) => problems.push(Problem::new(
            Kind::DeadLetters,
            format!("cannot read the dead letters: {err:#}"),
        )),
    }
    problems
}

fn state_problems(stack: &Stack, snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let now_ms = mongodb::bson::DateTime::now().timestamp_millis();
    let overdue_ms =
        i64::try_from((SWEEP_GRACE + SWEEP_INTERVAL + SWEEP_SLACK).as_millis()).unwrap_or(i64::MAX);
    let charges = charges_by_order(stack);
    let mut orders_of: HashMap<&str, Vec<(&String, &OrderRow)>> = HashMap::new();
    for (id, order) in &snapshot.orders {
        orders_of
            .entry(&order.ticket)
            .or_default()
            .push((id, order));
        if matches!(order.status.as_str(), "created" | "awaiting:payment")
            && now_ms - order.expires_at_ms > overdue_ms
        {
            problems.push(Problem::new(
                Kind::Overdue,
                format!(
                    "order {id} is still {} {:.1} s after its window ended (sweeper grace {:?})",
                    order.status,
                    (now_ms - order.expires_at_ms) as f64 / 1000.0,
                    SWEEP_GRACE
                ),
            ));
        }
        let most = 1 + i64::from(order.refunded);
        if order.version > most {
            problems.push(Problem::new(
                Kind::Versions,
                format!(
                    "order {id} ({}, refunded: {}) is at version {}: more changes than it went \
                     through (at most {most})",
                    order.status, order.refunded, order.version
                ),
            ));
        }
        match snapshot.payments_replica.get(id) {
            None => problems.push(Problem::new(
                Kind::Replicas,
                format!(
                    "order {id} ({}) is missing from the payments service's replica",
                    order.status
                ),
            )),
            Some(copy) if order.status == "cancelled" && copy != "cancelled" => {
                problems.push(Problem::new(
                    Kind::Replicas,
                    format!("order {id} is cancelled in orders, {copy} in payments"),
                ));
            }
            Some(_) => {}
        }
    }
    for (id, ticket) in &snapshot.tickets {
        let orders = orders_of.get(id.as_str()).cloned().unwrap_or_default();
        let live: Vec<&String> = orders
            .iter()
            .filter(|(_, o)| o.live())
            .map(|(oid, _)| *oid)
            .collect();
        let complete = orders
            .iter()
            .filter(|(_, o)| o.status == "complete")
            .count();
        if complete > 1 {
            problems.push(Problem::new(
                Kind::SoldTwice,
                format!("ticket {id} was sold {complete} times (complete orders)"),
            ));
        }
        let kept: usize = orders
            .iter()
            .map(|(oid, _)| charges.get(oid.as_str()).map_or(0, |c| c.1))
            .sum();
        if kept > 1 {
            problems.push(Problem::new(
                Kind::SoldTwice,
                format!("ticket {id} was paid {kept} times (charges kept)"),
            ));
        }
        if live.len() > 1 {
            problems.push(Problem::new(
                Kind::Reservation,
                format!("ticket {id} has {} live orders: {live:?}", live.len()),
            ));
        }
        let holder = live.first().map(|s| s.as_str());
        if ticket.order.as_deref() != holder {
            problems.push(Problem::new(
                Kind::Reservation,
                format!(
                    "ticket {id}: tickets says reserved by {:?}, orders holds it live by {holder:?}",
                    ticket.order
                ),
            ));
        }
        match snapshot.replica_tickets.get(id) {
            None => problems.push(Problem::new(
                Kind::Versions,
                format!("ticket {id} is missing from the orders replica"),
            )),
            Some(version) if *version != ticket.version => problems.push(Problem::new(
                Kind::Versions,
                format!(
                    "ticket {id}: version {} in tickets, {version} in the orders replica",
                    ticket.version
                ),
            )),
            Some(_) => {}
        }
        // Each order reserves its ticket once and releases it at most once.
        let explained: i64 = orders
            .iter()
            .map(|(_, o)| 1 + i64::from(o.status == "cancelled"))
            .sum();
        if ticket.version > explained {
            problems.push(Problem::new(
                Kind::Versions,
                format!(
                    "ticket {id} is at version {} but its {} orders explain at most {explained} \
                     changes",
                    ticket.version,
                    orders.len()
                ),
            ));
        }
    }
}

fn write_problems(
    stack: &Stack,
    snapshot: &Snapshot,
    writes: &[Write],
    problems: &mut Vec<Problem>,
) {
    let charges = charges_by_order(stack);
    for write in writes {
        let missing = match write {
            Write::Signup { email } => {
                (!snapshot.users.contains(&email.to_lowercase())).then(|| "no such user".to_owned())
            }
            Write::Ticket {
                id,
                title,
                price_cents,
            } => match snapshot.tickets.get(id) {
                None => Some("no such ticket".to_owned()),
                Some(t) if t.title != *title || t.price_cents != *price_cents => Some(format!(
                    "stored as {:?} at {} cents",
                    t.title, t.price_cents
                )),
                Some(_) => None,
            },
            Write::Order { id, ticket } => match snapshot.orders.get(id) {
                None => Some("no such order".to_owned()),
                Some(o) if o.ticket != *ticket => Some(format!("stored for ticket {}", o.ticket)),
                Some(_) => None,
            },
            Write::Cancel { order } => match snapshot.orders.get(order) {
                Some(o) if o.status == "cancelled" => None,
                other => Some(format!("the order is {:?}", other.map(|o| &o.status))),
            },
            Write::Payment { order, answer } => {
                let record = snapshot.payments.get(order);
                let charged = charges.get(order).is_some_and(|c| c.0 > 0);
                match (answer, record) {
                    (_, None) => Some("no payment record".to_owned()),
                    (PayAnswer::Paid, Some(_)) if !charged => {
                        Some("no charge at Stripe".to_owned())
                    }
                    (PayAnswer::Refunded, Some(status)) if status != "refunded" => {
                        Some(format!("the payment is {status}"))
                    }
                    _ => None,
                }
            }
        };
        if let Some(why) = missing {
            problems.push(Problem::new(
                Kind::Writes,
                format!("acknowledged write lost: {write:?}: {why}"),
            ));
        }
    }
}

/// Checks the dead-letter stream against the poison the run injected, and each service's
/// `/readyz` count against the stream.
pub async fn dead_letter_problems(stack: &Stack) -> anyhow::Result<(DeadLetters, Vec<Problem>)> {
    let letters = stack.bus().await?.dead_letters().await?;
    let poison = stack.injected_poison();
    let mut problems = Vec::new();
    let mut found = DeadLetters::default();
    let problem = |text: String| Problem::new(Kind::DeadLetters, text);
    for letter in &letters {
        if poison.iter().any(|p| letter.payload.contains(&p.marker)) {
            found.expected += 1;
        } else {
            problems.push(problem(format!(
                "unexpected dead letter {} from {} ({}): {}; payload {}",
                letter.sequence, letter.consumer, letter.subject, letter.reason, letter.payload
            )));
            found.unexpected.push(letter.clone());
        }
    }
    for injected in &poison {
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for consumer in &injected.consumers {
            *wanted.entry(consumer).or_default() += 1;
        }
        for (consumer, count) in wanted {
            let got = letters
                .iter()
                .filter(|l| l.consumer == consumer && l.payload.contains(&injected.marker))
                .count();
            if got < count {
                problems.push(problem(format!(
                    "poison {} dead-lettered {got} times by {consumer}, expected {count}",
                    injected.marker
                )));
            }
        }
    }
    for (service, group) in CONSUMERS {
        let in_stream = letters
            .iter()
            .filter(|l| l.consumer.starts_with(&format!("{group}_")))
            .count();
        let reported = degradation::readiness(stack, service)
            .await
            .and_then(|(status, body)| (status == 200).then_some(body))
            .map(|body| body["deadLetters"].clone())
            .unwrap_or(Value::Null);
        if reported.as_u64() != u64::try_from(in_stream).ok() {
            problems.push(problem(format!(
                "{service}'s /readyz reports deadLetters {reported}, the stream holds {in_stream}"
            )));
        }
    }
    Ok((found, problems))
}

/// What the scripted flows' outcomes expect of each order, from the databases (the chaos run's
/// counterpart of `check::inconsistencies`, which asks the services' APIs one buyer at a time):
/// as there, an order its buyer was told is paid must end `complete`. One that ends cancelled with
/// its charge refunded is also listed in `paid_then_refunded`, for the report.
pub fn outcome_problems(
    stack: &Stack,
    snapshot: &Snapshot,
    outcome: &Outcome,
    paid_then_refunded: &mut Vec<String>,
) -> Vec<Problem> {
    let charges = charges_by_order(stack);
    let mut problems = Vec::new();
    let problem = |text: String| Problem::new(Kind::Outcomes, text);
    let status = |id: &str| {
        snapshot
            .orders
            .get(id)
            .map_or("missing", |o| o.status.as_str())
            .to_owned()
    };
    let refunded_once = |id: &str| {
        let (all, kept) = charges.get(id).copied().unwrap_or_default();
        all == 1 && kept == 0 && snapshot.orders.get(id).is_some_and(|o| o.refunded)
    };
    for id in &outcome.paid_orders {
        match status(id).as_str() {
            "complete" => {}
            "cancelled" if refunded_once(id) => {
                paid_then_refunded.push(id.clone());
                problems.push(problem(format!(
                    "paid order {id} (answered 201 or 'already paid') ended cancelled, its charge \
                     refunded"
                )));
            }
            other => problems.push(problem(format!("paid order {id} is {other} in orders"))),
        }
    }
    for id in &outcome.confirming_orders {
        match status(id).as_str() {
            "complete" => {}
            "cancelled" if refunded_once(id) => {}
            other => problems.push(problem(format!(
                "order {id} (payment answered 202) is {other}, refunded once: {}",
                refunded_once(id)
            ))),
        }
    }
    for id in &outcome.refunded_orders {
        if status(id) != "cancelled" || !refunded_once(id) {
            problems.push(problem(format!(
                "order {id} (payment answered 'refunded') is {}, refunded once: {}",
                status(id),
                refunded_once(id)
            )));
        }
    }
    for id in outcome.unpaid_orders().chain(&outcome.too_late_orders) {
        if status(id) != "cancelled" {
            problems.push(problem(format!(
                "order {id} should be cancelled but is {}",
                status(id)
            )));
        }
    }
    for (id, status) in &snapshot.payments {
        if matches!(status.as_str(), "pending" | "unknown" | "refunding") {
            problems.push(Problem::new(
                Kind::Money,
                format!("the payment of order {id} is still {status}"),
            ));
        }
    }
    for (id, order) in &snapshot.orders {
        let payment = snapshot.payments.get(id).map(String::as_str);
        if order.status == "complete" && payment != Some("succeeded") {
            problems.push(problem(format!(
                "complete order {id} has payment {payment:?}"
            )));
        }
        let (all, kept) = charges.get(id).copied().unwrap_or_default();
        if all > 1 {
            problems.push(problem(format!("order {id} was charged {all} times")));
        }
        if order.refunded != (all > 0 && kept == 0) {
            problems.push(problem(format!(
                "order {id} says refunded: {}, its charges (made, kept): ({all}, {kept})",
                order.refunded
            )));
        }
    }
    problems
}

/// logs), and on which consumer.
pub fn highest_attempt(stack: &Stack) -> (i64, String) {
    let mut best = (0, String::new());
    for (service, _) in CONSUMERS {
        let Ok(log) = stack.log_of(service) else {
            continue;
        };
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let span = &entry["span"];
            if let Some(attempt) = span["attempt"].as_i64()
                && attempt > best.0
            {
                best = (attempt, span["consumer"].as_str().unwrap_or("?").to_owned());
            }
        }
    }
    best
}

/// How many orders the orders service's sweeper cancelled in this run, by id (from its log).
pub fn swept_orders(stack: &Stack) -> HashSet<String> {
    let Ok(log) = stack.log_of("orders") else {
        return HashSet::new();
    };
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the sweeper cancelled"))
        })
        .filter_map(|entry| entry["fields"]["order_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits `limit` at most for `check` to pass; returns its last problems.
pub async fn poll<F, Fut>(limit: Duration, mut check: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let start = std::time::Instant::now();
    loop {
        let problems = check().await;
        if problems.is_empty() || start.elapsed() > limit {
            return problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
