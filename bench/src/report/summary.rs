//! `summary.md`, also printed at the end of a run: the goals and the headline figures, as the
//! README carries them.

use std::fmt::Write as _;

use super::{Results, goals_table, levels_of, machine_line, rss_of};
use crate::browse::Endpoint;
use crate::flash_sale::Propagation;

/// The table for the README: goals, then the headline figures.
pub fn summary(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {} on {}. `scripts/bench.sh`, FerretDB on {}, {:.0} s in all.\n",
        r.machine.started_at,
        machine_line(&r.machine),
        r.settings.store(),
        r.duration_seconds
    );
    let _ = writeln!(
        md,
        "Documents in the app's databases at the start (FerretDB decodes whole collections for every query not by `_id`, so the figures drift as they grow): {}.\n",
        documents_at_start(r)
    );
    goals_table(&mut md, &r.goals);
    let _ = writeln!(md, "\n| Workload | Figure |\n|---|---|");
    browse_rows(&mut md, r);
    sale_rows(&mut md, r);
    auth_row(&mut md, r);
    super::history::summary_table(&mut md, r);
    service_table(&mut md, r);
    md
}

fn documents_at_start(r: &Results) -> String {
    let data: Vec<String> = r
        .database_at_start
        .iter()
        .filter(|c| c.documents > 0)
        .map(|c| format!("{}.{} {}", c.database, c.collection, c.documents))
        .collect();
    if data.is_empty() {
        "none (empty databases)".to_owned()
    } else {
        data.join(", ")
    }
}

fn browse_rows(md: &mut String, r: &Results) {
    for endpoint in [Endpoint::List, Endpoint::Show] {
        let best = levels_of(&r.browse, endpoint)
            .max_by(|a, b| a.result.throughput_rps.total_cmp(&b.result.throughput_rps));
        if let Some(best) = best {
            let _ = writeln!(
                md,
                "| Browse `{}` | best {:.0} req/s at {} concurrent (p50 {:.1} ms, p99 {:.1} ms); {} errors over all levels |",
                endpoint.label(),
                best.result.throughput_rps,
                best.result.concurrency,
                best.result.latency.p50_ms,
                best.result.latency.p99_ms,
                levels_of(&r.browse, endpoint)
                    .map(|l| l.result.errors)
                    .sum::<u64>()
            );
        }
    }
}

/// The flash sale, its reservations and the payments that followed.
fn sale_rows(md: &mut String, r: &Results) {
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
        "| Order → ticket reserved | from the 201: p50 {:.1} ms, p99 {:.1} ms ({} of {} seen, {} before the 201 arrived){}; from sending the POST: p50 {:.0} ms, p99 {:.0} ms |",
        s.reservation.latency.p50_ms,
        s.reservation.latency.p99_ms,
        s.reservation.observed,
        s.reservation.expected,
        s.reservation.before_the_201,
        from_event_clause(&s.reservation, "`order:created`"),
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
    let _ = writeln!(
        md,
        "| FerretDB commands (they move by a few % between runs, times by tens of %) | flash sale {}; payments {} |",
        super::commands_cell(&s.usage),
        super::commands_cell(&p.usage)
    );
}

fn auth_row(md: &mut String, r: &Results) {
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
}

fn service_table(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "\n| Service | Idle RSS | Peak RSS (run) | Ready after start (median / worst) |\n|---|---:|---:|---:|"
    );
    for idle in r.idle.iter().filter(|i| i.service) {
        let ready = r.startup.iter().find(|s| s.service == idle.name);
        let _ = writeln!(
            md,
            "| {} | {:.1} MiB | {:.1} MiB | {} |",
            idle.name,
            idle.rss_mib,
            rss_of(&r.peak_since_start, &idle.name),
            ready.map_or_else(
                || "–".to_owned(),
                |s| format!("{:.0} / {:.0} ms", s.median_ready_ms, s.max_ready_ms)
            )
        );
    }
}

/// "; from `event` on NATS: p50 …, p99 …" when the run measured it.
fn from_event_clause(p: &Propagation, event: &str) -> String {
    p.from_event
        .as_ref()
        .map(|l| {
            format!(
                "; from {event} on NATS: p50 {:.1} ms, p99 {:.1} ms",
                l.p50_ms, l.p99_ms
            )
        })
        .unwrap_or_default()
}
