//! The money invariant, checked at the end of a test, a fault-suite run or a benchmark against what
//! the Stripe double saw and what the orders and payments databases say:
//!
//! * every charge is either refunded, or the one succeeded payment of a `complete` order;
//! * every `complete` order has exactly one charge that was not refunded;
//! * no order has two charges that were not refunded;
//! * no payment is still waiting for Stripe (`pending`, `unknown`, `refunding`) past the
//!   reconciler's horizon.
//!
//! Where no ledger exists (the benchmark's stripe-mock keeps none), [`check_orders_money`] checks
//! the part the databases alone can show, for the orders a run made.

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};

use super::stripe_double::ChargeRecord;

/// What the check looked at, and what it found wrong (empty when the invariant holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyReport {
    pub charges: usize,
    pub refunded: usize,
    pub complete_orders: usize,
    pub violations: Vec<String>,
}

/// Checks the money invariant over `charges` (the double's ledger) and the two services'
/// databases. `horizon`: how long a payment may wait for Stripe before it counts as stuck.
pub async fn check_money(
    charges: &[ChargeRecord],
    orders_db: &Database,
    payments_db: &Database,
    horizon: Duration,
) -> mongodb::error::Result<MoneyReport> {
    let orders: HashMap<String, String> = all(orders_db, "orders")
        .await?
        .iter()
        .filter_map(|o| Some((id_text(o.get("_id")?), o.get_str("status").ok()?.to_owned())))
        .collect();
    let payments: HashMap<String, Document> = all(payments_db, "payments")
        .await?
        .into_iter()
        .filter_map(|p| Some((id_text(p.get("_id")?), p)))
        .collect();
    Ok(check(charges, &orders, &payments, horizon))
}

/// The money invariant without a Stripe ledger, for `order_ids`: a `complete` order has a
/// `succeeded` payment naming its charge; a `cancelled` order has no payment that kept its charge;
/// no payment waits for Stripe past `horizon`. Each order and payment is read by `_id`.
pub async fn check_orders_money(
    order_ids: &[String],
    orders_db: &Database,
    payments_db: &Database,
    horizon: Duration,
) -> mongodb::error::Result<MoneyReport> {
    let orders = orders_db.collection::<Document>("orders");
    let payments = payments_db.collection::<Document>("payments");
    let mut report = MoneyReport::default();
    for id in order_ids {
        let key = match mongodb::bson::oid::ObjectId::parse_str(id) {
            Ok(oid) => Bson::ObjectId(oid),
            Err(_) => Bson::String(id.clone()),
        };
        let order_status = orders
            .find_one(doc! { "_id": key.clone() })
            .await?
            .and_then(|o| o.get_str("status").ok().map(str::to_owned))
            .unwrap_or_else(|| "missing".to_owned());
        let payment = payments.find_one(doc! { "_id": key }).await?;
        let payment_status = payment
            .as_ref()
            .and_then(|p| p.get_str("status").ok())
            .unwrap_or("none");
        if payment
            .as_ref()
            .is_some_and(|p| p.get_str("stripeId").is_ok())
        {
            report.charges += 1;
        }
        if payment_status == "refunded" {
            report.refunded += 1;
        }
        match (order_status.as_str(), payment_status) {
            ("complete", "succeeded") => report.complete_orders += 1,
            ("complete", other) => report
                .violations
                .push(format!("order {id} is complete but its payment is {other}")),
            ("cancelled", "succeeded") => report
                .violations
                .push(format!("order {id} is cancelled and kept its charge")),
            _ => {}
        }
        if let Some(payment) = &payment
            && let Some(stuck) = stuck(id, payment, horizon)
        {
            report.violations.push(stuck);
        }
    }
    Ok(report)
}

/// A payment still waiting for Stripe after `horizon`, described.
fn stuck(order_id: &str, payment: &Document, horizon: Duration) -> Option<String> {
    let status = payment.get_str("status").unwrap_or("none");
    if !matches!(status, "pending" | "unknown" | "refunding") {
        return None;
    }
    let age_ms = payment
        .get_datetime("updatedAt")
        .map(|at| chrono::Utc::now().timestamp_millis() - at.timestamp_millis())
        .unwrap_or(i64::MAX);
    let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
    (age_ms > horizon_ms)
        .then(|| format!("payment of order {order_id} is still {status} after {age_ms} ms"))
}

fn check(
    charges: &[ChargeRecord],
    orders: &HashMap<String, String>,
    payments: &HashMap<String, Document>,
    horizon: Duration,
) -> MoneyReport {
    let mut report = MoneyReport {
        charges: charges.len(),
        refunded: charges.iter().filter(|c| c.refund_id.is_some()).count(),
        ..MoneyReport::default()
    };
    let violations = &mut report.violations;
    let mut kept_by_order: HashMap<&str, Vec<&ChargeRecord>> = HashMap::new();
    for charge in charges {
        let Some(order_id) = charge.order_id.as_deref() else {
            violations.push(format!(
                "charge {} names no order in its metadata",
                charge.id
            ));
            continue;
        };
        let payment = payments.get(order_id);
        let recorded = payment.and_then(|p| p.get_str("stripeId").ok());
        let payment_status = payment
            .and_then(|p| p.get_str("status").ok())
            .unwrap_or("none");
        if charge.refund_id.is_some() {
            if recorded == Some(charge.id.as_str()) && payment_status != "refunded" {
                violations.push(format!(
                    "charge {} of order {order_id} was refunded but its payment says {payment_status}",
                    charge.id
                ));
            }
            continue;
        }
        kept_by_order.entry(order_id).or_default().push(charge);
        let order_status = orders.get(order_id).map_or("missing", String::as_str);
        if recorded != Some(charge.id.as_str()) || payment_status != "succeeded" {
            violations.push(format!(
                "charge {} of order {order_id} is not refunded and is not its succeeded payment \
                 (payment {payment_status}, charge {recorded:?})",
                charge.id
            ));
        } else if order_status != "complete" {
            violations.push(format!(
                "charge {} kept for order {order_id}, which is {order_status}",
                charge.id
            ));
        }
    }
    for (order_id, kept) in &kept_by_order {
        if kept.len() > 1 {
            let ids: Vec<&str> = kept.iter().map(|c| c.id.as_str()).collect();
            violations.push(format!(
                "order {order_id} kept {} charges: {ids:?}",
                kept.len()
            ));
        }
    }
    for (order_id, status) in orders {
        if status == "complete" {
            report.complete_orders += 1;
            if !kept_by_order.contains_key(order_id.as_str()) {
                violations.push(format!("order {order_id} is complete with no charge kept"));
            }
        }
    }
    for (order_id, payment) in payments {
        if let Some(stuck) = stuck(order_id, payment, horizon) {
            violations.push(stuck);
        }
    }
    violations.sort();
    report
}

async fn all(db: &Database, collection: &str) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>(collection)
        .find(doc! {})
        .await?
        .try_collect()
        .await
}

fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(id) => id.to_hex(),
        Bson::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::DateTime;

    fn charge(id: &str, order: &str, refunded: bool) -> ChargeRecord {
        ChargeRecord {
            id: id.into(),
            idempotency_key: None,
            amount: 100,
            currency: "eur".into(),
            source: "tok_visa".into(),
            order_id: Some(order.into()),
            attempt_id: None,
            refund_id: refunded.then(|| format!("re_{id}")),
        }
    }

    fn payment(status: &str, stripe_id: Option<&str>, age: Duration) -> Document {
        let at = DateTime::from_millis(
            chrono::Utc::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(0),
        );
        let mut p = doc! { "status": status, "updatedAt": at };
        if let Some(id) = stripe_id {
            p.insert("stripeId", id);
        }
        p
    }

    fn run(
        charges: &[ChargeRecord],
        orders: &[(&str, &str)],
        payments: Vec<(&str, Document)>,
    ) -> Vec<String> {
        let orders = orders
            .iter()
            .map(|(id, s)| (id.to_string(), s.to_string()))
            .collect();
        let payments = payments
            .into_iter()
            .map(|(id, p)| (id.to_string(), p))
            .collect();
        check(charges, &orders, &payments, Duration::from_secs(10)).violations
    }

    #[test]
    fn a_paid_order_with_its_one_charge_and_a_refunded_cancelled_one_hold() {
        let violations = run(
            &[charge("ch_1", "o1", false), charge("ch_2", "o2", true)],
            &[("o1", "complete"), ("o2", "cancelled")],
            vec![
                ("o1", payment("succeeded", Some("ch_1"), Duration::ZERO)),
                ("o2", payment("refunded", Some("ch_2"), Duration::ZERO)),
            ],
        );
        assert_eq!(violations, Vec::<String>::new());
    }

    #[test]
    fn a_charge_kept_for_a_cancelled_order_is_a_violation() {
        let violations = run(
            &[charge("ch_1", "o1", false)],
            &[("o1", "cancelled")],
            vec![("o1", payment("succeeded", Some("ch_1"), Duration::ZERO))],
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("which is cancelled"));
    }

    #[test]
    fn a_charge_nobody_recorded_and_a_second_charge_are_violations() {
        let violations = run(
            &[charge("ch_1", "o1", false), charge("ch_2", "o1", false)],
            &[("o1", "complete")],
            vec![("o1", payment("succeeded", Some("ch_2"), Duration::ZERO))],
        );
        assert!(
            violations.iter().any(|v| v.contains("kept 2 charges")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("ch_1") && v.contains("not its succeeded"))
        );
    }

    #[test]
    fn a_complete_order_without_a_charge_and_a_stuck_attempt_are_violations() {
        let violations = run(
            &[],
            &[("o1", "complete"), ("o2", "created")],
            vec![("o2", payment("unknown", None, Duration::from_secs(60)))],
        );
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations.iter().any(|v| v.contains("no charge kept")));
        assert!(violations.iter().any(|v| v.contains("still unknown")));
    }

    #[test]
    fn a_young_open_attempt_is_not_stuck() {
        let violations = run(
            &[],
            &[("o1", "created")],
            vec![("o1", payment("pending", None, Duration::from_secs(1)))],
        );
        assert_eq!(violations, Vec::<String>::new());
    }
}
