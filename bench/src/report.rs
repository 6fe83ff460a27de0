//! The figures of a run: `results.json`, `report.md` with SVG charts, and `summary.md` (the table
//! the README carries), all in `bench-results/<run>/`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::auth::Auth;
use crate::browse::{Browse, Endpoint};
use crate::database::CollectionSize;
use crate::flash_sale::{FlashSale, Payments, Propagation};
use crate::load::LatencySummary;
use crate::machine::Machine;
use crate::monitor::{PhaseUsage, Resident};
use crate::profile::Profile;
use crate::startup::ServiceStartup;
use crate::svg::{self, BarChart, LineChart, Series};

/// 20 MB (decimal, as the goal says) in MiB, the unit of the figures.
pub const IDLE_GOAL_MIB: f64 = 20_000_000.0 / 1_048_576.0;
pub const READY_GOAL_MS: f64 = 200.0;
pub const PROPAGATION_GOAL_MS: f64 = 100.0;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Settings {
    pub base_url: String,
    pub users: usize,
    pub tickets: usize,
    pub signin_users: usize,
    pub auth_concurrency: usize,
    pub sale_in_flight: usize,
    pub browse_levels: Vec<usize>,
    pub browse_seconds: f64,
    pub startup_runs: usize,
    pub profile: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SeedFigures {
    pub tickets: usize,
    pub create_ticket_latency: LatencySummary,
    /// From the last 201 of `POST /api/tickets` until the orders service's replica had all of them.
    pub replica_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Results {
    pub run: String,
    pub machine: Machine,
    pub settings: Settings,
    /// The running stack right after `scripts/app.sh up`, before any load.
    pub idle: Vec<Resident>,
    /// CPU while idle (background work: outbox relays, consumers, health checks).
    pub idle_usage: PhaseUsage,
    pub database_at_start: Vec<CollectionSize>,
    pub database_at_end: Vec<CollectionSize>,
    pub startup: Vec<ServiceStartup>,
    pub seed: SeedFigures,
    pub browse: Browse,
    pub auth: Auth,
    pub flash_sale: FlashSale,
    pub payments: Payments,
    /// After the run, the load gone.
    pub after_the_run: Vec<Resident>,
    /// The highest resident memory sampled (every 100 ms) during the run.
    pub peak_sampled: Vec<Resident>,
    /// The kernel's peak resident memory since each process started (VmHWM).
    pub peak_since_start: Vec<Resident>,
    pub profiles: Vec<Profile>,
    pub goals: Vec<Goal>,
    pub duration_seconds: f64,
}

pub fn goals(
    idle: &[Resident],
    startup: &[ServiceStartup],
    sale: &FlashSale,
    payments: &Payments,
) -> Vec<Goal> {
    let services: Vec<&Resident> = idle.iter().filter(|r| r.service).collect();
    let heaviest = services
        .iter()
        .max_by(|a, b| a.rss_mib.total_cmp(&b.rss_mib));
    let slowest = startup
        .iter()
        .max_by(|a, b| a.max_ready_ms.total_cmp(&b.max_ready_ms));
    let reservation = &sale.reservation.latency;
    let completion = &payments.completion.latency;
    vec![
        Goal {
            goal: "Flash sale: 0 oversold tickets, every time".into(),
            measured: format!(
                "{} oversold: {} live orders for {} tickets in the database ({} cancelled, {} tickets with two), {} users saw 201, no ticket twice ({} second 201s); {} 201s lost to timeouts",
                sale.oversold + sale.tickets_with_several_live_orders,
                sale.live_orders_in_database,
                sale.tickets,
                sale.cancelled_orders_in_database,
                sale.tickets_with_several_live_orders,
                sale.sold,
                sale.oversold,
                sale.sold_unseen_by_client
            ),
            met: sale.passed,
        },
        Goal {
            goal: "Money: every paid order keeps exactly its one charge, nothing waits for Stripe"
                .into(),
            measured: format!(
                "{} orders paid, {} complete in the database, {} money violations",
                payments.paid,
                payments.completed_in_database,
                payments.money_violations.len()
            ),
            met: payments.money_violations.is_empty()
                && payments.completed_in_database == payments.orders as u64,
        },
        Goal {
            goal: "Each Rust service idle under 20 MB resident".into(),
            measured: heaviest.map_or_else(
                || "no services".into(),
                |r| {
                    format!(
                        "highest: {} {:.1} MiB ({:.1} MB)",
                        r.name,
                        r.rss_mib,
                        r.rss_mib * 1.048_576
                    )
                },
            ),
            met: !services.is_empty() && services.iter().all(|r| r.rss_mib < IDLE_GOAL_MIB),
        },
        Goal {
            goal: "Each Rust service ready in under 200 ms after start".into(),
            measured: slowest.map_or_else(
                || "not measured".into(),
                |s| {
                    format!(
                        "slowest: {} {:.0} ms (worst of {} starts)",
                        s.service,
                        s.max_ready_ms,
                        s.runs.len()
                    )
                },
            ),
            met: !startup.is_empty() && startup.iter().all(|s| s.max_ready_ms < READY_GOAL_MS),
        },
        Goal {
            goal: "Event propagation p99 under 100 ms at the flash-sale load".into(),
            measured: format!(
                "order → ticket reserved p99 {:.1} ms; payment → order complete p99 {:.1} ms",
                reservation.p99_ms, completion.p99_ms
            ),
            met: sale.reservation.observed == sale.reservation.expected
                && payments.completion.observed == payments.completion.expected
                && reservation.p99_ms < PROPAGATION_GOAL_MS
                && completion.p99_ms < PROPAGATION_GOAL_MS,
        },
    ]
}

pub fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(dir.join("results.json"), json).context("writing results.json")?;
    for (name, svg) in charts(results) {
        std::fs::write(dir.join(name), svg).with_context(|| format!("writing {name}"))?;
    }
    std::fs::write(dir.join("report.md"), markdown(results)).context("writing report.md")?;
    std::fs::write(dir.join("summary.md"), summary(results)).context("writing summary.md")?;
    Ok(())
}

fn yes(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

fn machine_line(m: &Machine) -> String {
    format!(
        "{}, {} logical CPUs, {:.0} GiB RAM, Linux {}; load average {} at the start; commit {}{}",
        m.cpu_model,
        m.logical_cpus,
        m.memory_gib,
        m.kernel,
        m.load_average_at_start,
        m.git_commit,
        if m.git_dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    )
}

fn top_level(browse: &Browse, endpoint: Endpoint) -> Option<&crate::browse::BrowseLevel> {
    browse
        .levels
        .iter()
        .filter(|l| l.endpoint == endpoint)
        .max_by_key(|l| l.result.concurrency)
}

fn best_throughput(browse: &Browse, endpoint: Endpoint) -> Option<&crate::browse::BrowseLevel> {
    browse
        .levels
        .iter()
        .filter(|l| l.endpoint == endpoint)
        .max_by(|a, b| a.result.throughput_rps.total_cmp(&b.result.throughput_rps))
}

/// The table for the README: goals, then the headline figures.
pub fn summary(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {} on {}. `scripts/bench.sh`, {:.0} s in all.\n",
        r.machine.started_at,
        machine_line(&r.machine),
        r.duration_seconds
    );
    let data: Vec<String> = r
        .database_at_start
        .iter()
        .filter(|c| c.documents > 0)
        .map(|c| format!("{}.{} {}", c.database, c.collection, c.documents))
        .collect();
    let data = if data.is_empty() {
        "none (empty databases)".to_owned()
    } else {
        data.join(", ")
    };
    let _ = writeln!(
        md,
        "Documents in the app's databases at the start (FerretDB decodes whole collections for every query not by `_id`, so the figures drift as they grow): {data}.\n"
    );
    let _ = writeln!(md, "| Goal | Measured | |\n|---|---|---|");
    for goal in &r.goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            goal.goal,
            goal.measured,
            yes(goal.met)
        );
    }
    let _ = writeln!(md, "\n| Workload | Figure |\n|---|---|");
    for endpoint in [Endpoint::List, Endpoint::Show] {
        if let Some(best) = best_throughput(&r.browse, endpoint) {
            let _ = writeln!(
                md,
                "| Browse `{}` | best {:.0} req/s at {} concurrent (p50 {:.1} ms, p99 {:.1} ms); {} errors over all levels |",
                endpoint.label(),
                best.result.throughput_rps,
                best.result.concurrency,
                best.result.latency.p50_ms,
                best.result.latency.p99_ms,
                r.browse
                    .levels
                    .iter()
                    .filter(|l| l.endpoint == endpoint)
                    .map(|l| l.result.errors)
                    .sum::<u64>()
            );
        }
    }
    let s = &r.flash_sale;
    let _ = writeln!(
        md,
        "| Flash sale | {} users, {} tickets: {} sold, {} refused, {} errors; sold out in {:.2} s; `POST /api/orders` p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms |",
        s.users,
        s.tickets,
        s.sold,
        s.refused,
        s.errors,
        s.sold_out_ms / 1000.0,
        s.order_latency.p50_ms,
        s.order_latency.p95_ms,
        s.order_latency.p99_ms
    );
    let _ = writeln!(
        md,
        "| Order → ticket reserved | from the 201: p50 {:.1} ms, p99 {:.1} ms ({} of {} seen, {} before the 201 arrived); from sending the POST: p50 {:.0} ms, p99 {:.0} ms |",
        s.reservation.latency.p50_ms,
        s.reservation.latency.p99_ms,
        s.reservation.observed,
        s.reservation.expected,
        s.reservation.before_the_201,
        s.reservation.from_request_sent.p50_ms,
        s.reservation.from_request_sent.p99_ms
    );
    let p = &r.payments;
    let _ = writeln!(
        md,
        "| Payment → order complete | p50 {:.1} ms, p99 {:.1} ms (polled every {:.0} ms); `POST /api/payments` p50 {:.0} ms, p99 {:.0} ms |",
        p.completion.latency.p50_ms,
        p.completion.latency.p99_ms,
        p.poll_every_ms,
        p.payment_latency.p50_ms,
        p.payment_latency.p99_ms
    );
    let a = &r.auth;
    let _ = writeln!(
        md,
        "| Auth (argon2id m={} KiB, t={}, p={}) | signup {:.1}/s, signin {:.1}/s at {} concurrent; one hash {:.0} ms, ceiling {:.1} hashes/s on {} CPUs |",
        a.argon2.memory_kib,
        a.argon2.iterations,
        a.argon2.lanes,
        a.signup.throughput_per_second,
        a.signin.throughput_per_second,
        a.signup.concurrency,
        a.argon2.single_hash_ms,
        a.argon2.parallel_hashes_per_second,
        a.argon2.threads
    );
    let _ = writeln!(
        md,
        "\n| Service | Idle RSS | Peak RSS (run) | Ready after start (median / worst) |\n|---|---:|---:|---:|"
    );
    for idle in r.idle.iter().filter(|i| i.service) {
        let peak = r
            .peak_since_start
            .iter()
            .find(|p| p.name == idle.name)
            .map_or(0.0, |p| p.rss_mib);
        let ready = r.startup.iter().find(|s| s.service == idle.name);
        let _ = writeln!(
            md,
            "| {} | {:.1} MiB | {:.1} MiB | {} |",
            idle.name,
            idle.rss_mib,
            peak,
            ready.map_or_else(
                || "–".to_owned(),
                |s| format!("{:.0} / {:.0} ms", s.median_ready_ms, s.max_ready_ms)
            )
        );
    }
    md
}

fn latency_cells(l: &LatencySummary) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:.1}",
        l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
    )
}

fn cpu_line(usage: &PhaseUsage) -> String {
    let mut by_cpu: Vec<_> = usage
        .processes
        .iter()
        .filter(|p| p.cpu_percent >= 1.0)
        .collect();
    by_cpu.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    let mut parts: Vec<String> = by_cpu
        .iter()
        .take(5)
        .map(|p| format!("{} {:.0}%", p.name, p.cpu_percent))
        .collect();
    parts.push(format!(
        "other programs {:.0}%",
        usage.other_programs_cpu_percent
    ));
    parts.join(", ")
}

fn propagation_row(p: &Propagation) -> String {
    format!(
        "| {} | {}/{} | {} | {} | {:.1} / {:.1} |",
        p.what,
        p.observed,
        p.expected,
        latency_cells(&p.latency),
        p.before_the_201,
        p.from_request_sent.p50_ms,
        p.from_request_sent.p99_ms
    )
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark of the local stack, run {}\n", r.run);
    let _ = writeln!(md, "Machine: {}.\n", machine_line(&r.machine));
    let _ = writeln!(
        md,
        "Everything ran on this one machine: the services (release builds), FerretDB (SQLite), NATS, Redis, stripe-mock, nginx, and this load generator, which talks to the app through nginx on loopback only. The machine may be shared: every phase below says how much CPU other programs used meanwhile. Run time {:.0} s.\n",
        r.duration_seconds
    );
    let _ = writeln!(md, "## Goals\n\n| Goal | Measured | |\n|---|---|---|");
    for goal in &r.goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            goal.goal,
            goal.measured,
            yes(goal.met)
        );
    }

    // 1. Browse
    let _ = writeln!(
        md,
        "\n## 1. Browse\n\nClosed loop: each of N workers sends a request, waits for the whole answer, sends the next, for {:.0} s per level (after a 0.3 s unrecorded warm-up). `GET /api/tickets` returned {} tickets ({} bytes); `GET /api/tickets/{{id}}` walks over the {} sale tickets.\n",
        r.browse.seconds_per_level, r.browse.list_length, r.browse.list_bytes, r.seed.tickets
    );
    let _ = writeln!(
        md,
        "| Endpoint | Concurrency | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | CPU (100% = one core) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for level in &r.browse.levels {
        let _ = writeln!(
            md,
            "| `{}` | {} | {:.0} | {} | {} | {} |",
            level.endpoint.label(),
            level.result.concurrency,
            level.result.throughput_rps,
            latency_cells(&level.result.latency),
            level.result.errors,
            cpu_line(&level.usage)
        );
    }
    let _ = writeln!(
        md,
        "\n![throughput](browse-throughput.svg)\n\n![latency](browse-latency.svg)\n"
    );

    // 2. Flash sale
    let s = &r.flash_sale;
    let _ = writeln!(
        md,
        "## 2. Flash sale\n\n{} signed-in users (signed up in the auth phase) race for {} tickets: user *u* asks for ticket *u* mod {}, so every ticket has {} contenders; the users start in a shuffled order, at most {} requests in flight (nginx has 1024 worker connections, two per proxied request).\n",
        s.users, s.tickets, s.tickets, s.contenders_per_ticket, s.in_flight
    );
    let _ = writeln!(md, "| Figure | Value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "Result",
            if s.passed {
                "passed: exactly one order per ticket".into()
            } else {
                "**FAILED**".into()
            },
        ),
        ("201 Created", s.sold.to_string()),
        ("400 `Ticket is already reserved.`", s.refused.to_string()),
        (
            "Other answers / transport errors",
            format!("{} {}", s.errors, s.error_samples.join("; ")),
        ),
        (
            "Oversold (201s beyond the first per ticket)",
            s.oversold.to_string(),
        ),
        ("Unsold tickets", s.unsold.to_string()),
        (
            "Live orders in the orders database for these tickets",
            s.live_orders_in_database.to_string(),
        ),
        (
            "Orders of any status in the database for these tickets",
            s.orders_in_database.to_string(),
        ),
        (
            "… of which cancelled (an expired reservation would show here)",
            s.cancelled_orders_in_database.to_string(),
        ),
        (
            "Tickets held by more than one live order",
            s.tickets_with_several_live_orders.to_string(),
        ),
        (
            "Live orders whose 201 never reached the client (timed out)",
            s.sold_unseen_by_client.to_string(),
        ),
        (
            "Tickets whose GET shows the winning order",
            s.tickets_showing_their_order.to_string(),
        ),
        ("Sold out after", format!("{:.0} ms", s.sold_out_ms)),
        (
            "All {users} answered after",
            format!(
                "{:.0} ms ({:.0} answers/s)",
                s.all_answered_ms, s.answers_per_second
            ),
        ),
        (
            "`POST /api/orders` latency p50 / p95 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms",
                s.order_latency.p50_ms,
                s.order_latency.p95_ms,
                s.order_latency.p99_ms,
                s.order_latency.max_ms
            ),
        ),
        (
            "… of the 201s only",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms",
                s.winning_order_latency.p50_ms,
                s.winning_order_latency.p95_ms,
                s.winning_order_latency.p99_ms,
                s.winning_order_latency.max_ms
            ),
        ),
        ("CPU during the sale", cpu_line(&s.usage)),
    ];
    for (name, value) in rows {
        let _ = writeln!(
            md,
            "| {} | {} |",
            name.replace("{users}", &s.users.to_string()),
            value
        );
    }
    let _ = writeln!(md, "\n![sold over time](flash-sale.svg)\n");

    // 3. Propagation
    let p = &r.payments;
    let _ = writeln!(
        md,
        "## 3. Event propagation\n\nReservation: from the client receiving the 201 of `POST /api/orders` to a plain NATS subscription receiving the tickets service's `ticket:updated` with that order id; the tickets service publishes it right after committing the reservation, so from then on `GET /api/tickets/{{id}}` shows the `orderId` (checked for every ticket afterwards). Completion: the {} winners pay at once; from the 201 of `POST /api/payments` to `GET /api/orders/{{id}}` answering `complete`, polled every {:.0} ms (the orders service publishes no event for it), so the figure includes up to one poll interval plus one request. The change is committed before its 201 leaves the service, so timing from the 201 is a lower bound (an event can even arrive before the 201 does: counted as 0 ms), and timing from sending the request an upper bound.\n",
        p.orders, p.poll_every_ms
    );
    let _ = writeln!(
        md,
        "| Path | seen | p50 ms | p95 ms | p99 ms | max ms | seen before the 201 | from sending the request: p50 / p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(md, "{}", propagation_row(&s.reservation));
    let _ = writeln!(md, "{}", propagation_row(&p.completion));
    let _ = writeln!(
        md,
        "\nPayments: {} of {} paid, {} errors{}; `POST /api/payments` p50 {:.1} ms, p99 {:.1} ms; {} answers 404 retried (order not yet in the payments service), {} answers 409 or \"in progress\" retried; {} orders complete in the database; {} polls. CPU: {}.\n",
        p.paid,
        p.orders,
        p.errors,
        if p.error_samples.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.error_samples.join("; "))
        },
        p.payment_latency.p50_ms,
        p.payment_latency.p99_ms,
        p.retried_not_found,
        p.retried_conflict,
        p.completed_in_database,
        p.polls,
        cpu_line(&p.usage)
    );
    let _ = writeln!(
        md,
        "Seeding: {} tickets created in {:.1} ms p50 / {:.1} ms p99; all of them in the orders service's replica {:.0} ms after the last 201.\n\n![propagation](propagation.svg)\n",
        r.seed.tickets,
        r.seed.create_ticket_latency.p50_ms,
        r.seed.create_ticket_latency.p99_ms,
        r.seed.replica_ms
    );

    // 4. Footprint
    let _ = writeln!(
        md,
        "## 4. Footprint\n\nResident memory (VmRSS) of each process: idle = the running stack just after `scripts/app.sh up`, before any load; peak = the kernel's high-water mark (VmHWM) since the process started, and the highest 100 ms sample; after the run = once the load is over. Startup: a replica started from the same binary and environment file as the running service (`env -i bash -c 'source <env> && exec <binary>'`, like `scripts/app.sh`) on a spare port, timed from spawn to the first `GET /readyz` = 200 (polled every 2 ms), {} times per service; it connects to FerretDB and NATS, ensures its indexes and consumers, then is stopped with SIGTERM.\n",
        r.settings.startup_runs
    );
    let _ = writeln!(
        md,
        "| Process | Idle RSS MiB | Fresh replica RSS MiB | Peak RSS MiB (VmHWM) | Peak sampled MiB | RSS after the run MiB | Ready ms (median / worst) | Stop ms (median) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for idle in &r.idle {
        let hwm = r
            .peak_since_start
            .iter()
            .find(|p| p.name == idle.name)
            .map_or(0.0, |p| p.rss_mib);
        let sampled = r
            .peak_sampled
            .iter()
            .find(|p| p.name == idle.name)
            .map_or(0.0, |p| p.rss_mib);
        let after = r
            .after_the_run
            .iter()
            .find(|p| p.name == idle.name)
            .map_or(0.0, |p| p.rss_mib);
        let startup = r.startup.iter().find(|s| s.service == idle.name);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            idle.name,
            idle.rss_mib,
            startup.map_or_else(
                || "–".into(),
                |s| format!("{:.1}", s.median_rss_settled_mib)
            ),
            hwm,
            sampled,
            after,
            startup.map_or_else(
                || "–".into(),
                |s| format!("{:.0} / {:.0}", s.median_ready_ms, s.max_ready_ms)
            ),
            startup.map_or_else(
                || "–".into(),
                |s| format!(
                    "{:.0}",
                    crate::startup::median(&s.runs.iter().map(|r| r.stop_ms).collect::<Vec<_>>())
                )
            ),
        );
    }
    let _ = writeln!(md, "\n![memory](memory.svg)\n\n![startup](startup.svg)\n");

    // 5. Auth
    let a = &r.auth;
    let _ = writeln!(
        md,
        "## 5. Auth\n\nPasswords are hashed with argon2's defaults (`auth/src/password.rs`): {} v{:#x}, m = {} KiB, t = {}, p = {}. In this process, one hash takes {:.1} ms on one thread; {} threads manage {:.1} hashes/s — the ceiling of signups and signins per second on this machine. Every signup hashes once; every signin verifies once (the same cost).\n",
        a.argon2.algorithm,
        a.argon2.version,
        a.argon2.memory_kib,
        a.argon2.iterations,
        a.argon2.lanes,
        a.argon2.single_hash_ms,
        a.argon2.threads,
        a.argon2.parallel_hashes_per_second
    );
    let _ = writeln!(
        md,
        "| Operation | Users | Concurrency | per second | p50 ms | p95 ms | p99 ms | max ms | failures | auth peak RSS MiB | CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for run in [&a.signup, &a.signin] {
        let auth_peak = run
            .usage
            .processes
            .iter()
            .find(|p| p.name == "auth")
            .map_or(0.0, |p| p.peak_rss_mib);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {:.1} | {} |",
            run.operation,
            run.users,
            run.concurrency,
            run.throughput_per_second,
            latency_cells(&run.latency),
            run.failures,
            auth_peak,
            cpu_line(&run.usage)
        );
    }

    // Database sizes
    let _ = writeln!(
        md,
        "\n## Database sizes\n\nDocuments per collection of the app's databases, before and after the run (estimated counts). FerretDB's SQLite backend turns only a filter of exactly `{{_id: …}}` into an SQL `WHERE`; any other filter (by email, by reservation, `orderId: null`, the outbox relays' `published: false`) reads and decodes the whole collection, so these sizes weigh on the figures, and every run adds to them.\n\n| Database | Collection | Before | After |\n|---|---|---:|---:|"
    );
    for before in &r.database_at_start {
        let after = r
            .database_at_end
            .iter()
            .find(|a| a.database == before.database && a.collection == before.collection)
            .map_or(0, |a| a.documents);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            before.database, before.collection, before.documents, after
        );
    }

    // CPU by process
    let _ = writeln!(
        md,
        "\n## Where the CPU went\n\nCPU time of each process during each phase, over the phase's wall time (100% = one core; the machine has {}). \"other programs\" is everything else on the machine meanwhile.\n",
        r.machine.logical_cpus
    );
    let phases = cpu_phases(r);
    if let Some(first) = phases.first() {
        let names: Vec<&str> = first.processes.iter().map(|p| p.name.as_str()).collect();
        let _ = writeln!(
            md,
            "| Phase | s | {} | other programs |\n|---|---:|{}---:|",
            names.join(" | "),
            "---:|".repeat(names.len())
        );
        for phase in &phases {
            let cells: Vec<String> = phase
                .processes
                .iter()
                .map(|p| format!("{:.0}", p.cpu_percent))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {:.0} |",
                phase.phase,
                phase.wall_seconds,
                cells.join(" | "),
                phase.other_programs_cpu_percent
            );
        }
    }
    let _ = writeln!(md, "\n![cpu](cpu.svg)\n");

    // Profiles
    if !r.profiles.is_empty() {
        let _ = writeln!(
            md,
            "## Profiles\n\n`perf record -e cpu-clock -F 499 -g -a` (the whole machine) during the phase, then per process `perf report --pid <pid> --no-children --sort dso,sym`: where each process spent its own CPU time (self time, share of that process's samples), busiest first. Rust release binaries have no frame pointers, so only self time is meaningful for them. The perf data files are in `profile/`.\n"
        );
        for profile in &r.profiles {
            let _ = writeln!(md, "### {}\n", profile.phase);
            for process in profile.processes.iter().filter(|p| p.samples > 0) {
                let objects: Vec<String> = process
                    .by_object
                    .iter()
                    .take(5)
                    .map(|s| format!("{} {:.0}%", s.what, s.percent))
                    .collect();
                let _ = writeln!(
                    md,
                    "**{}** ({} samples): {}\n",
                    process.name,
                    process.samples,
                    objects.join(", ")
                );
                for symbol in &process.top_symbols {
                    let _ = writeln!(md, "- {:.1}% `{}`", symbol.percent, symbol.what);
                }
                let _ = writeln!(md);
            }
        }
    }
    md
}

/// The phases worth comparing: each browse endpoint at its top concurrency, auth, sale, payments.
fn cpu_phases(r: &Results) -> Vec<PhaseUsage> {
    let mut phases = Vec::new();
    for endpoint in [Endpoint::List, Endpoint::Show] {
        if let Some(level) = top_level(&r.browse, endpoint) {
            phases.push(level.usage.clone());
        }
    }
    phases.insert(0, r.idle_usage.clone());
    phases.push(r.auth.signup.usage.clone());
    phases.push(r.auth.signin.usage.clone());
    phases.push(r.flash_sale.usage.clone());
    phases.push(r.payments.usage.clone());
    phases
}

/// Reads one percentile out of a summary.
type Quantile = fn(&LatencySummary) -> f64;

fn charts(r: &Results) -> Vec<(&'static str, String)> {
    let mut charts = Vec::new();
    let levels: Vec<usize> = {
        let mut l: Vec<usize> = r
            .browse
            .levels
            .iter()
            .map(|l| l.result.concurrency)
            .collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let x_of = |c: usize| levels.iter().position(|&l| l == c).unwrap_or(0) as f64;
    let x_ticks: Vec<(f64, String)> = levels
        .iter()
        .enumerate()
        .map(|(i, c)| (i as f64, c.to_string()))
        .collect();
    let series_of = |endpoint: Endpoint,
                     value: &dyn Fn(&crate::browse::BrowseLevel) -> f64,
                     name: String| Series {
        name,
        points: r
            .browse
            .levels
            .iter()
            .filter(|l| l.endpoint == endpoint)
            .map(|l| (x_of(l.result.concurrency), value(l)))
            .collect(),
    };
    charts.push((
        "browse-throughput.svg",
        svg::line_chart(&LineChart {
            title: "Browse: throughput by concurrency",
            x_label: "concurrent clients",
            y_label: "requests per second",
            series: [Endpoint::List, Endpoint::Show]
                .into_iter()
                .map(|e| series_of(e, &|l| l.result.throughput_rps, e.label().to_owned()))
                .collect(),
            x_ticks: x_ticks.clone(),
            reference: None,
        }),
    ));
    let mut latency_series = Vec::new();
    for endpoint in [Endpoint::List, Endpoint::Show] {
        latency_series.push(series_of(
            endpoint,
            &|l| l.result.latency.p50_ms,
            format!("{} p50", endpoint.label()),
        ));
        latency_series.push(series_of(
            endpoint,
            &|l| l.result.latency.p99_ms,
            format!("{} p99", endpoint.label()),
        ));
    }
    charts.push((
        "browse-latency.svg",
        svg::line_chart(&LineChart {
            title: "Browse: latency by concurrency",
            x_label: "concurrent clients",
            y_label: "milliseconds",
            series: latency_series,
            x_ticks,
            reference: None,
        }),
    ));
    let mut timeline = vec![(0.0, 0.0)];
    timeline.extend(
        r.flash_sale
            .sold_timeline
            .iter()
            .map(|(ms, n)| (*ms, *n as f64)),
    );
    charts.push((
        "flash-sale.svg",
        svg::line_chart(&LineChart {
            title: "Flash sale: tickets sold over time",
            x_label: "milliseconds since the first request",
            y_label: "orders created (201)",
            series: vec![Series {
                name: format!(
                    "{} users, {} tickets",
                    r.flash_sale.users, r.flash_sale.tickets
                ),
                points: timeline,
            }],
            x_ticks: Vec::new(),
            reference: Some((r.flash_sale.tickets as f64, "all tickets".into())),
        }),
    ));
    let quantiles: [(&str, Quantile); 6] = [
        ("p50", |l| l.p50_ms),
        ("p90", |l| l.p90_ms),
        ("p95", |l| l.p95_ms),
        ("p99", |l| l.p99_ms),
        ("p99.9", |l| l.p999_ms),
        ("max", |l| l.max_ms),
    ];
    let curve = |name: &str, l: &LatencySummary| Series {
        name: name.to_owned(),
        points: quantiles
            .iter()
            .enumerate()
            .map(|(i, (_, f))| (i as f64, f(l)))
            .collect(),
    };
    charts.push((
        "propagation.svg",
        svg::line_chart(&LineChart {
            title: "Event propagation latency by percentile",
            x_label: "percentile",
            y_label: "milliseconds",
            series: vec![
                curve("order → ticket reserved", &r.flash_sale.reservation.latency),
                curve("payment → order complete", &r.payments.completion.latency),
            ],
            x_ticks: quantiles
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (i as f64, (*n).to_owned()))
                .collect(),
            reference: Some((PROPAGATION_GOAL_MS, "goal: p99 < 100 ms".into())),
        }),
    ));
    let services: Vec<&Resident> = r.idle.iter().filter(|i| i.service).collect();
    let peak_of = |name: &str| {
        r.peak_since_start
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.rss_mib)
    };
    charts.push((
        "memory.svg",
        svg::bar_chart(&BarChart {
            title: "Resident memory of each service",
            y_label: "MiB",
            categories: services.iter().map(|s| s.name.clone()).collect(),
            series: vec![
                ("idle".into(), services.iter().map(|s| s.rss_mib).collect()),
                (
                    "peak (VmHWM)".into(),
                    services.iter().map(|s| peak_of(&s.name)).collect(),
                ),
            ],
            reference: Some((IDLE_GOAL_MIB, "idle goal: 20 MB".into())),
        }),
    ));
    charts.push((
        "startup.svg",
        svg::bar_chart(&BarChart {
            title: "Start to ready (GET /readyz = 200)",
            y_label: "milliseconds",
            categories: r.startup.iter().map(|s| s.service.clone()).collect(),
            series: vec![
                (
                    "median".into(),
                    r.startup.iter().map(|s| s.median_ready_ms).collect(),
                ),
                (
                    "worst".into(),
                    r.startup.iter().map(|s| s.max_ready_ms).collect(),
                ),
            ],
            reference: Some((READY_GOAL_MS, "goal: 200 ms".into())),
        }),
    ));
    let phases = cpu_phases(r);
    let names: Vec<String> = phases
        .first()
        .map(|p| p.processes.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    charts.push((
        "cpu.svg",
        svg::bar_chart(&BarChart {
            title: "CPU by process and phase (100% = one core)",
            y_label: "% of one core",
            categories: names.clone(),
            series: phases
                .iter()
                .map(|phase| {
                    (
                        phase.phase.clone(),
                        names
                            .iter()
                            .map(|n| {
                                phase
                                    .processes
                                    .iter()
                                    .find(|p| &p.name == n)
                                    .map_or(0.0, |p| p.cpu_percent)
                            })
                            .collect(),
                    )
                })
                .collect(),
            reference: None,
        }),
    ));
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Argon2Figures, AuthRun};
    use crate::browse::BrowseLevel;
    use crate::load::LoadResult;
    use crate::monitor::ProcessUsage;
    use crate::profile::{ProcessProfile, Share};
    use crate::startup::StartupRun;

    fn resident(name: &str, service: bool, rss_mib: f64) -> Resident {
        Resident {
            name: name.into(),
            service,
            rss_mib,
        }
    }

    fn usage(phase: &str) -> PhaseUsage {
        PhaseUsage {
            phase: phase.into(),
            wall_seconds: 2.0,
            processes: vec![
                ProcessUsage {
                    name: "orders".into(),
                    service: true,
                    cpu_seconds: 0.5,
                    cpu_percent: 25.0,
                    peak_rss_mib: 14.0,
                },
                ProcessUsage {
                    name: "ferretdb".into(),
                    service: false,
                    cpu_seconds: 3.0,
                    cpu_percent: 150.0,
                    peak_rss_mib: 900.0,
                },
            ],
            machine_cpu_percent: 180.0,
            other_programs_cpu_percent: 5.0,
        }
    }

    fn latency(p99_ms: f64) -> LatencySummary {
        LatencySummary {
            count: 100,
            mean_ms: p99_ms / 3.0,
            p50_ms: p99_ms / 4.0,
            p90_ms: p99_ms / 2.0,
            p95_ms: p99_ms / 1.5,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms * 1.2,
        }
    }

    fn level(endpoint: Endpoint, concurrency: usize) -> BrowseLevel {
        BrowseLevel {
            endpoint,
            result: LoadResult {
                concurrency,
                seconds: 4.0,
                requests: 400,
                throughput_rps: 100.0 * concurrency as f64,
                latency: latency(10.0),
                ..LoadResult::default()
            },
            usage: usage(&format!("browse {} c={concurrency}", endpoint.label())),
        }
    }

    fn fixture() -> Results {
        let startup = |service: &str, ready: f64| ServiceStartup {
            service: service.into(),
            runs: vec![StartupRun {
                ready_ms: ready,
                rss_at_ready_mib: 9.0,
                rss_settled_mib: 9.5,
                stop_ms: 4.0,
            }],
            median_ready_ms: ready,
            max_ready_ms: ready,
            median_rss_settled_mib: 9.5,
        };
        let sale = FlashSale {
            users: 1000,
            tickets: 100,
            contenders_per_ticket: 10,
            in_flight: 256,
            sold: 100,
            refused: 900,
            oversold: 0,
            live_orders_in_database: 100,
            orders_in_database: 100,
            tickets_showing_their_order: 100,
            sold_timeline: vec![(10.0, 1), (20.0, 2)],
            order_latency: latency(300.0),
            reservation: Propagation {
                expected: 100,
                observed: 100,
                latency: latency(40.0),
                ..Propagation::default()
            },
            usage: usage("flash sale"),
            passed: true,
            ..FlashSale::default()
        };
        let payments = Payments {
            orders: 100,
            paid: 100,
            completion: Propagation {
                expected: 100,
                observed: 100,
                latency: latency(60.0),
                ..Propagation::default()
            },
            completed_in_database: 100,
            usage: usage("payments"),
            ..Payments::default()
        };
        let idle = vec![
            resident("auth", true, 10.0),
            resident("orders", true, 14.0),
            resident("ferretdb", false, 900.0),
        ];
        let startup = vec![startup("auth", 50.0), startup("orders", 30.0)];
        let goals = goals(&idle, &startup, &sale, &payments);
        Results {
            run: "test".into(),
            idle,
            idle_usage: usage("idle"),
            database_at_start: vec![CollectionSize {
                database: "orders".into(),
                collection: "orders".into(),
                documents: 10,
            }],
            startup,
            browse: Browse {
                list_length: 100,
                list_bytes: 14000,
                seconds_per_level: 4.0,
                levels: vec![
                    level(Endpoint::List, 1),
                    level(Endpoint::List, 16),
                    level(Endpoint::Show, 1),
                    level(Endpoint::Show, 16),
                ],
            },
            auth: Auth {
                signup: AuthRun {
                    operation: "signup".into(),
                    usage: usage("auth signup"),
                    ..AuthRun::default()
                },
                signin: AuthRun {
                    operation: "signin".into(),
                    usage: usage("auth signin"),
                    ..AuthRun::default()
                },
                ..Auth::default()
            },
            flash_sale: sale,
            payments,
            peak_since_start: vec![resident("auth", true, 300.0)],
            profiles: vec![Profile {
                phase: "flash-sale".into(),
                processes: vec![ProcessProfile {
                    name: "ferretdb".into(),
                    samples: 10,
                    by_object: vec![Share {
                        percent: 90.0,
                        what: "ferretdb".into(),
                    }],
                    top_symbols: vec![Share {
                        percent: 12.0,
                        what: "ferretdb [.] encoding/json.(*decodeState).object".into(),
                    }],
                    data_file: "x".into(),
                }],
            }],
            goals,
            ..Results::default()
        }
    }

    /// A run with every figure set, including the optional ones (error samples, a service without
    /// startup figures, a process without samples, a second profile), so that every section of the
    /// report has content for the golden files to pin down.
    fn full_fixture() -> Results {
        let mut r = fixture();
        r.run = "20261202T094717Z".into();
        r.machine = Machine {
            cpu_model: "Example CPU @ 3.00GHz".into(),
            logical_cpus: 2,
            memory_gib: 7.6,
            kernel: "6.1.0".into(),
            load_average_at_start: "0.52 0.40 0.31".into(),
            git_commit: "5ad866f".into(),
            git_dirty: true,
            started_at: "2026-12-02T09:47:17Z".into(),
        };
        r.settings = Settings {
            base_url: "http://127.0.0.1:8080".into(),
            users: 1000,
            tickets: 100,
            signin_users: 200,
            auth_concurrency: 8,
            sale_in_flight: 256,
            browse_levels: vec![1, 16],
            browse_seconds: 4.0,
            startup_runs: 5,
            profile: true,
        };
        r.seed = SeedFigures {
            tickets: 100,
            create_ticket_latency: latency(24.0),
            replica_ms: 37.5,
        };
        // A service the startup phase did not measure: its cells read "–".
        r.idle.push(resident("tickets", true, 12.25));
        r.startup[0].runs.push(StartupRun {
            ready_ms: 44.0,
            rss_at_ready_mib: 8.5,
            rss_settled_mib: 9.25,
            stop_ms: 7.0,
        });
        r.after_the_run = vec![
            resident("auth", true, 16.5),
            resident("orders", true, 18.0),
            resident("ferretdb", false, 1200.0),
        ];
        r.peak_sampled = vec![
            resident("auth", true, 280.0),
            resident("orders", true, 22.0),
            resident("tickets", true, 15.5),
        ];
        r.peak_since_start.push(resident("orders", true, 24.0));
        r.peak_since_start.push(resident("ferretdb", false, 1500.0));
        r.database_at_start.push(CollectionSize {
            database: "tickets".into(),
            collection: "outbox".into(),
            documents: 0,
        });
        r.database_at_end = vec![CollectionSize {
            database: "orders".into(),
            collection: "orders".into(),
            documents: 110,
        }];
        let s = &mut r.flash_sale;
        s.errors = 2;
        s.error_samples = vec!["Ok((500, \"boom\"))".into(), "Err(\"timed out\")".into()];
        s.sold_unseen_by_client = 1;
        s.sold_out_ms = 1234.5;
        s.all_answered_ms = 2345.5;
        s.answers_per_second = 426.3;
        s.winning_order_latency = latency(200.0);
        s.reservation.what = "POST /api/orders 201 → ticket:updated".into();
        s.reservation.before_the_201 = 3;
        s.reservation.from_request_sent = latency(90.0);
        let p = &mut r.payments;
        p.errors = 1;
        p.error_samples = vec!["POST /api/payments: 500 {}".into()];
        p.retried_not_found = 4;
        p.retried_conflict = 2;
        p.payment_latency = latency(80.0);
        p.completion.what = "POST /api/payments 201 → complete".into();
        p.completion.from_request_sent = latency(150.0);
        p.poll_every_ms = 10.0;
        p.polls = 321;
        let a = &mut r.auth;
        a.argon2 = Argon2Figures {
            algorithm: "argon2id".into(),
            version: 19,
            memory_kib: 19456,
            iterations: 2,
            lanes: 1,
            single_hash_ms: 23.4,
            parallel_hashes_per_second: 81.2,
            threads: 2,
        };
        for (run, users, per_second) in [(&mut a.signup, 1000, 40.5), (&mut a.signin, 200, 41.25)] {
            run.users = users;
            run.concurrency = 8;
            run.seconds = 24.0;
            run.throughput_per_second = per_second;
            run.failures = 1;
            run.latency = latency(250.0);
        }
        r.profiles[0].processes.push(ProcessProfile {
            name: "nats".into(),
            samples: 0,
            by_object: Vec::new(),
            top_symbols: Vec::new(),
            data_file: "y".into(),
        });
        r.profiles.push(Profile {
            phase: "browse".into(),
            processes: vec![ProcessProfile {
                name: "tickets".into(),
                samples: 7,
                by_object: (0..7)
                    .map(|i| Share {
                        percent: 40.0 - f64::from(i) * 5.0,
                        what: format!("object{i}"),
                    })
                    .collect(),
                top_symbols: vec![
                    Share {
                        percent: 20.5,
                        what: "tickets [.] memcpy".into(),
                    },
                    Share {
                        percent: 3.25,
                        what: "[kernel] [k] clear_page".into(),
                    },
                ],
                data_file: "z".into(),
            }],
        });
        r.duration_seconds = 321.5;
        r
    }

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

    fn sorted_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Writes `results` as a run does and compares every file with `bench/tests/golden/<case>/`.
    /// `BENCH_BLESS=1 cargo test -p bench golden` rewrites the golden files (only when the report
    /// is meant to change).
    fn assert_same_as_golden(case: &str, results: &Results) {
        let written =
            std::env::temp_dir().join(format!("bench-golden-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&written);
        write(&written, results).unwrap();
        let golden = Path::new(GOLDEN).join(case);
        if std::env::var_os("BENCH_BLESS").is_some() {
            let _ = std::fs::remove_dir_all(&golden);
            std::fs::create_dir_all(&golden).unwrap();
            for name in sorted_names(&written) {
                std::fs::copy(written.join(&name), golden.join(&name)).unwrap();
            }
        }
        let names = sorted_names(&written);
        assert_eq!(names, sorted_names(&golden), "the files of {case}");
        for name in names {
            let actual = std::fs::read_to_string(written.join(&name)).unwrap();
            let expected = std::fs::read_to_string(golden.join(&name)).unwrap();
            // The first differing line, rather than two whole files.
            if let Some((n, (a, e))) = actual
                .lines()
                .zip(expected.lines())
                .enumerate()
                .find(|(_, (a, e))| a != e)
            {
                panic!(
                    "{case}/{name} line {}:\n  now:    {a}\n  golden: {e}",
                    n + 1
                );
            }
            assert!(
                actual == expected,
                "{case}/{name} differs in length or line endings"
            );
        }
        let _ = std::fs::remove_dir_all(&written);
    }

    #[test]
    fn a_full_report_is_byte_for_byte_the_golden_one() {
        assert_same_as_golden("full", &full_fixture());
    }

    #[test]
    fn an_empty_report_is_byte_for_byte_the_golden_one() {
        assert_same_as_golden("empty", &Results::default());
    }

    /// Every row of every Markdown table has as many cells as its header.
    fn assert_tables_are_rectangular(md: &str) {
        let mut header: Option<usize> = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                header = None;
                continue;
            }
            // Cells are separated by `|` outside backticks (code spans may hold `|`).
            let mut cells = 0;
            let mut code = false;
            for c in line.chars() {
                match c {
                    '`' => code = !code,
                    '|' if !code => cells += 1,
                    _ => {}
                }
            }
            match header {
                None => header = Some(cells),
                Some(expected) => assert_eq!(cells, expected, "row {line:?}"),
            }
        }
    }

    #[test]
    fn the_report_and_the_summary_have_rectangular_tables() {
        let results = fixture();
        let md = markdown(&results);
        assert_tables_are_rectangular(&md);
        assert_tables_are_rectangular(&summary(&results));
        assert!(md.contains("## 1. Browse") && md.contains("## Profiles"));
        assert!(md.contains("encoding/json"));
    }

    #[test]
    fn goals_are_met_only_within_their_limits() {
        let met = fixture().goals;
        assert!(met.iter().all(|g| g.met), "{met:?}");

        let mut results = fixture();
        // 19.5 MiB is more than 20 MB.
        results.idle[0].rss_mib = 19.5;
        results.startup[1].max_ready_ms = 200.0;
        results.flash_sale.passed = false;
        results.payments.completion.latency.p99_ms = 100.0;
        results.payments.money_violations =
            vec!["order o1 is cancelled and kept its charge".into()];
        let goals = goals(
            &results.idle,
            &results.startup,
            &results.flash_sale,
            &results.payments,
        );
        assert!(goals.iter().all(|g| !g.met), "{goals:?}");
    }

    #[test]
    fn every_chart_is_an_svg_document() {
        let charts = charts(&fixture());
        assert_eq!(charts.len(), 7);
        for (name, svg) in charts {
            assert!(name.ends_with(".svg"));
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{name}"
            );
        }
    }
}
