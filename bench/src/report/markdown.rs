//! `report.md`: every figure of the run, section by section, with the charts alongside.

use std::fmt::Write as _;

use super::{Results, cpu_phases, goals_table, machine_line, rss_of};
use crate::auth::AuthRun;
use crate::flash_sale::{FlashSale, Propagation};
use crate::load::LatencySummary;
use crate::monitor::PhaseUsage;
use crate::profile::ProcessProfile;
use crate::startup::ServiceStartup;

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    introduction(&mut md, r);
    browse(&mut md, r);
    super::history::section(&mut md, r);
    flash_sale(&mut md, &r.flash_sale);
    propagation(&mut md, r);
    footprint(&mut md, r);
    auth(&mut md, r);
    database_sizes(&mut md, r);
    cpu(&mut md, r);
    database_commands(&mut md, r);
    profiles(&mut md, r);
    md
}

fn latency_cells(l: &LatencySummary) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:.1}",
        l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
    )
}

/// p50 / p95 / p99 / max in one cell.
fn latency_line(l: &LatencySummary) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} ms",
        l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
    )
}

/// The processes that used the most CPU in a phase (at most `top`, each ≥ 1%), then the rest.
pub(super) fn cpu_line(usage: &PhaseUsage, top: usize) -> String {
    let mut by_cpu: Vec<_> = usage
        .processes
        .iter()
        .filter(|p| p.cpu_percent >= 1.0)
        .collect();
    by_cpu.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    let mut parts: Vec<String> = by_cpu
        .iter()
        .take(top)
        .map(|p| format!("{} {:.0}%", p.name, p.cpu_percent))
        .collect();
    parts.push(format!(
        "other programs {:.0}%",
        usage.other_programs_cpu_percent
    ));
    parts.join(", ")
}

fn introduction(md: &mut String, r: &Results) {
    let _ = writeln!(md, "# Benchmark of the local stack, run {}\n", r.run);
    let _ = writeln!(md, "Machine: {}.\n", machine_line(&r.machine));
    let _ = writeln!(
        md,
        "Everything ran on this one machine: the services ({} builds, {}), FerretDB ({}), NATS, Redis, stripe-mock, nginx, and this load generator, which talks to the app through nginx on loopback only. The machine may be shared: every phase below says how much CPU other programs used meanwhile. Run time {:.0} s.\n",
        r.settings.build,
        replicas_phrase(&r.settings.replicas),
        r.settings.store(),
        r.duration_seconds
    );
    let _ = writeln!(md, "## Goals\n");
    goals_table(md, &r.goals);
}

/// `2` -> "2 replicas of each, balanced by nginx"; a per-service spec is quoted as given.
fn replicas_phrase(spec: &str) -> String {
    match spec.trim().parse::<usize>() {
        Ok(1) => "one replica of each".into(),
        Ok(n) => format!("{n} replicas of each, balanced by nginx"),
        Err(_) => format!("replicas `{spec}`, balanced by nginx"),
    }
}

fn browse(md: &mut String, r: &Results) {
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
            cpu_line(&level.usage, 5)
        );
    }
    let _ = writeln!(
        md,
        "\n![throughput](browse-throughput.svg)\n\n![latency](browse-latency.svg)\n"
    );
}

fn flash_sale(md: &mut String, s: &FlashSale) {
    let _ = writeln!(
        md,
        "## 2. Flash sale\n\n{} signed-in users (signed up in the auth phase) race for {} tickets: user *u* asks for ticket *u* mod {}, so every ticket has {} contenders; the users start in a shuffled order, at most {} requests in flight (nginx has 1024 worker connections, two per proxied request).\n",
        s.users, s.tickets, s.tickets, s.contenders_per_ticket, s.in_flight
    );
    let _ = writeln!(md, "| Figure | Value |\n|---|---|");
    for (name, value) in flash_sale_rows(s) {
        let _ = writeln!(
            md,
            "| {} | {} |",
            name.replace("{users}", &s.users.to_string()),
            value
        );
    }
    let _ = writeln!(md, "\n![sold over time](flash-sale.svg)\n");
}

/// (figure, value); `{users}` in a figure's name stands for the number of users.
fn flash_sale_rows(s: &FlashSale) -> Vec<(&'static str, String)> {
    vec![
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
            latency_line(&s.order_latency),
        ),
        ("… of the 201s only", latency_line(&s.winning_order_latency)),
        ("CPU during the sale", cpu_line(&s.usage, 5)),
        (
            "FerretDB commands until the last answer",
            super::commands_cell(&s.usage),
        ),
    ]
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

/// Reservation and completion, then the payments and the seeding they rest on.
fn propagation(md: &mut String, r: &Results) {
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
    let _ = writeln!(md, "{}", propagation_row(&r.flash_sale.reservation));
    let _ = writeln!(md, "{}", propagation_row(&p.completion));
    if let Some(handling) = &r.flash_sale.reservation.from_event {
        let _ = writeln!(
            md,
            "\nFrom `order:created` to `ticket:updated`, both seen on NATS (the tickets service's own handling, whatever delayed the buyer's 201): {} winners, p50 / p95 / p99 / max {}.",
            handling.count,
            latency_line(handling)
        );
    }
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
        cpu_line(&p.usage, 5)
    );
    let _ = writeln!(
        md,
        "Seeding: {} tickets created in {:.1} ms p50 / {:.1} ms p99; all of them in the orders service's replica {:.0} ms after the last 201.\n\n![propagation](propagation.svg)\n",
        r.seed.tickets,
        r.seed.create_ticket_latency.p50_ms,
        r.seed.create_ticket_latency.p99_ms,
        r.seed.replica_ms
    );
}

fn footprint(md: &mut String, r: &Results) {
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
        let startup = r.startup.iter().find(|s| s.service == idle.name);
        // A process the startup phase did not measure (not a service) shows a dash.
        let of_startup =
            |cell: fn(&ServiceStartup) -> String| startup.map_or_else(|| "–".into(), cell);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            idle.name,
            idle.rss_mib,
            of_startup(|s| format!("{:.1}", s.median_rss_settled_mib)),
            rss_of(&r.peak_since_start, &idle.name),
            rss_of(&r.peak_sampled, &idle.name),
            rss_of(&r.after_the_run, &idle.name),
            of_startup(|s| format!("{:.0} / {:.0}", s.median_ready_ms, s.max_ready_ms)),
            of_startup(|s| format!(
                "{:.0}",
                crate::startup::median(&s.runs.iter().map(|r| r.stop_ms).collect::<Vec<_>>())
            )),
        );
    }
    let _ = writeln!(md, "\n![memory](memory.svg)\n\n![startup](startup.svg)\n");
}

fn auth(md: &mut String, r: &Results) {
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
        auth_row(md, run);
    }
}

fn auth_row(md: &mut String, run: &AuthRun) {
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
        cpu_line(&run.usage, 5)
    );
}

fn database_sizes(md: &mut String, r: &Results) {
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
}

fn cpu(md: &mut String, r: &Results) {
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
}

/// FerretDB's commands per phase: the figure to compare two versions of the code by.
fn database_commands(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "\n## FerretDB commands\n\nThe commands FerretDB served during each phase (from its own Prometheus counters, read at the phase's ends, every client included), and per second of the phase. Between two runs of the same code these counts move by a few percent (how many losing buyers reach the database depends on when they arrive), times by tens of percent: the counts are what shows whether a change of the code saves work.\n\n| Phase | s | Commands | per s |\n|---|---:|---|---:|"
    );
    for phase in cpu_phases(r) {
        let per_second = match &phase.database_commands {
            Some(c) if phase.wall_seconds > 0.0 => {
                format!("{:.0}", c.total as f64 / phase.wall_seconds)
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} |",
            phase.phase,
            phase.wall_seconds,
            super::commands_cell(&phase),
            per_second
        );
    }
    let _ = writeln!(md);
}

/// Only with `BENCH_PROFILE`: none otherwise.
fn profiles(md: &mut String, r: &Results) {
    if r.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Profiles\n\n`perf record -e cpu-clock -F 499 -g -a` (the whole machine) during the phase, then per process `perf report --pid <pid> --no-children --sort dso,sym`: where each process spent its own CPU time (self time, share of that process's samples), busiest first. Rust release binaries have no frame pointers, so only self time is meaningful for them. The perf data files are in `profile/`.\n"
    );
    for profile in &r.profiles {
        let _ = writeln!(md, "### {}\n", profile.phase);
        for process in profile.processes.iter().filter(|p| p.samples > 0) {
            process_profile(md, process);
        }
    }
}

fn process_profile(md: &mut String, process: &ProcessProfile) {
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
