//! The faults themselves, shared by the table of scenarios (`main.rs`) and the chaos run
//! (`chaos.rs`): kills, outages and pauses of the infrastructure, a wiped Redis, poison on the bus.

use std::time::Duration;

use anyhow::{Context as _, bail};
use common::events::{OrderCreated, Subject};
use mongodb::bson::DateTime;
use serde_json::json;

use crate::degradation;
use crate::stack::{Poison, Stack};

/// SIGKILLs a service and starts it again after `down`.
pub async fn kill_and_restart(stack: &Stack, service: &str, down: Duration) -> anyhow::Result<()> {
    let process = stack.service(service)?;
    process.kill().await?;
    tokio::time::sleep(down).await;
    process.start(&stack.http).await
}

/// How long a replica out of rotation keeps serving before SIGTERM: what a pod's `preStop` sleep
/// gives the ingress to stop sending it requests.
const DRAIN: Duration = Duration::from_millis(500);
/// How long a replica may take to stop after SIGTERM (a pod's termination grace is 30 s).
const GRACE: Duration = Duration::from_secs(15);
/// How long a stopped replica stays down before it starts again (a new pod being scheduled and
/// pulled); with one replica, clients see the service gone for that long.
const RESCHEDULE: Duration = Duration::from_secs(1);

/// A rolling restart, as a Kubernetes rollout does it: each replica of each service in turn is
/// taken out of rotation, stopped with SIGTERM (graceful shutdown), started again a second later
/// and put back in rotation once ready. Returns the problems seen (a replica that did not stop cleanly in time).
pub async fn rolling_restart(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for name in crate::stack::SERVICES {
        for replica in &stack.service(name)?.replicas {
            replica.take_out_of_rotation();
            tokio::time::sleep(DRAIN).await;
            match replica.terminate(GRACE).await {
                Ok(took) => eprintln!(
                    "    {} stopped by SIGTERM in {:.1} s",
                    replica.name,
                    took.as_secs_f64()
                ),
                Err(err) => problems.push(format!("{err:#}")),
            }
            tokio::time::sleep(RESCHEDULE).await;
            replica.start(&stack.http).await?;
            replica.put_in_rotation();
        }
    }
    Ok(problems)
}

/// An outage of `component` (`nats` or `ferretdb`, SIGKILLed); with `observe`, also checks that the
/// services that need it say so (`/readyz` 503, a read answering 503; a few seconds) and that every
/// service is ready again by itself once it is back. It lasts `length` from the moment the services
/// were seen to notice it (from the kill when not observed). Returns the problems seen.
pub async fn outage(
    stack: &Stack,
    component: &str,
    length: Duration,
    observe: bool,
) -> anyhow::Result<Vec<String>> {
    let (affected, database): (&[&str], bool) = match component {
        "nats" => (&["tickets", "orders", "payments", "expiration"], false),
        "ferretdb" => (&["auth", "tickets", "orders", "payments"], true),
        other => bail!("no outage of {other}"),
    };
    stack.infra("kill", component).await?;
    let mut problems = Vec::new();
    if observe {
        problems.extend(degradation::while_down(stack, affected, database).await);
    }
    tokio::time::sleep(length).await;
    stack.infra("up", component).await?;
    if observe {
        problems.extend(degradation::recovered(stack).await);
    }
    Ok(problems)
}

/// Freezes FerretDB (SIGSTOP) for `length`, then lets it go on (SIGCONT): every request and event
/// handler waiting on it stalls, longer than the consumers' ack wait. Returns the problems seen: a
/// read that did not answer 503 within the database operation timeout (long pauses only).
pub async fn pause_ferretdb(stack: &Stack, length: Duration) -> anyhow::Result<Vec<String>> {
    let pid = stack.infra_pid("ferretdb").await?;
    crate::stack::signal(pid, "STOP").await?;
    // kill(1) returns once the signal is sent; each of FerretDB's threads stops on its own. A probe
    // sent before the last one did was answered (a 404 from the database, seen once in CI).
    crate::stack::wait_until_stopped(pid, Duration::from_secs(2)).await;
    let resume_at = tokio::time::Instant::now() + length;
    // Long enough a pause to see a request time out inside it: check that it does, in time.
    let mut problems = Vec::new();
    if length > common::store::operation_timeout() + Duration::from_secs(2) {
        problems = degradation::while_frozen(stack).await;
    }
    tokio::time::sleep_until(resume_at).await;
    // Resumed whatever happens: a few tries, in case `kill` itself fails once.
    let mut last = None;
    for _ in 0..5 {
        match crate::stack::signal(pid, "CONT").await {
            Ok(()) => return Ok(problems),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("SIGCONT to FerretDB failed")))
}

/// SIGKILLs Redis and starts it again (its AOF is kept: jobs written in the last second may be
/// lost, as on a crash).
pub async fn redis_restart(stack: &Stack) -> anyhow::Result<()> {
    stack.infra("kill", "redis").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.infra("up", "redis").await
}

/// How many expiry jobs the run's expiration queue holds (due or claimed).
pub async fn expiry_jobs(stack: &Stack) -> anyhow::Result<usize> {
    let mut total = 0;
    for set in ["due", "inflight"] {
        let key = format!("{}:{set}", stack.expiration_queue);
        let count = stack.redis_cli(&["ZCARD", &key]).await?;
        total += count
            .parse::<usize>()
            .with_context(|| format!("ZCARD {key} answered {count:?}"))?;
    }
    Ok(total)
}

/// Empties the suite's private Redis (`FLUSHALL`): every expiry job is lost, as with a wiped volume.
pub async fn redis_flush(stack: &Stack) -> anyhow::Result<()> {
    let answer = stack.redis_cli(&["FLUSHALL"]).await?;
    if answer != "OK" {
        bail!("FLUSHALL answered {answer:?}");
    }
    Ok(())
}

/// Publishes two poison messages on `order:created` with the run's subject prefix: a payload that is
/// no event at all, and one shaped like the event whose ids are not ObjectIds (so it cannot be read
/// either: ids are typed at the bus edge). Both must end in the dead-letter
/// stream, from every consumer that sees them: tickets, payments and expiration each dead-letter
/// both. Returns the marker both carry.
pub async fn poison(stack: &Stack) -> anyhow::Result<String> {
    let marker = format!("poison-{}", common::testing::unique_suffix());
    let malformed = json!({ "not": "an event", "poison": marker });
    let now = DateTime::now()
        .try_to_rfc3339_string()
        .context("formatting the time")?;
    let bad_ids = json!({
        "id": format!("{marker}-order"),
        "version": 0,
        "status": "created",
        "userId": format!("{marker}-user"),
        "expiresAt": now,
        "ticket": { "id": format!("{marker}-ticket"), "price": 10 },
    });
    // Ids are typed at the bus edge: an event whose ids are not ids must not even be read.
    if serde_json::from_value::<OrderCreated>(bad_ids.clone()).is_ok() {
        bail!("an order:created whose ids are not ObjectIds was read as an event");
    }
    stack.expect_poison(Poison {
        marker: marker.clone(),
        consumers: vec![
            "tickets-service_order-created",
            "payments-service_order-created",
            "expiration-service_order-created",
            "tickets-service_order-created",
            "payments-service_order-created",
            "expiration-service_order-created",
        ],
    });
    let bus = stack.bus().await?;
    for (kind, payload) in [("malformed", malformed), ("bad-ids", bad_ids)] {
        bus.publish_raw(
            Subject::OrderCreated,
            &format!("{marker}:{kind}"),
            serde_json::to_vec(&payload)?.into(),
        )
        .await
        .with_context(|| format!("publishing the {kind} poison"))?;
    }
    Ok(marker)
}
