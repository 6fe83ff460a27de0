//! `cargo run -p fault-suite` (through `scripts/faults.sh`): runs the purchase flow once per fault and
//! prints a table; exits non-zero if any run ends with an inconsistency.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fault_suite::check::converge;
use fault_suite::degradation;
use fault_suite::flow::Flow;
use fault_suite::stack::Stack;

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    NatsRestart,
    OrdersKilled,
    PaymentsKilled,
    NatsDown,
    FerretDbDown,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::None => "none (baseline)",
            Fault::NatsRestart => "nats-server restarted",
            Fault::OrdersKilled => "orders SIGKILLed and restarted",
            Fault::PaymentsKilled => "payments SIGKILLed and restarted",
            Fault::NatsDown => "nats-server down for 3 s",
            Fault::FerretDbDown => "FerretDB down for 3 s",
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
        }
    }

    /// Injects the fault; for outages, also checks how the services degrade while it lasts and
    /// that they recover by themselves. Returns the problems seen.
    async fn inject(self, stack: &Stack) -> anyhow::Result<Vec<String>> {
        match self {
            Fault::None => Ok(Vec::new()),
            Fault::NatsRestart => stack.infra("restart", "nats").await.map(|()| Vec::new()),
            Fault::OrdersKilled | Fault::PaymentsKilled => {
                let name = if matches!(self, Fault::OrdersKilled) {
                    "orders"
                } else {
                    "payments"
                };
                let service = stack.service(name)?;
                service.kill().await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                service.start(&stack.http).await?;
                Ok(Vec::new())
            }
            Fault::NatsDown => {
                stack.infra("kill", "nats").await?;
                let mut problems = degradation::while_down(
                    stack,
                    &["tickets", "orders", "payments", "expiration"],
                    false,
                )
                .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                stack.infra("up", "nats").await?;
                problems.extend(degradation::recovered(stack).await);
                Ok(problems)
            }
            Fault::FerretDbDown => {
                stack.infra("kill", "ferretdb").await?;
                let mut problems = degradation::while_down(
                    stack,
                    &["auth", "tickets", "orders", "payments"],
                    true,
                )
                .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                stack.infra("up", "ferretdb").await?;
                problems.extend(degradation::recovered(stack).await);
                Ok(problems)
            }
        }
    }
}

struct Row {
    fault: Fault,
    attempted: usize,
    acknowledged: usize,
    problems: Vec<String>,
    recovery: Duration,
}

const TICKETS: usize = 12;
const EXPIRATION_WINDOW_SECONDS: u64 = 6;

async fn run_one(root: &Path, fault: Fault) -> anyhow::Result<Row> {
    let stack = Stack::start(root, fault.run_name(), EXPIRATION_WINDOW_SECONDS).await?;
    let flow = Flow::new(&stack);
    // The fault lands while the flow is under way: injected 1.5 s in, concurrently with it.
    let injection = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let result = fault.inject(&stack).await;
        (result, Instant::now())
    };
    let (outcome, (injected, fault_over)) =
        tokio::join!(flow.run(fault.run_name(), TICKETS), injection);
    injected?;
    let outcome = outcome?;
    let limit = Duration::from_secs(EXPIRATION_WINDOW_SECONDS + 40);
    let (problems, _) = converge(&stack, &outcome, limit).await;
    let recovery = fault_over.elapsed();
    let row = Row {
        fault,
        attempted: flow.stats.attempted.load(Ordering::Relaxed),
        acknowledged: flow.stats.acknowledged.load(Ordering::Relaxed),
        problems,
        recovery,
    };
    stack.stop().await;
    Ok(row)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rows = Vec::new();
    for fault in [
        Fault::None,
        Fault::NatsRestart,
        Fault::OrdersKilled,
        Fault::PaymentsKilled,
        Fault::NatsDown,
        Fault::FerretDbDown,
    ] {
        eprintln!("==> fault suite: {}", fault.label());
        rows.push(run_one(&root, fault).await?);
    }
    println!(
        "| fault injected | operations attempted | acknowledged | problems (must be 0) | converged after the fault |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} s |",
            row.fault.label(),
            row.attempted,
            row.acknowledged,
            row.problems.len(),
            row.recovery.as_secs_f64()
        );
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.problems.is_empty()).collect();
    for row in &failed {
        eprintln!("problems after '{}':", row.fault.label());
        for problem in &row.problems {
            eprintln!("  - {problem}");
        }
    }
    println!(
        "{} passed, {} failed",
        rows.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
