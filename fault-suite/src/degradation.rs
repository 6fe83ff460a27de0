//! While a dependency is down, services must answer quickly in the error shape (503) and report
//! not ready; once it is back they must become ready again by themselves.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stack::{SERVICES, Stack};

/// How long a service may take to notice an outage, and to answer a request during one.
const NOTICE_WITHIN: Duration = Duration::from_secs(6);
/// How long services may take to become ready again after the dependency is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(20);

/// `GET /readyz` of a service: its status and body (none if it did not answer).
pub async fn readiness(stack: &Stack, service: &str) -> Option<(u16, Value)> {
    let url = stack.url(service, "/readyz").ok()?;
    let response = stack.http.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

fn is_error_shape(body: &Value) -> bool {
    body["errors"]
        .as_array()
        .is_some_and(|errors| !errors.is_empty() && errors.iter().all(|e| e["message"].is_string()))
}

/// Checks the services that depend on what is down: `/readyz` turns 503 with the error shape, and
/// (when the database is down) API reads answer in time (see [`database_reads`]).
pub async fn while_down(stack: &Stack, affected: &[&str], database: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for service in affected {
        let deadline = Instant::now() + NOTICE_WITHIN;
        loop {
            match readiness(stack, service).await {
                Some((503, body)) if is_error_shape(&body) => break,
                other if Instant::now() > deadline => {
                    problems.push(format!(
                        "{service} still answers /readyz with {other:?} during the outage"
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    if database {
        problems.extend(database_reads(stack, NOTICE_WITHIN).await);
    }
    problems
}

/// While FerretDB is frozen (its connections open, nothing answered), API reads must still
/// answer within the services' database operation timeout, not hang.
pub async fn while_frozen(stack: &Stack) -> Vec<String> {
    database_reads(
        stack,
        common::store::operation_timeout() + Duration::from_secs(2),
    )
    .await
}

/// With the database unusable, within `within`: a read that needs it (a ticket the tickets
/// service's read model does not know) answers 503 `Error connecting to database`, and the
/// listing answers either from the read model (200) or with that 503.
async fn database_reads(stack: &Stack, within: Duration) -> Vec<String> {
    let unknown = format!(
        "/api/tickets/{}",
        mongodb::bson::oid::ObjectId::new().to_hex()
    );
    let mut problems = Vec::new();
    for (path, from_memory_allowed) in [(unknown.as_str(), false), ("/api/tickets", true)] {
        let url = match stack.url("tickets", path) {
            Ok(url) => url,
            Err(err) => return vec![format!("{err:#}")],
        };
        let started = Instant::now();
        match stack.http.get(url).timeout(within).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let expected = serde_json::json!({ "errors": [{ "message": "Error connecting to database" }] });
                let fine = (status == 503 && body == expected)
                    || (from_memory_allowed && status == 200 && body.is_array());
                if !fine {
                    problems.push(format!(
                        "GET {path} with the database unusable: {status} {body}"
                    ));
                }
            }
            Err(err) => problems.push(format!(
                "GET {path} with the database unusable got no answer within {within:?}: {err} \
                 (after {:?})",
                started.elapsed()
            )),
        }
    }
    problems
}

/// Every service becomes ready again on its own.
pub async fn recovered(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let deadline = Instant::now() + RECOVER_WITHIN;
    for service in SERVICES {
        loop {
            match readiness(stack, service).await {
                Some((200, _)) => break,
                other if Instant::now() > deadline => {
                    problems.push(format!(
                        "{service} not ready {RECOVER_WITHIN:?} after the outage: {other:?}"
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    problems
}
