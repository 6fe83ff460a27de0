//! `cargo run -p fault-suite` (through `scripts/faults.sh`): runs the purchase flow once per fault and
//! prints a table; exits non-zero if any run ends with an inconsistency or a violation of the money
//! invariant. `FAULTS_ONLY=<run name>,...` runs only some scenarios (names: `Fault::run_name`).
//!
//! `cargo run -p fault-suite -- --chaos SEED --minutes N`: the chaos run instead (`chaos.rs`):
//! buyers and sellers in a loop while faults drawn from SEED hit the system; writes
//! `bench-results/chaos.md` and exits non-zero on any violation.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::testing::invariants::MoneyReport;
use common::testing::stripe_double::Behaviour;
use fault_suite::chaos;
use fault_suite::check::{Reconciliation, converge, reconciliation};
use fault_suite::flow::{Flow, Outcome, PayAnswer, Phase, Shape};
use fault_suite::inject;
use fault_suite::invariants;
use fault_suite::stack::{RECONCILE_HORIZON, RECONCILE_MAX_BACKOFF, Stack};
use mongodb::bson::DateTime;

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    NatsRestart,
    OrdersKilled,
    PaymentsKilled,
    NatsDown,
    FerretDbDown,
    StripeSlow,
    StripeDownThenUp,
    PaymentsKilledMidCharge,
    PayExpiryRace,
    TicketsKilled,
    ExpirationKilled,
    RedisRestarted,
    RedisFlushed,
    Poison,
    FerretDbPaused,
    NatsDownLong,
    FerretDbDownLong,
    RollingRestart,
}

/// The long outages: longer than a browser's user waits, and than a consumer that gave a message up
/// after a bounded number of deliveries could be sure to ride out.
const LONG_OUTAGE: Duration = Duration::from_secs(120);
/// How long buyers keep retrying through a long outage (as a browser would keep being reloaded).
const LONG_RETRY: Duration = Duration::from_secs(200);
/// FerretDB frozen (SIGSTOP) for longer than the consumers' ack wait (5 s).
const PAUSE: Duration = Duration::from_secs(8);

/// How long a slow Stripe takes to answer: longer than the payments service's timeout (1.5 s).
const SLOW_STRIPE: Duration = Duration::from_secs(3);

/// What the flow is, under a fault.
enum Script {
    /// [`Flow::run`] with this shape.
    Flow(Shape),
    /// [`Flow::race`].
    Race,
    /// [`Flow::run`] with this shape again and again (fresh buyers and tickets each round) until
    /// the fault is over: buyers keep buying and paying through all of it.
    Rounds(Shape),
}

impl Fault {
    const ALL: [Fault; 19] = [
        Fault::None,
        Fault::NatsRestart,
        Fault::OrdersKilled,
        Fault::PaymentsKilled,
        Fault::TicketsKilled,
        Fault::ExpirationKilled,
        Fault::NatsDown,
        Fault::FerretDbDown,
        Fault::RedisRestarted,
        Fault::RedisFlushed,
        Fault::Poison,
        Fault::FerretDbPaused,
        Fault::StripeSlow,
        Fault::StripeDownThenUp,
        Fault::PaymentsKilledMidCharge,
        Fault::PayExpiryRace,
        Fault::RollingRestart,
        Fault::NatsDownLong,
        Fault::FerretDbDownLong,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::None => "none (baseline)",
            Fault::NatsRestart => "nats-server restarted",
            Fault::OrdersKilled => "orders SIGKILLed and restarted",
            Fault::PaymentsKilled => "payments SIGKILLed and restarted",
            Fault::NatsDown => "nats-server down for 3 s",
            Fault::FerretDbDown => "FerretDB down for 3 s",
            Fault::StripeSlow => "Stripe slow (answers in 3 s) until 3 s into the payments",
            Fault::StripeDownThenUp => {
                "Stripe down until 5 s into the payments, then failing after charging for 2 s"
            }
            Fault::PaymentsKilledMidCharge => "payments SIGKILLed mid-charge (Stripe slow)",
            Fault::PayExpiryRace => "pay vs expiry race (Stripe slow)",
            Fault::TicketsKilled => "tickets SIGKILLed and restarted",
            Fault::ExpirationKilled => "expiration SIGKILLed and restarted",
            Fault::RedisRestarted => "Redis SIGKILLed and restarted with orders pending",
            Fault::RedisFlushed => "Redis emptied (FLUSHALL) with orders pending",
            Fault::Poison => "poison on the bus (order:created: no event; ids not ObjectIds)",
            Fault::FerretDbPaused => "FerretDB frozen (SIGSTOP) for 8 s, past the ack wait",
            Fault::NatsDownLong => "nats-server down for 120 s",
            Fault::FerretDbDownLong => "FerretDB down for 120 s",
            Fault::RollingRestart => {
                "rolling restart: each replica of each service stopped (SIGTERM) and started in turn"
            }
        }
    }

    fn run_name(self) -> &'static str {
        match self {
            Fault::None => "baseline",
            Fault::NatsRestart => "nats",
            Fault::OrdersKilled => "orders",
            Fault::PaymentsKilled => "payments",
            Fault::NatsDown => "nats-down",
            Fault::FerretDbDown => "ferretdb",
            Fault::StripeSlow => "stripe-slow",
            Fault::StripeDownThenUp => "stripe-down",
            Fault::PaymentsKilledMidCharge => "payments-mid-charge",
            Fault::PayExpiryRace => "race",
            Fault::TicketsKilled => "tickets",
            Fault::ExpirationKilled => "expiration",
            Fault::RedisRestarted => "redis-restart",
            Fault::RedisFlushed => "redis-flush",
            Fault::Poison => "poison",
            Fault::FerretDbPaused => "ferretdb-pause",
            Fault::NatsDownLong => "nats-down-120",
            Fault::FerretDbDownLong => "ferretdb-120",
            Fault::RollingRestart => "rolling-restart",
        }
    }

    /// How long the payments service may be unable to record anything (an open attempt waits that
    /// much longer to be settled): the database's outage or pause, and the few seconds the suite
    /// takes to see the services notice it.
    fn database_unavailable(self) -> Duration {
        let notice = Duration::from_secs(10);
        match self {
            Fault::FerretDbDown => Duration::from_secs(3) + notice,
            Fault::FerretDbPaused => PAUSE + notice,
            Fault::FerretDbDownLong => LONG_OUTAGE + notice,
            _ => Duration::ZERO,
        }
    }

    /// How long buyers retry each operation.
    fn retry_for(self) -> Duration {
        match self {
            Fault::NatsDownLong | Fault::FerretDbDownLong => LONG_RETRY,
            _ => fault_suite::flow::RETRY_FOR,
        }
    }

    /// The flow to run, and the reservation window (seconds). Faults of Stripe leave charges to the
    /// reconciler, which takes them up 6.5 s after their last change: their runs give orders a window
    /// longer than the run (and leave none to expire), so that a confirmed charge completes its
    /// order; the race is about the window's end, so its window is short.
    fn script(self) -> (Script, u64) {
        match self {
            Fault::None
            | Fault::NatsRestart
            | Fault::OrdersKilled
            | Fault::PaymentsKilled
            | Fault::NatsDown
            | Fault::FerretDbDown
            | Fault::TicketsKilled
            | Fault::ExpirationKilled
            | Fault::RedisRestarted
            | Fault::RedisFlushed
            | Fault::Poison
            | Fault::FerretDbPaused
            | Fault::NatsDownLong
            | Fault::FerretDbDownLong => {
                (Script::Flow(Shape::WithExpiry), EXPIRATION_WINDOW_SECONDS)
            }
            Fault::StripeSlow | Fault::StripeDownThenUp | Fault::PaymentsKilledMidCharge => {
                (Script::Flow(Shape::NoExpiry), LONG_WINDOW_SECONDS)
            }
            Fault::PayExpiryRace => (Script::Race, RACE_WINDOW_SECONDS),
            Fault::RollingRestart => (Script::Rounds(Shape::WithExpiry), EXPIRATION_WINDOW_SECONDS),
        }
    }

    /// What is set up before the flow starts.
    fn prepare(self, stack: &Stack, flow: &Flow<'_>) {
        let stripe = &stack.stripe_double;
        match self {
            Fault::StripeSlow | Fault::PaymentsKilledMidCharge => {
                stripe.set(Behaviour::Normal { delay: SLOW_STRIPE });
            }
            Fault::StripeDownThenUp => {
                stripe.set(Behaviour::Down);
                // The re-bought third pays while Stripe fails after charging.
                flow.hold_second_payments();
            }
            _ => {}
        }
    }

    /// Injects the fault; for outages, also checks how the services degrade while it lasts and
    /// that they recover by themselves. Returns the problems seen.
    async fn inject(self, stack: &Stack, flow: &Flow<'_>) -> anyhow::Result<Vec<String>> {
        let stripe = &stack.stripe_double;
        let normal = Behaviour::Normal {
            delay: Duration::ZERO,
        };
        match self {
            Fault::StripeSlow => {
                flow.reached(Phase::Paying).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                stripe.set(normal);
                return Ok(Vec::new());
            }
            Fault::StripeDownThenUp => {
                flow.reached(Phase::Paying).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                stripe.set(Behaviour::FailsAfterProcessing);
                flow.release_second_payments();
                tokio::time::sleep(Duration::from_secs(2)).await;
                stripe.set(normal);
                return Ok(Vec::new());
            }
            Fault::PaymentsKilledMidCharge => {
                flow.reached(Phase::Paying).await;
                // Stripe has the first charges and answers in 3 s: kill payments while it waits.
                let deadline = Instant::now() + Duration::from_secs(30);
                while stripe.charges().is_empty() {
                    if Instant::now() > deadline {
                        anyhow::bail!("no charge reached Stripe within 30 s of the first payments");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let service = stack.service("payments")?;
                service.kill().await?;
                eprintln!(
                    "    payments SIGKILLed with {} charges at Stripe, none answered yet",
                    stripe.charges().len()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                stripe.set(normal);
                service.start(&stack.http).await?;
                return Ok(Vec::new());
            }
            Fault::PayExpiryRace => return Ok(Vec::new()),
            Fault::RollingRestart => {
                flow.reached(Phase::Paying).await;
                return inject::rolling_restart(stack).await;
            }
            Fault::RedisRestarted | Fault::RedisFlushed => {
                // Orders pending: every order of the setup has its expiry job.
                flow.reached(Phase::Paying).await;
                let scheduled = wait_for_jobs(stack, TICKETS).await?;
                if matches!(self, Fault::RedisFlushed) {
                    inject::redis_flush(stack).await?;
                    eprintln!("    Redis emptied with {scheduled} expiry jobs in it");
                } else {
                    inject::redis_restart(stack).await?;
                    let left = inject::expiry_jobs(stack).await?;
                    eprintln!(
                        "    Redis restarted with {scheduled} expiry jobs in it, {left} after"
                    );
                }
                return Ok(Vec::new());
            }
            Fault::FerretDbPaused => {
                // Cancels and payments are being written, their events and the orders' are in
                // flight: every handler waiting on the database outlives the ack wait.
                flow.reached(Phase::Paying).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return inject::pause_ferretdb(stack, PAUSE).await;
            }
            Fault::NatsDownLong | Fault::FerretDbDownLong => {
                // Orders exist and their events are in flight; cancels, payments and expiries
                // will wait for the whole outage.
                flow.reached(Phase::Paying).await;
                let component = if matches!(self, Fault::NatsDownLong) {
                    "nats"
                } else {
                    "ferretdb"
                };
                return inject::outage(stack, component, LONG_OUTAGE, true).await;
            }
            _ => {}
        }
        // The other faults land while the flow is under way: 1.5 s in.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match self {
            Fault::None => Ok(Vec::new()),
            Fault::NatsRestart => stack.infra("restart", "nats").await.map(|()| Vec::new()),
            Fault::OrdersKilled
            | Fault::PaymentsKilled
            | Fault::TicketsKilled
            | Fault::ExpirationKilled => {
                let name = match self {
                    Fault::OrdersKilled => "orders",
                    Fault::PaymentsKilled => "payments",
                    Fault::TicketsKilled => "tickets",
                    _ => "expiration",
                };
                inject::kill_and_restart(stack, name, Duration::from_millis(500)).await?;
                Ok(Vec::new())
            }
            // The outage lasts 3 s after the services were seen to notice it (as it always did).
            Fault::NatsDown => inject::outage(stack, "nats", Duration::from_secs(3), true).await,
            Fault::FerretDbDown => {
                inject::outage(stack, "ferretdb", Duration::from_secs(3), true).await
            }
            Fault::Poison => {
                let marker = inject::poison(stack).await?;
                eprintln!("    poison published on order:created (marker {marker})");
                Ok(Vec::new())
            }
            Fault::StripeSlow
            | Fault::StripeDownThenUp
            | Fault::PaymentsKilledMidCharge
            | Fault::PayExpiryRace
            | Fault::RedisRestarted
            | Fault::RedisFlushed
            | Fault::FerretDbPaused
            | Fault::NatsDownLong
            | Fault::FerretDbDownLong
            | Fault::RollingRestart => Ok(Vec::new()),
        }
    }
}

impl Fault {
    /// What the scenario showed once converged, for the table's notes; adds the problems of
    /// scenarios that must have taken a given path (a flushed Redis: the sweeper cancels).
    async fn observe(
        self,
        stack: &Stack,
        outcome: &Outcome,
        problems: &mut Vec<String>,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        match self {
            Fault::RedisFlushed | Fault::RedisRestarted => {
                let swept = invariants::swept_orders(stack);
                let expiring = &outcome.expiring_orders;
                let by_sweeper = expiring.iter().filter(|o| swept.contains(*o)).count();
                notes.push(format!(
                    "{by_sweeper} of {} unpaid orders cancelled by the sweeper",
                    expiring.len()
                ));
                if matches!(self, Fault::RedisFlushed) {
                    for order in expiring.iter().filter(|o| !swept.contains(*o)) {
                        problems.push(format!(
                            "order {order} lost its expiry job to FLUSHALL but the sweeper did \
                             not cancel it"
                        ));
                    }
                }
            }
            Fault::Poison => match invariants::dead_letter_problems(stack).await {
                Ok((found, _)) => notes.push(format!(
                    "{} dead letters, all of the injected poison; {} others",
                    found.expected,
                    found.unexpected.len()
                )),
                Err(err) => problems.push(format!("cannot read the dead letters: {err:#}")),
            },
            _ => {}
        }
        if matches!(
            self,
            Fault::NatsDownLong | Fault::FerretDbDownLong | Fault::FerretDbPaused
        ) {
            let (attempt, consumer) = invariants::highest_attempt(stack);
            notes.push(format!(
                "most deliveries of one event: {attempt} ({consumer})"
            ));
        }
        notes
    }
}

/// Waits (10 s at most) until the run's expiration queue holds `count` jobs; returns how many it
/// holds.
async fn wait_for_jobs(stack: &Stack, count: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = inject::expiry_jobs(stack).await?;
        if jobs >= count || Instant::now() > deadline {
            return Ok(jobs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Row {
    fault: Fault,
    attempted: usize,
    acknowledged: usize,
    problems: Vec<String>,
    money: Option<MoneyReport>,
    reconciled: Reconciliation,
    /// From the end of the fault (Stripe answering normally again, payments restarted; in the race,
    /// the end of the raced orders' window) to the last attempt the reconciler settled.
    reconciled_after_fault: Option<Duration>,
    recovery: Duration,
    /// What the scenario showed beyond the counts (sweeps, dead letters, delivery attempts).
    notes: Vec<String>,
}

const TICKETS: usize = 12;
const RACE_TICKETS: usize = 8;
const EXPIRATION_WINDOW_SECONDS: u64 = 6;
/// Longer than any run: no order expires in it.
const LONG_WINDOW_SECONDS: u64 = 120;
const RACE_WINDOW_SECONDS: u64 = 4;
/// How long convergence may take once the flow is over (plus the window, if orders expire).
const CONVERGE_WITHIN: Duration = Duration::from_secs(40);
/// The longest a payment attempt may stay open: the reconciler's horizon, plus its longest backoff,
/// plus the longest Stripe outage here (7 s), plus a margin.
const RECONCILED_WITHIN: Duration = RECONCILE_HORIZON
    .saturating_add(RECONCILE_MAX_BACKOFF)
    .saturating_add(Duration::from_secs(7 + 2));

fn answers(outcome: &Outcome) -> String {
    let race = |answer: PayAnswer| {
        outcome
            .race_orders
            .iter()
            .filter(|r| r.answer == answer)
            .count()
    };
    format!(
        "payments answered: {} paid, {} being confirmed (202), {} refunded, {} too late",
        outcome.paid_orders.len() + race(PayAnswer::Paid),
        outcome.confirming_orders.len() + race(PayAnswer::Confirming),
        outcome.refunded_orders.len() + race(PayAnswer::Refunded),
        outcome.too_late_orders.len() + race(PayAnswer::TooLate),
    )
}

/// What the raced buyers were told, by how they paid.
fn race_answers(outcome: &Outcome) -> Vec<String> {
    let mut batches: Vec<(Duration, Duration)> = outcome
        .race_orders
        .iter()
        .map(|r| (r.lead, r.stripe_delay))
        .collect();
    batches.dedup();
    batches
        .into_iter()
        .map(|(lead, delay)| {
            let told: Vec<String> = outcome
                .race_orders
                .iter()
                .filter(|r| (r.lead, r.stripe_delay) == (lead, delay))
                .map(|r| format!("{:?}", r.answer))
                .collect();
            format!(
                "paid {:.1} s before the window's end, Stripe answering in {:.1} s: {}",
                lead.as_secs_f64(),
                delay.as_secs_f64(),
                told.join(", ")
            )
        })
        .collect()
}

async fn run_one(root: &Path, fault: Fault) -> anyhow::Result<Row> {
    let (script, window) = fault.script();
    let stack = Stack::start(root, fault.run_name(), window).await?;
    let flow = Flow::new(&stack).retrying_for(fault.retry_for());
    fault.prepare(&stack, &flow);
    let fault_over_flag = std::sync::atomic::AtomicBool::new(false);
    let injection = async {
        let result = fault.inject(&stack, &flow).await;
        fault_over_flag.store(true, Ordering::Release);
        (result, Instant::now(), DateTime::now())
    };
    let rounds = std::sync::atomic::AtomicUsize::new(0);
    let script_run = async {
        match script {
            Script::Flow(shape) => flow.run(fault.run_name(), TICKETS, shape).await,
            Script::Race => flow.race(fault.run_name(), RACE_TICKETS).await,
            Script::Rounds(shape) => {
                let mut outcome = fault_suite::flow::Outcome::default();
                loop {
                    let round = rounds.fetch_add(1, Ordering::Relaxed) + 1;
                    let run = format!("{}-{round}", fault.run_name());
                    outcome.absorb(flow.run(&run, TICKETS, shape).await?);
                    if fault_over_flag.load(Ordering::Acquire) {
                        break Ok(outcome);
                    }
                }
            }
        }
    };
    let (outcome, (injected, fault_over, fault_over_at)) = tokio::join!(script_run, injection);
    let mut problems = injected?;
    let outcome = outcome?;
    eprintln!("    {}", answers(&outcome));
    for line in race_answers(&outcome) {
        eprintln!("    {line}");
    }
    let expiring = match script {
        Script::Flow(Shape::WithExpiry) | Script::Rounds(Shape::WithExpiry) | Script::Race => {
            Duration::from_secs(window)
        }
        Script::Flow(Shape::NoExpiry) | Script::Rounds(Shape::NoExpiry) => Duration::ZERO,
    };
    let converged = converge(&stack, &outcome, &flow.writes(), CONVERGE_WITHIN + expiring).await;
    // The race's fault is the end of the raced orders' window.
    let fault_ended_ms = outcome
        .race_expired_at
        .unwrap_or(fault_over_at)
        .timestamp_millis();
    let recovery = match outcome.race_expired_at {
        Some(_) => since(fault_ended_ms, DateTime::now().timestamp_millis()),
        None => fault_over.elapsed(),
    };
    problems.extend(converged.problems);
    let reconciled = match reconciliation(&stack).await {
        Ok(found) => found,
        Err(err) => {
            problems.push(format!("cannot read the payments' history: {err:#}"));
            Reconciliation::default()
        }
    };
    let reconciled_within = RECONCILED_WITHIN + fault.database_unavailable();
    if reconciled.longest_open > reconciled_within {
        problems.push(format!(
            "a payment attempt stayed open {:.1} s (more than {reconciled_within:?})",
            reconciled.longest_open.as_secs_f64()
        ));
    }
    let reconciled_after_fault = reconciled
        .last_settled_at
        .map(|at| since(fault_ended_ms, at));
    let mut notes = fault.observe(&stack, &outcome, &mut problems).await;
    if matches!(fault, Fault::RollingRestart) {
        let failed = flow.stats.failed.load(Ordering::Relaxed);
        let sent = flow.stats.sent.load(Ordering::Relaxed);
        let replicas = stack.replicas();
        notes.push(format!(
            "{replicas} replica(s) each; {} rounds of the flow; {failed} of {sent} requests failed \
             (no answer or 5xx)",
            rounds.load(Ordering::Relaxed)
        ));
        // With a second replica in rotation, a client never has to see a restart.
        if replicas >= 2 && failed > 0 {
            problems.push(format!(
                "{failed} requests failed during the rolling restart of {replicas} replicas"
            ));
        }
    }
    let row = Row {
        fault,
        attempted: flow.stats.attempted.load(Ordering::Relaxed),
        acknowledged: flow.stats.acknowledged.load(Ordering::Relaxed),
        problems,
        money: converged.money,
        reconciled,
        reconciled_after_fault,
        recovery,
        notes,
    };
    stack.stop().await;
    Ok(row)
}

/// From `from` to `to` (ms since the epoch); zero if `to` is earlier.
fn since(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to - from).unwrap_or(0))
}

fn money_cell(money: Option<&MoneyReport>) -> String {
    money.map_or_else(
        || "unread".to_owned(),
        |m| format!("{} / {} / {}", m.charges, m.refunded, m.violations.len()),
    )
}

fn reconciled_cell(row: &Row) -> String {
    if row.reconciled.attempts == 0 {
        return "none".to_owned();
    }
    let after = row
        .reconciled_after_fault
        .map(|d| format!("; last {:.1} s after the fault", d.as_secs_f64()))
        .unwrap_or_default();
    format!(
        "{}, open ≤ {:.1} s{after}",
        row.reconciled.attempts,
        row.reconciled.longest_open.as_secs_f64()
    )
}

/// `--chaos SEED --minutes N` on the command line, if given.
fn chaos_args() -> anyhow::Result<Option<(u64, f64)>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seed = None;
    let mut minutes = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match arg.as_str() {
            "--chaos" => seed = Some(value("--chaos")?.parse::<u64>()?),
            "--minutes" => minutes = Some(value("--minutes")?.parse::<f64>()?),
            other => anyhow::bail!(
                "unknown argument {other:?} (usage: fault-suite [--chaos SEED --minutes N])"
            ),
        }
    }
    match (seed, minutes) {
        (None, None) => Ok(None),
        (Some(seed), minutes) => {
            let minutes = minutes.unwrap_or(2.0);
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                anyhow::bail!("--minutes must be above 0 (and at most a day)");
            }
            Ok(Some((seed, minutes)))
        }
        (None, Some(_)) => anyhow::bail!("--minutes goes with --chaos SEED"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some((seed, minutes)) = chaos_args()? {
        let report = chaos::run(&root, seed, minutes).await?;
        let path = root.join("bench-results/chaos.md");
        std::fs::create_dir_all(root.join("bench-results"))?;
        std::fs::write(&path, &report.markdown)?;
        println!("{}", report.markdown);
        eprintln!(
            "==> chaos run (seed {seed}, {minutes} min): {} violations; report in bench-results/chaos.md",
            report.violations
        );
        if report.violations > 0 {
            std::process::exit(1)
        }
        return Ok(());
    }
    let started = Instant::now();
    // `FAULTS_ONLY=race,stripe-slow` runs only those scenarios (by run name), for debugging one.
    let only: Option<Vec<String>> = std::env::var("FAULTS_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let mut rows = Vec::new();
    for fault in Fault::ALL {
        if let Some(only) = &only
            && !only.iter().any(|name| name == fault.run_name())
        {
            continue;
        }
        eprintln!("==> fault suite: {}", fault.label());
        let scenario_started = Instant::now();
        let row = match run_one(&root, fault).await {
            Ok(row) => row,
            Err(err) => Row {
                fault,
                attempted: 0,
                acknowledged: 0,
                problems: vec![format!("the scenario could not finish: {err:#}")],
                money: None,
                reconciled: Reconciliation::default(),
                reconciled_after_fault: None,
                recovery: Duration::ZERO,
                notes: Vec::new(),
            },
        };
        eprintln!(
            "    money: {}; reconciled: {}; {} problems; {:.0} s",
            money_cell(row.money.as_ref()),
            reconciled_cell(&row),
            row.problems.len(),
            scenario_started.elapsed().as_secs_f64()
        );
        for note in &row.notes {
            eprintln!("    {note}");
        }
        rows.push(row);
    }
    println!(
        "| fault injected | operations attempted | acknowledged | money: charges / refunded / violations | reconciled attempts (longest open; last settled after the fault) | problems (must be 0) | converged after the fault | notes |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
            row.fault.label(),
            row.attempted,
            row.acknowledged,
            money_cell(row.money.as_ref()),
            reconciled_cell(row),
            row.problems.len(),
            row.recovery.as_secs_f64(),
            row.notes.join("; ")
        );
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.problems.is_empty()).collect();
    // Also kept in a file: scripts/faults.sh shows it last, with the failed runs' logs, so that a
    // truncated CI log still ends with the reason.
    let mut summary = String::new();
    for row in &failed {
        summary.push_str(&format!(
            "problems after '{}' (logs: .data/logs/fault-suite/{}-*.log):\n",
            row.fault.label(),
            row.fault.run_name()
        ));
        for problem in &row.problems {
            summary.push_str(&format!("  - {problem}\n"));
        }
    }
    eprint!("{summary}");
    let logs = root.join(".data/logs/fault-suite");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("problems.txt"), &summary)?;
    let failed_runs: Vec<&str> = failed.iter().map(|r| r.fault.run_name()).collect();
    std::fs::write(logs.join("failed-runs.txt"), failed_runs.join("\n"))?;
    eprintln!(
        "==> fault suite: {} scenarios in {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{} passed, {} failed ({} scenarios in {:.0} s)",
        rows.len() - failed.len(),
        failed.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
