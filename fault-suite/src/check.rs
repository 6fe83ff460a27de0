//! The truth every service must converge to after the flow, and the money invariant
//! (`common::testing::invariants::check_money`) over the Stripe double's ledger and the run's orders
//! and payments databases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::testing::invariants::{MoneyReport, check_money};
use common::testing::stripe_double::ChargeRecord;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;

use crate::flow::{Outcome, PayAnswer, Write};
use crate::invariants::{self, Snapshot};
use crate::stack::{RECONCILE_HORIZON, Stack};

/// The payment states that still wait for Stripe (payments' `PaymentStatus::UNSETTLED`).
const UNSETTLED: [&str; 3] = ["pending", "unknown", "refunding"];
/// The states an attempt's charge is settled in (the refund of a `refunding` one may follow).
const CHARGE_SETTLED: [&str; 4] = ["succeeded", "failed", "refunding", "refunded"];
/// The states an attempt is settled for good in.
const SETTLED: [&str; 3] = ["succeeded", "failed", "refunded"];

async fn get_json(
    stack: &Stack,
    service: &str,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<Value> {
    let mut request = stack.http.get(stack.url(service, path)?);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    Ok(request.send().await?.error_for_status()?.json().await?)
}

/// What one look at the system found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Every disagreement with the expected outcome and every violation of the money invariant.
    pub problems: Vec<String>,
    pub money: MoneyReport,
}

/// The charges of one order at the Stripe double, and how often each was refunded.
struct Ledger {
    charges: Vec<ChargeRecord>,
    refunds_of: HashMap<String, usize>,
}

impl Ledger {
    fn read(stack: &Stack) -> Self {
        let mut refunds_of: HashMap<String, usize> = HashMap::new();
        for refund in stack.stripe_double.refunds() {
            *refunds_of.entry(refund.charge_id).or_default() += 1;
        }
        Self {
            charges: stack.stripe_double.charges(),
            refunds_of,
        }
    }

    fn of<'a>(&'a self, order: &'a str) -> impl Iterator<Item = &'a ChargeRecord> + 'a {
        self.charges
            .iter()
            .filter(move |c| c.order_id.as_deref() == Some(order))
    }

    /// The order's charge was refunded (exactly once, and nothing of it kept).
    fn refunded_once(&self, order: &str) -> bool {
        let charges: Vec<&ChargeRecord> = self.of(order).collect();
        !charges.is_empty()
            && charges
                .iter()
                .all(|c| c.refund_id.is_some() && self.refunds_of.get(&c.id) == Some(&1))
    }
}

/// Every disagreement between the services and the expected outcome, in words, and the money
/// invariant's report.
pub async fn inconsistencies(stack: &Stack, outcome: &Outcome) -> anyhow::Result<Findings> {
    let mut problems = Vec::new();
    // Orders as the orders service sees them (with its replica's view of each ticket).
    let mut orders: BTreeMap<String, Value> = BTreeMap::new();
    for buyer in &outcome.buyers {
        let list = get_json(stack, "orders", "/api/orders", Some(buyer)).await?;
        for order in list.as_array().into_iter().flatten() {
            if let Some(id) = order["id"].as_str() {
                orders.insert(id.to_owned(), order.clone());
            }
        }
    }
    let status_of = |id: &str| {
        orders
            .get(id)
            .and_then(|o| o["status"].as_str())
            .unwrap_or("missing")
            .to_owned()
    };
    let refunded_flag = |id: &str| orders.get(id).is_some_and(|o| o["refunded"] == true);
    let ledger = Ledger::read(stack);
    let payments_db = stack.database("payments")?;
    let payments = payments_db.collection::<Document>("payments");

    // Paid orders are complete, with one succeeded payment.
    let mut complete_expected: Vec<&String> = outcome.paid_orders.iter().collect();
    for id in &outcome.confirming_orders {
        // Answered 202: complete if the reconciler confirmed the charge within the window,
        // otherwise cancelled by the expiry with the charge refunded.
        match status_of(id).as_str() {
            "complete" => complete_expected.push(id),
            "cancelled" if ledger.refunded_once(id) && refunded_flag(id) => {}
            status => problems.push(format!(
                "order {id} (payment answered 202) is {status}, refunded: {}, charges {:?}",
                refunded_flag(id),
                ledger.of(id).collect::<Vec<_>>()
            )),
        }
    }
    for id in complete_expected {
        if status_of(id) != "complete" {
            problems.push(format!("paid order {id} is {} in orders", status_of(id)));
        }
        let oid = mongodb::bson::oid::ObjectId::parse_str(id)?;
        let succeeded = payments
            .count_documents(doc! { "_id": oid, "status": "succeeded" })
            .await?;
        if succeeded != 1 {
            problems.push(format!(
                "paid order {id} has {succeeded} succeeded payment records"
            ));
        }
    }
    for id in outcome
        .unpaid_orders()
        .chain(&outcome.too_late_orders)
        .chain(&outcome.refunded_orders)
    {
        if status_of(id) != "cancelled" {
            problems.push(format!(
                "order {id} should be cancelled but is {} in orders",
                status_of(id)
            ));
        }
    }
    for id in &outcome.refunded_orders {
        if !ledger.refunded_once(id) || !refunded_flag(id) {
            problems.push(format!(
                "order {id} (payment answered 'refunded'): refunded: {} in orders, charges {:?}",
                refunded_flag(id),
                ledger.of(id).collect::<Vec<_>>()
            ));
        }
    }

    // Every order: one charge at most, each refunded at most once; a refunded charge belongs to a
    // cancelled order that says so, and only such an order says so; a cancelled order is
    // cancelled in the payments replica too.
    let replica = payments_db.collection::<Document>("orders");
    for (id, order) in &orders {
        let charges: Vec<&ChargeRecord> = ledger.of(id).collect();
        if charges.len() > 1 {
            let ids: Vec<&str> = charges.iter().map(|c| c.id.as_str()).collect();
            problems.push(format!(
                "order {id} was charged {} times: {ids:?}",
                charges.len()
            ));
        }
        for charge in &charges {
            let refunds = ledger.refunds_of.get(&charge.id).copied().unwrap_or(0);
            if refunds > 1 {
                problems.push(format!(
                    "charge {} of order {id} was refunded {refunds} times",
                    charge.id
                ));
            }
        }
        let any_refunded = charges.iter().any(|c| c.refund_id.is_some());
        let status = order["status"].as_str().unwrap_or("missing");
        if any_refunded && (status != "cancelled" || !refunded_flag(id)) {
            problems.push(format!(
                "order {id}'s charge was refunded but the order is {status}, refunded: {}",
                refunded_flag(id)
            ));
        }
        if !any_refunded && refunded_flag(id) {
            problems.push(format!(
                "order {id} says refunded but no charge of it was refunded"
            ));
        }
        if status == "cancelled" {
            let oid = mongodb::bson::oid::ObjectId::parse_str(id)?;
            let copy = replica.find_one(doc! { "_id": oid }).await?;
            let copy_status = copy
                .as_ref()
                .and_then(|d| d.get_str("status").ok())
                .unwrap_or("missing");
            if copy_status != "cancelled" {
                problems.push(format!(
                    "order {id} is {copy_status} in the payments replica"
                ));
            }
        }
    }
    for id in outcome.unpaid_orders() {
        if !orders.contains_key(id) {
            problems.push(format!("order {id} is missing from its buyer's orders"));
        }
    }

    // Orders paid in the last instant of their window: cancelled by the expiry (unless the charge
    // came back in time and the buyer was told so), the charge refunded once, the order saying so,
    // the ticket free again.
    if !outcome.race_orders.is_empty() {
        let listed: HashSet<String> = get_json(stack, "tickets", "/api/tickets", None)
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect();
        let mut raced = 0;
        for race in &outcome.race_orders {
            let id = &race.order;
            let path = format!("/api/orders/{id}");
            let shown = get_json(stack, "orders", &path, Some(&race.buyer)).await?;
            let status = shown["status"].as_str().unwrap_or("missing");
            let refunded = shown["refunded"] == true;
            let charged = ledger.of(id).next().is_some();
            if race.answer == PayAnswer::Paid && status == "complete" {
                // The charge was confirmed before the window ended: sold, nothing to refund.
                continue;
            }
            if status != "cancelled" {
                problems.push(format!(
                    "raced order {id} (answered {:?}) is {status} after its window",
                    race.answer
                ));
                continue;
            }
            if !charged && matches!(race.answer, PayAnswer::Confirming | PayAnswer::Refunded) {
                problems.push(format!(
                    "raced order {id} was answered {:?} but Stripe has no charge of it",
                    race.answer
                ));
            }
            if charged {
                if ledger.refunded_once(id) && refunded {
                    raced += 1;
                } else {
                    problems.push(format!(
                        "raced order {id} (answered {:?}): GET /api/orders/{id} says refunded: \
                         {refunded}, charges {:?}",
                        race.answer,
                        ledger.of(id).collect::<Vec<_>>()
                    ));
                }
            }
            let ticket = get_json(
                stack,
                "tickets",
                &format!("/api/tickets/{}", race.ticket),
                None,
            )
            .await?;
            if !ticket["orderId"].is_null() || !listed.contains(&race.ticket) {
                problems.push(format!(
                    "the ticket {} of the expired order {id} is not free again: orderId {}, \
                     listed by GET /api/tickets: {}",
                    race.ticket,
                    ticket["orderId"],
                    listed.contains(&race.ticket)
                ));
            }
        }
        if raced == 0 {
            problems.push(
                "no raced order was charged and refunded: the race was not exercised".to_owned(),
            );
        }
    }

    // Each ticket: reserved by exactly its live order, at the same version in tickets and orders.
    for ticket in &outcome.tickets {
        let in_tickets =
            get_json(stack, "tickets", &format!("/api/tickets/{ticket}"), None).await?;
        let live: Vec<&Value> = orders
            .values()
            .filter(|o| {
                o["ticket"]["id"] == *ticket
                    && matches!(o["status"].as_str(), Some("created" | "complete"))
            })
            .collect();
        if live.len() > 1 {
            problems.push(format!("ticket {ticket} has {} live orders", live.len()));
        }
        let expected_holder = live.first().map(|o| o["id"].clone()).unwrap_or(Value::Null);
        let holder = in_tickets.get("orderId").cloned().unwrap_or(Value::Null);
        if holder != expected_holder {
            problems.push(format!(
                "ticket {ticket}: tickets says reserved by {holder}, orders says {expected_holder}"
            ));
        }
        let replica_versions: Vec<i64> = orders
            .values()
            .filter(|o| o["ticket"]["id"] == *ticket)
            .filter_map(|o| o["ticket"]["version"].as_i64())
            .collect();
        let version = in_tickets["version"].as_i64().unwrap_or(-1);
        if replica_versions.iter().any(|v| *v != version) {
            problems.push(format!(
                "ticket {ticket}: version {version} in tickets, {replica_versions:?} in orders"
            ));
        }
    }

    // Nothing still waits for Stripe: the reconciler has settled every attempt and refund.
    let open: Vec<Document> = payments
        .find(doc! { "status": { "$in": UNSETTLED.to_vec() } })
        .await?
        .try_collect()
        .await?;
    for payment in &open {
        problems.push(format!(
            "the payment of order {} is still {}",
            payment
                .get("_id")
                .map(ToString::to_string)
                .unwrap_or_default(),
            payment.get_str("status").unwrap_or("?")
        ));
    }

    // The money invariant.
    let money = check_money(
        &ledger.charges,
        &stack.database("orders")?,
        &payments_db,
        RECONCILE_HORIZON,
    )
    .await?;
    problems.extend(money.violations.iter().map(|v| format!("money: {v}")));
    Ok(Findings { problems, money })
}

/// Where the run ended up.
#[derive(Debug)]
pub struct Convergence {
    /// What is still wrong (empty when everything agrees).
    pub problems: Vec<String>,
    /// The money invariant's last report (none if the state could not be read).
    pub money: Option<MoneyReport>,
    pub elapsed: Duration,
}

/// Polls until the services agree with the outcome, nothing waits for Stripe any more, the money
/// invariant and the run's invariants (`crate::invariants`) hold, or `limit` passes.
pub async fn converge(
    stack: &Stack,
    outcome: &Outcome,
    writes: &[Write],
    limit: Duration,
) -> Convergence {
    let start = Instant::now();
    loop {
        let (mut problems, money) = match inconsistencies(stack, outcome).await {
            Ok(findings) => (findings.problems, Some(findings.money)),
            Err(err) => (vec![format!("could not read the state: {err:#}")], None),
        };
        // What must hold whatever the run did (the databases, the bus, every acknowledged write).
        match Snapshot::read(stack).await {
            Ok(snapshot) => problems.extend(
                invariants::check(stack, &snapshot, writes)
                    .await
                    .into_iter()
                    .map(|p| p.text),
            ),
            Err(err) => problems.push(format!("could not read the databases: {err:#}")),
        }
        if problems.is_empty() || start.elapsed() > limit {
            return Convergence {
                problems,
                money,
                elapsed: start.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The payment attempts that were not settled by their own request (an answer that was late or
/// unreadable, a process killed mid-charge) but later, by the reconciler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reconciliation {
    pub attempts: usize,
    /// The longest any of them stayed open (from recorded `pending` to settled for good).
    pub longest_open: Duration,
    /// When the last of them was settled (ms since the epoch).
    pub last_settled_at: Option<i64>,
}

/// Reads every payment attempt's history from the payments service's change documents
/// (`payments_changes`: one per version, with the state it committed and when).
pub async fn reconciliation(stack: &Stack) -> anyhow::Result<Reconciliation> {
    let changes: Vec<Document> = stack
        .database("payments")?
        .collection::<Document>("payments_changes")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(reconciled_attempts(&changes))
}

/// The attempts among `changes` (change documents of payments) that the reconciler settled.
fn reconciled_attempts(changes: &[Document]) -> Reconciliation {
    // What happened to each attempt, by its id.
    #[derive(Default)]
    struct History {
        opened: Option<i64>,
        charge_settled: Option<i64>,
        settled: Option<i64>,
        unknown: bool,
    }
    let mut attempts: HashMap<String, History> = HashMap::new();
    for change in changes {
        let (Ok(state), Some(Bson::DateTime(at))) =
            (change.get_document("state"), change.get("at"))
        else {
            continue;
        };
        let (Ok(attempt), Ok(status)) = (state.get_str("paymentId"), state.get_str("status"))
        else {
            continue;
        };
        let at = at.timestamp_millis();
        let history = attempts.entry(attempt.to_owned()).or_default();
        let earliest = |slot: &mut Option<i64>| *slot = Some(slot.map_or(at, |t| t.min(at)));
        if status == "pending" {
            earliest(&mut history.opened);
        }
        if status == "unknown" {
            history.unknown = true;
        }
        if CHARGE_SETTLED.contains(&status) {
            earliest(&mut history.charge_settled);
        }
        if SETTLED.contains(&status) {
            earliest(&mut history.settled);
        }
    }
    // A request settles its attempt within the Stripe timeout; the reconciler takes an attempt up
    // only once its last change is older than the horizon.
    let by_reconciler = i64::try_from(RECONCILE_HORIZON.as_millis()).unwrap_or(i64::MAX) - 250;
    let mut found = Reconciliation::default();
    for history in attempts.values() {
        let (Some(opened), Some(charge_settled), Some(settled)) =
            (history.opened, history.charge_settled, history.settled)
        else {
            continue;
        };
        if !history.unknown && charge_settled - opened < by_reconciler {
            continue;
        }
        found.attempts += 1;
        found.longest_open = found.longest_open.max(Duration::from_millis(
            u64::try_from(settled - opened).unwrap_or(0),
        ));
        found.last_settled_at = Some(found.last_settled_at.map_or(settled, |t| t.max(settled)));
    }
    found
}

#[cfg(test)]
mod tests {
    use mongodb::bson::DateTime;

    use super::*;

    fn change(attempt: &str, status: &str, at_ms: i64) -> Document {
        doc! {
            "state": { "paymentId": attempt, "status": status },
            "at": DateTime::from_millis(1_000_000 + at_ms),
        }
    }

    #[test]
    fn only_attempts_settled_by_the_reconciler_count() {
        let changes = [
            // Settled by its request within the Stripe timeout.
            change("a", "pending", 0),
            change("a", "succeeded", 900),
            // Late answer: unknown, then settled by the reconciler, then (order cancelled) refunded.
            change("b", "pending", 0),
            change("b", "unknown", 1_500),
            change("b", "refunding", 9_000),
            change("b", "refunded", 9_800),
            // Left pending by a killed process, settled by the restarted one's reconciler.
            change("c", "pending", 100),
            change("c", "pending", 200),
            change("c", "succeeded", 7_100),
            // Cancelled while charged, refunded by the request itself.
            change("d", "pending", 0),
            change("d", "refunding", 1_300),
            change("d", "refunded", 2_700),
            // Still open: not settled, not counted here (convergence reports it).
            change("e", "pending", 0),
            change("e", "unknown", 1_500),
        ];
        let found = reconciled_attempts(&changes);
        assert_eq!(found.attempts, 2);
        assert_eq!(found.longest_open, Duration::from_millis(9_800));
        assert_eq!(found.last_settled_at, Some(1_009_800));
    }
}
