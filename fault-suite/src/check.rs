//! The truth every service must converge to after the flow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::Value;

use crate::flow::Outcome;
use crate::stack::Stack;

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

/// Every disagreement between the services and the expected outcome, in words.
pub async fn inconsistencies(stack: &Stack, outcome: &Outcome) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    // Orders as the orders service sees them (with its replica's view of each ticket).
    let mut orders: HashMap<String, Value> = HashMap::new();
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
    for id in &outcome.paid_orders {
        if status_of(id) != "complete" {
            problems.push(format!("paid order {id} is {} in orders", status_of(id)));
        }
    }
    for id in outcome
        .expiring_orders
        .iter()
        .chain(&outcome.cancelled_orders)
    {
        if status_of(id) != "cancelled" {
            problems.push(format!(
                "order {id} should be cancelled but is {} in orders",
                status_of(id)
            ));
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
    // Payments: one succeeded payment per paid order, one charge each, replicas cancelled.
    let client = mongodb::Client::with_uri_str(&stack.mongo_url).await?;
    let payments_db = client.database(
        stack
            .databases
            .get("payments")
            .map(String::as_str)
            .unwrap_or_default(),
    );
    for id in &outcome.paid_orders {
        let oid = mongodb::bson::oid::ObjectId::parse_str(id)?;
        let payments = payments_db
            .collection::<Document>("payments")
            .count_documents(doc! { "_id": oid, "status": "succeeded" })
            .await?;
        if payments != 1 {
            problems.push(format!(
                "paid order {id} has {payments} succeeded payment records"
            ));
        }
    }
    let charges = stack.charges().await;
    if charges != outcome.paid_orders.len() {
        problems.push(format!(
            "{charges} charges reached Stripe for {} paid orders",
            outcome.paid_orders.len()
        ));
    }
    for id in outcome
        .expiring_orders
        .iter()
        .chain(&outcome.cancelled_orders)
    {
        let Ok(oid) = mongodb::bson::oid::ObjectId::parse_str(id) else {
            problems.push(format!("order id {id} is not an ObjectId"));
            continue;
        };
        let replica = payments_db
            .collection::<Document>("orders")
            .find_one(doc! { "_id": oid })
            .await?;
        let status = replica
            .as_ref()
            .and_then(|d| d.get_str("status").ok())
            .unwrap_or("missing");
        if status != "cancelled" {
            problems.push(format!("order {id} is {status} in the payments replica"));
        }
    }
    Ok(problems)
}

/// Polls until the services agree with the outcome, or `limit` passes. Returns what is still wrong
/// and how long it took.
pub async fn converge(
    stack: &Stack,
    outcome: &Outcome,
    limit: Duration,
) -> (Vec<String>, Duration) {
    let start = Instant::now();
    loop {
        let problems = match inconsistencies(stack, outcome).await {
            Ok(problems) => problems,
            Err(err) => vec![format!("could not read the state: {err:#}")],
        };
        if problems.is_empty() || start.elapsed() > limit {
            return (problems, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
