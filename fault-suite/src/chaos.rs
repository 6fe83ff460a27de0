//! The seeded chaos run (`fault-suite --chaos SEED --minutes N`): scripted buyers and sellers keep
//! running the purchase flow in a loop while faults hit random components, on a schedule derived
//! from SEED alone (a splitmix64 generator), so that a failing seed can be run again. Then, after
//! convergence, every invariant of `crate::invariants` is checked, with the money invariant and
//! what each buyer was told; the report goes to `bench-results/chaos.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::testing::invariants::check_money;
use common::testing::stripe_double::Behaviour;
use futures::future::join_all;

use crate::degradation;
use crate::flow::{Flow, Outcome, Shape, Write};
use crate::inject;
use crate::invariants::{self, Kind, Problem, Snapshot};
use crate::stack::{RECONCILE_HORIZON, RECONCILE_MAX_BACKOFF, SERVICES, SWEEP_GRACE, Stack};

/// How long buyers have to pay in the chaos run: long enough that a payment sent right after its
/// order outlives any single fault (at most 10 s) before the window ends.
pub const CHAOS_WINDOW_SECONDS: u64 = 15;
/// Concurrent buyer/seller loops.
const WORKERS: usize = 2;
/// Tickets per flow (a third cancelled and bought again, a third paid, a third left to expire).
const TICKETS_PER_FLOW: usize = 6;
/// Between two flows of one loop.
const BETWEEN_FLOWS: Duration = Duration::from_millis(500);
/// No fault in the first seconds (the services warm up) nor in the last (the loops wind down).
const QUIET_START: Duration = Duration::from_secs(5);
const QUIET_END: Duration = Duration::from_secs(5);
/// Between the end of one fault and the start of the next.
const GAP: (u64, u64) = (3_000, 12_000);

/// splitmix64 (Steele, Lea, Flood 2014): a small, well-mixed generator; the schedule depends on the
/// seed and nothing else.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for the small n used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

/// A fault of the chaos run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosFault {
    NatsRestart,
    NatsDown(Duration),
    FerretDbDown(Duration),
    FerretDbPause(Duration),
    RedisRestart,
    RedisFlush,
    Kill(&'static str),
    /// Stripe answers in 3 s (past the payments service's timeout) for this long.
    StripeSlow(Duration),
    /// Stripe answers 503 and does nothing, for this long.
    StripeDown(Duration),
    /// Stripe charges, then answers 500, for this long.
    StripeFailing(Duration),
    Poison,
}

impl ChaosFault {
    /// One fault, drawn uniformly from 15 kinds (each service's kill is a kind).
    pub fn draw(rng: &mut SplitMix64) -> Self {
        match rng.below(15) {
            0 => ChaosFault::NatsRestart,
            1 => ChaosFault::NatsDown(Duration::from_secs(3)),
            2 => ChaosFault::FerretDbDown(Duration::from_secs(3)),
            3 => ChaosFault::FerretDbPause(rng.millis(6_000, 9_000)),
            4 => ChaosFault::RedisRestart,
            5 => ChaosFault::RedisFlush,
            k @ 6..=10 => {
                let index = usize::try_from(k - 6).unwrap_or(0);
                ChaosFault::Kill(SERVICES[index % SERVICES.len()])
            }
            11 => ChaosFault::StripeSlow(rng.millis(4_000, 10_000)),
            12 => ChaosFault::StripeDown(rng.millis(3_000, 8_000)),
            13 => ChaosFault::StripeFailing(rng.millis(2_000, 4_000)),
            _ => ChaosFault::Poison,
        }
    }

    pub fn label(self) -> String {
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        match self {
            ChaosFault::NatsRestart => "nats-server restarted".to_owned(),
            ChaosFault::NatsDown(d) => format!("nats-server down for {}", secs(d)),
            ChaosFault::FerretDbDown(d) => format!("FerretDB down for {}", secs(d)),
            ChaosFault::FerretDbPause(d) => format!("FerretDB frozen (SIGSTOP) for {}", secs(d)),
            ChaosFault::RedisRestart => "Redis SIGKILLed and restarted".to_owned(),
            ChaosFault::RedisFlush => "Redis emptied (FLUSHALL)".to_owned(),
            ChaosFault::Kill(service) => format!("{service} SIGKILLed and restarted"),
            ChaosFault::StripeSlow(d) => format!("Stripe slow (3 s answers) for {}", secs(d)),
            ChaosFault::StripeDown(d) => format!("Stripe down for {}", secs(d)),
            ChaosFault::StripeFailing(d) => {
                format!("Stripe failing after charging for {}", secs(d))
            }
            ChaosFault::Poison => "poison on the bus (order:created)".to_owned(),
        }
    }

    /// Roughly how long it takes, to plan the next one after it.
    fn length(self) -> Duration {
        match self {
            ChaosFault::NatsRestart | ChaosFault::RedisRestart | ChaosFault::Kill(_) => {
                Duration::from_secs(2)
            }
            ChaosFault::NatsDown(d) | ChaosFault::FerretDbDown(d) => d + Duration::from_secs(1),
            ChaosFault::FerretDbPause(d)
            | ChaosFault::StripeSlow(d)
            | ChaosFault::StripeDown(d)
            | ChaosFault::StripeFailing(d) => d,
            ChaosFault::RedisFlush | ChaosFault::Poison => Duration::ZERO,
        }
    }

    async fn inject(self, stack: &Stack) -> anyhow::Result<()> {
        let stripe = &stack.stripe_double;
        let normal = Behaviour::Normal {
            delay: Duration::ZERO,
        };
        let stripe_for = |behaviour: Behaviour, d: Duration| async move {
            stripe.set(behaviour);
            tokio::time::sleep(d).await;
            stripe.set(normal);
        };
        match self {
            ChaosFault::NatsRestart => stack.infra("restart", "nats").await,
            ChaosFault::NatsDown(d) => inject::outage(stack, "nats", d, false).await.map(drop),
            ChaosFault::FerretDbDown(d) => {
                inject::outage(stack, "ferretdb", d, false).await.map(drop)
            }
            ChaosFault::FerretDbPause(d) => inject::pause_ferretdb(stack, d).await.map(drop),
            ChaosFault::RedisRestart => inject::redis_restart(stack).await,
            ChaosFault::RedisFlush => inject::redis_flush(stack).await,
            ChaosFault::Kill(service) => {
                inject::kill_and_restart(stack, service, Duration::from_millis(500)).await
            }
            ChaosFault::StripeSlow(d) => {
                let slow = Behaviour::Normal {
                    delay: Duration::from_secs(3),
                };
                stripe_for(slow, d).await;
                Ok(())
            }
            ChaosFault::StripeDown(d) => {
                stripe_for(Behaviour::Down, d).await;
                Ok(())
            }
            ChaosFault::StripeFailing(d) => {
                stripe_for(Behaviour::FailsAfterProcessing, d).await;
                Ok(())
            }
            ChaosFault::Poison => inject::poison(stack).await.map(drop),
        }
    }
}

/// A fault and when it is due, from the start of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at: Duration,
    pub fault: ChaosFault,
}

/// The faults of a run of `total`, one after the other with random gaps, from `seed` alone.
pub fn schedule(seed: u64, total: Duration) -> Vec<Scheduled> {
    let mut rng = SplitMix64::new(seed);
    let mut at = QUIET_START + rng.millis(0, 3_000);
    let mut plan = Vec::new();
    loop {
        let fault = ChaosFault::draw(&mut rng);
        if at + fault.length() + QUIET_END > total {
            return plan;
        }
        plan.push(Scheduled { at, fault });
        at += fault.length() + rng.millis(GAP.0, GAP.1);
    }
}

/// What the buyer/seller loops did.
#[derive(Default)]
struct Load {
    outcomes: Vec<Outcome>,
    writes: Vec<Write>,
    attempted: usize,
    acknowledged: usize,
    flows: usize,
    failures: Vec<String>,
}

/// What happened to one scheduled fault.
struct Injected {
    planned: Duration,
    started: Duration,
    took: Duration,
    fault: ChaosFault,
    error: Option<String>,
}

pub struct ChaosReport {
    pub markdown: String,
    pub violations: usize,
}

async fn buyer_loop(
    stack: &Stack,
    seed: u64,
    worker: usize,
    stop: &AtomicBool,
    load: &Mutex<Load>,
) {
    let mut iteration = 0;
    while !stop.load(Ordering::Relaxed) {
        let flow = Flow::new(stack);
        let name = format!("c{seed}-w{worker}-i{iteration}");
        let result = flow.run(&name, TICKETS_PER_FLOW, Shape::WithExpiry).await;
        {
            let mut load = load
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            load.flows += 1;
            load.attempted += flow.stats.attempted.load(Ordering::Relaxed);
            load.acknowledged += flow.stats.acknowledged.load(Ordering::Relaxed);
            load.writes.extend(flow.writes());
            match result {
                Ok(outcome) => load.outcomes.push(outcome),
                Err(err) => {
                    eprintln!("    flow {name} failed: {err:#}");
                    load.failures.push(format!("flow {name}: {err:#}"));
                }
            }
        }
        iteration += 1;
        tokio::time::sleep(BETWEEN_FLOWS).await;
    }
}

async fn inject_all(
    stack: &Stack,
    plan: &[Scheduled],
    total: Duration,
    start: Instant,
    stop: &AtomicBool,
) -> Vec<Injected> {
    let mut done = Vec::new();
    for scheduled in plan {
        tokio::time::sleep(scheduled.at.saturating_sub(start.elapsed())).await;
        let started = start.elapsed();
        eprintln!(
            "    {:>6.1} s  {}",
            started.as_secs_f64(),
            scheduled.fault.label()
        );
        let mut error = scheduled
            .fault
            .inject(stack)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        // Whatever the fault, every service is ready again by itself.
        let not_ready = degradation::recovered(stack).await;
        if !not_ready.is_empty() {
            let text = not_ready.join("; ");
            error = Some(error.map_or(text.clone(), |e| format!("{e}; {text}")));
        }
        if let Some(error) = &error {
            eprintln!("            failed: {error}");
        }
        done.push(Injected {
            planned: scheduled.at,
            started,
            took: start.elapsed().saturating_sub(started),
            fault: scheduled.fault,
            error,
        });
    }
    tokio::time::sleep(total.saturating_sub(start.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    done
}

/// Every problem once the run has settled, by invariant.
async fn problems(
    stack: &Stack,
    load: &Load,
    paid_then_refunded: &mut Vec<String>,
) -> (
    Vec<Problem>,
    Option<common::testing::invariants::MoneyReport>,
) {
    let snapshot = match Snapshot::read(stack).await {
        Ok(snapshot) => snapshot,
        Err(err) => {
            let text = format!("cannot read the databases: {err:#}");
            return (vec![Problem::new(Kind::Faults, text)], None);
        }
    };
    let mut found = invariants::check(stack, &snapshot, &load.writes).await;
    paid_then_refunded.clear();
    for outcome in &load.outcomes {
        found.extend(invariants::outcome_problems(
            stack,
            &snapshot,
            outcome,
            paid_then_refunded,
        ));
    }
    let money = match (stack.database("orders"), stack.database("payments")) {
        (Ok(orders), Ok(payments)) => {
            let charges = stack.stripe_double.charges();
            match check_money(&charges, &orders, &payments, RECONCILE_HORIZON).await {
                Ok(report) => Some(report),
                Err(err) => {
                    let text = format!("cannot check the money invariant: {err:#}");
                    found.push(Problem::new(Kind::Money, text));
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(report) = &money {
        found.extend(
            report
                .violations
                .iter()
                .map(|v| Problem::new(Kind::Money, format!("money: {v}"))),
        );
    }
    (found, money)
}

pub async fn run(root: &Path, seed: u64, minutes: f64) -> anyhow::Result<ChaosReport> {
    let total = Duration::from_secs_f64(minutes * 60.0);
    let plan = schedule(seed, total);
    let started_at = mongodb::bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default();
    eprintln!(
        "==> chaos run: seed {seed}, {minutes} min, {WORKERS} buyer/seller loops of \
         {TICKETS_PER_FLOW} tickets, {} faults planned:",
        plan.len()
    );
    for scheduled in &plan {
        eprintln!(
            "    {:>6.1} s  {}",
            scheduled.at.as_secs_f64(),
            scheduled.fault.label()
        );
    }
    let stack = Stack::start(root, &format!("chaos-{seed}"), CHAOS_WINDOW_SECONDS).await?;
    eprintln!("==> chaos run: load and faults begin (injected as they come)");
    let stop = AtomicBool::new(false);
    let load = Mutex::new(Load::default());
    let start = Instant::now();
    let loops = join_all((0..WORKERS).map(|w| buyer_loop(&stack, seed, w, &stop, &load)));
    let ((), injected) = tokio::join!(
        async {
            loops.await;
        },
        inject_all(&stack, &plan, total, start, &stop)
    );
    let load_ended = start.elapsed();
    let load = load
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    stack.stripe_double.set(Behaviour::Normal {
        delay: Duration::ZERO,
    });
    eprintln!(
        "==> chaos run: load ended after {:.0} s ({} flows, {} failed); converging",
        load_ended.as_secs_f64(),
        load.flows,
        load.failures.len()
    );

    // The last orders' windows, the sweeper's grace, the reconciler's horizon and backoff, and a
    // margin for a system that has just been through all of the above.
    let limit = Duration::from_secs(CHAOS_WINDOW_SECONDS)
        + SWEEP_GRACE
        + RECONCILE_HORIZON
        + RECONCILE_MAX_BACKOFF
        + Duration::from_secs(60);
    let converging = Instant::now();
    let mut paid_then_refunded = Vec::new();
    let (mut found, money) = loop {
        let (found, money) = problems(&stack, &load, &mut paid_then_refunded).await;
        if found.is_empty() || converging.elapsed() > limit {
            break (found, money);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let converged_after = converging.elapsed();
    for failure in &load.failures {
        found.push(Problem::new(Kind::Flows, failure.clone()));
    }
    for fault in &injected {
        if let Some(error) = &fault.error {
            found.push(Problem::new(
                Kind::Faults,
                format!(
                    "{} at {:.1} s: {error}",
                    fault.fault.label(),
                    fault.started.as_secs_f64()
                ),
            ));
        }
    }
    let dead = invariants::dead_letter_problems(&stack).await.ok();
    let (attempt, consumer) = invariants::highest_attempt(&stack);
    let swept = invariants::swept_orders(&stack).len();
    let snapshot = Snapshot::read(&stack).await.ok();
    stack.stop().await;

    // The report.
    let mut md = String::new();
    let _ = writeln!(md, "# Chaos run: seed {seed}, {minutes} min\n");
    let _ = writeln!(
        md,
        "Started {started_at}. Reproduce with `scripts/faults.sh --chaos {seed} --minutes {minutes}` \
         (the schedule depends on the seed alone; what the loops do meanwhile depends on timing). \
         {WORKERS} buyer/seller loops each repeat the scripted flow ({TICKETS_PER_FLOW} tickets: a \
         third cancelled, bought again and paid, a third paid, a third left to expire; a \
         {CHAOS_WINDOW_SECONDS} s window, the sweeper's grace {} s).\n",
        SWEEP_GRACE.as_secs()
    );
    let _ = writeln!(md, "## Schedule\n");
    let _ = writeln!(md, "| planned | injected | took | fault | |");
    let _ = writeln!(md, "|---:|---:|---:|---|---|");
    for fault in &injected {
        let _ = writeln!(
            md,
            "| {:.1} s | {:.1} s | {:.1} s | {} | {} |",
            fault.planned.as_secs_f64(),
            fault.started.as_secs_f64(),
            fault.took.as_secs_f64(),
            fault.fault.label(),
            fault.error.as_deref().unwrap_or("ok")
        );
    }
    let (charges, refunded) = money.as_ref().map_or((0, 0), |m| (m.charges, m.refunded));
    let _ = writeln!(md, "\n## Load and convergence\n");
    let _ = writeln!(md, "| | |\n|---|---:|");
    let rows: Vec<(&str, String)> = vec![
        ("faults injected", injected.len().to_string()),
        (
            "flows run (failed)",
            format!("{} ({})", load.flows, load.failures.len()),
        ),
        ("operations attempted", load.attempted.to_string()),
        ("operations acknowledged", load.acknowledged.to_string()),
        ("acknowledged writes checked", load.writes.len().to_string()),
        (
            "tickets / orders in the databases",
            snapshot.as_ref().map_or_else(
                || "unread".to_owned(),
                |s| format!("{} / {}", s.tickets.len(), s.orders.len()),
            ),
        ),
        ("charges / refunded", format!("{charges} / {refunded}")),
        (
            "orders answered paid that ended cancelled, charge refunded (violations)",
            paid_then_refunded.len().to_string(),
        ),
        ("orders cancelled by the expiry sweeper", swept.to_string()),
        (
            "dead letters: injected poison / other",
            dead.as_ref().map_or_else(
                || "unread".to_owned(),
                |(d, _)| format!("{} / {}", d.expected, d.unexpected.len()),
            ),
        ),
        (
            "most deliveries of one event",
            format!("{attempt} ({consumer})"),
        ),
        (
            "load ran / converged after the load",
            format!(
                "{:.0} s / {:.1} s",
                load_ended.as_secs_f64(),
                converged_after.as_secs_f64()
            ),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(md, "| {what} | {value} |");
    }
    let _ = writeln!(md, "\n## Invariants after convergence\n");
    let _ = writeln!(md, "| invariant | violations |\n|---|---:|");
    for kind in Kind::ALL {
        let count = found.iter().filter(|p| p.kind == kind).count();
        let _ = writeln!(md, "| {} | {count} |", kind.describe());
    }
    let _ = writeln!(md, "\n**{} violations.**", found.len());
    if !found.is_empty() {
        let _ = writeln!(md, "\n## Violations\n");
        for problem in found.iter().take(200) {
            let _ = writeln!(md, "- {:?}: {}", problem.kind, problem.text);
        }
        if found.len() > 200 {
            let _ = writeln!(md, "- ... and {} more", found.len() - 200);
        }
    }
    Ok(ChaosReport {
        markdown: md,
        violations: found.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 0 of the reference implementation (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let total = Duration::from_secs(600);
        assert_eq!(schedule(7, total), schedule(7, total));
        assert_ne!(schedule(7, total), schedule(8, total));
    }

    #[test]
    fn faults_follow_each_other_within_the_run() {
        let total = Duration::from_secs(120);
        for seed in 0..50 {
            let plan = schedule(seed, total);
            assert!(!plan.is_empty(), "seed {seed}");
            assert!(plan[0].at >= QUIET_START);
            for pair in plan.windows(2) {
                assert!(pair[1].at >= pair[0].at + pair[0].fault.length());
            }
            let last = plan[plan.len() - 1];
            assert!(last.at + last.fault.length() + QUIET_END <= total);
        }
    }

    #[test]
    fn every_kind_of_fault_is_drawn() {
        let mut rng = SplitMix64::new(1);
        let labels: std::collections::HashSet<String> = (0..2_000)
            .map(|_| {
                let fault = ChaosFault::draw(&mut rng);
                // Kinds, not durations.
                fault.label().split(" for ").next().unwrap_or("").to_owned()
            })
            .collect();
        assert_eq!(labels.len(), 15, "{labels:?}");
    }
}
