//! The history dimension in the report: a table per history size, the targets of issue 13, an
//! overview for the summary (and the README), and the charts against history.

use std::fmt::Write as _;

use super::Results;
use super::svg::{self, LineChart, Series};
use crate::history::{History, HistoryRun, HistorySize, Workload};

/// Throughput with the most history against none: at least this share (issue 13).
pub const HISTORY_GOAL: f64 = 0.8;
/// `GET /api/tickets` and `/api/tickets/{id}` against the DB-free ceiling at 64 clients.
pub const CEILING_GOAL: f64 = 0.5;
/// The concurrency the ceiling target is stated at.
pub const CEILING_CLIENTS: usize = 64;

/// The workloads the history target applies to (the ceiling is the reference).
const HISTORY_TARGETS: [Workload; 4] = [
    Workload::List,
    Workload::Show,
    Workload::Orders,
    Workload::Signin,
];
const CEILING_TARGETS: [Workload; 2] = [Workload::List, Workload::Show];

/// The concurrency the overview, the targets and the charts use: 64 when measured, else the
/// highest level.
fn headline_level(h: &History) -> Option<usize> {
    if h.levels.contains(&CEILING_CLIENTS) {
        Some(CEILING_CLIENTS)
    } else {
        h.levels.iter().copied().max()
    }
}

/// Answers per second that were not errors: a request that times out after 5 s is not served.
/// FerretDB commands per answer: flat across history sizes when a request costs O(its result).
fn commands_per_answer(run: &HistoryRun) -> String {
    match &run.usage.database_commands {
        Some(c) if run.result.requests > 0 => {
            format!("{:.2}", c.total as f64 / run.result.requests as f64)
        }
        _ => "–".to_owned(),
    }
}

fn ok_rps(run: &HistoryRun) -> f64 {
    let r = &run.result;
    if r.seconds > 0.0 {
        r.requests.saturating_sub(r.errors) as f64 / r.seconds
    } else {
        0.0
    }
}

fn throughput(size: &HistorySize, workload: Workload, clients: usize) -> Option<f64> {
    size.run_of(workload, clients).map(ok_rps)
}

/// `part / whole` as a percentage, or a dash when `whole` is not there or zero.
fn percent(part: Option<f64>, whole: Option<f64>) -> String {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => format!("{:.0}%", p / w * 100.0),
        _ => "–".to_owned(),
    }
}

fn ratio(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some(p / w),
        _ => None,
    }
}

fn sizes_label(h: &History) -> String {
    h.sizes
        .iter()
        .map(|s| s.sold.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's section (nothing when the run had no history dimension).
pub fn section(md: &mut String, r: &Results) {
    let h = &r.history;
    if h.sizes.is_empty() {
        return;
    }
    let per_sale: usize = h.documents_per_sale.values().sum();
    let _ = writeln!(
        md,
        "\n## History: the same reads with {} sold tickets in the databases\n",
        sizes_label(h)
    );
    let _ = writeln!(
        md,
        "Before these measurements the app's databases were emptied; each size adds sold tickets in bulk (`insert_many`), each a copy of one real purchase made through the app (seller, ticket, buyer, order, payment: {per_sale} documents: {}) with new ids. Always there besides: {} free tickets (what `GET /api/tickets` returns; `GET /api/tickets/{{id}}` walks over them) and a user with {} orders (whose `GET /api/orders` is measured; signin alternates between two users). `GET /api/users/currentuser` reads no database (the session's JWT only): the ceiling of the stack itself (nginx, a service, the load generator). Closed loop, {:.0} s per workload after a 0.3 s warm-up. Afterwards the databases were emptied again.\n",
        h.documents_per_sale
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        h.free_tickets,
        h.user_orders,
        h.seconds_per_level
    );
    let Some(first) = h.sizes.first() else {
        return;
    };
    for size in &h.sizes {
        let _ = writeln!(
            md,
            "### {} sold tickets\n\n{} documents in the databases ({} inserted in {:.1} s).\n",
            size.sold, size.documents, size.documents_inserted, size.seed_seconds
        );
        let _ = writeln!(
            md,
            "| Workload | Clients | answers/s (2xx) | p50 ms | p99 ms | max ms | errors | vs {} sold | vs ceiling | FerretDB commands per answer | CPU (100% = one core) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            first.sold
        );
        for run in &size.runs {
            let clients = run.result.concurrency;
            let _ = writeln!(
                md,
                "| `{}` | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                run.workload.label(),
                clients,
                ok_rps(run),
                run.result.latency.p50_ms,
                run.result.latency.p99_ms,
                run.result.latency.max_ms,
                run.result.errors,
                percent(Some(ok_rps(run)), throughput(first, run.workload, clients)),
                percent(
                    Some(ok_rps(run)),
                    throughput(size, Workload::Ceiling, clients)
                ),
                commands_per_answer(run),
                super::markdown::cpu_line(&run.usage, 3)
            );
        }
        let _ = writeln!(md);
    }
    targets(md, h);
    let _ = writeln!(
        md,
        "\n![throughput against history](history-throughput.svg)\n\n![relative throughput against history](history-relative.svg)\n\n![p99 against history](history-p99.svg)\n"
    );
}

/// Issue 13's targets, each checked at the headline concurrency within this one run.
fn targets(md: &mut String, h: &History) {
    let (Some(first), Some(last), Some(clients)) =
        (h.sizes.first(), h.sizes.last(), headline_level(h))
    else {
        return;
    };
    let _ = writeln!(
        md,
        "Targets (issue 13), at {clients} clients, as ratios within this run:\n\n| Target | Measured | |\n|---|---|---|"
    );
    for workload in HISTORY_TARGETS {
        let share = ratio(
            throughput(last, workload, clients),
            throughput(first, workload, clients),
        );
        let _ = writeln!(
            md,
            "| `{}` with {} sold ≥ {:.0}% of the throughput with {} | {} | {} |",
            workload.label(),
            last.sold,
            HISTORY_GOAL * 100.0,
            first.sold,
            share.map_or_else(|| "–".to_owned(), |s| format!("{:.0}%", s * 100.0)),
            met(share.is_some_and(|s| s >= HISTORY_GOAL))
        );
    }
    for workload in CEILING_TARGETS {
        for size in [first, last] {
            let share = ratio(
                throughput(size, workload, clients),
                throughput(size, Workload::Ceiling, clients),
            );
            let _ = writeln!(
                md,
                "| `{}` ≥ {:.0}% of the ceiling, {} sold | {} | {} |",
                workload.label(),
                CEILING_GOAL * 100.0,
                size.sold,
                share.map_or_else(|| "–".to_owned(), |s| format!("{:.0}%", s * 100.0)),
                met(share.is_some_and(|s| s >= CEILING_GOAL))
            );
            if first.sold == last.sold {
                break;
            }
        }
    }
}

fn met(yes: bool) -> &'static str {
    super::yes(yes)
}

/// The summary's (and README's) table: each workload's throughput and p99 at every size.
pub fn summary_table(md: &mut String, r: &Results) {
    let h = &r.history;
    let Some(clients) = headline_level(h) else {
        return;
    };
    let Some(first) = h.sizes.first() else {
        return;
    };
    let _ = write!(
        md,
        "\nHistory ({clients} clients; successful answers per second, p99 ms; vs {} sold):\n\n| Workload |",
        first.sold
    );
    for size in &h.sizes {
        let _ = write!(md, " {} sold |", size.sold);
    }
    let _ = write!(md, "\n|---|");
    for _ in &h.sizes {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    for workload in Workload::ALL {
        let _ = write!(md, "| `{}` |", workload.label());
        for size in &h.sizes {
            let cell = size.run_of(workload, clients).map_or_else(
                || "–".to_owned(),
                |run: &HistoryRun| {
                    let mut cell = format!(
                        "{:.0} req/s, p99 {:.0} ms",
                        ok_rps(run),
                        run.result.latency.p99_ms
                    );
                    if size.sold != first.sold {
                        let _ = write!(
                            cell,
                            " ({})",
                            percent(Some(ok_rps(run)), throughput(first, workload, clients))
                        );
                    }
                    if run.result.errors > 0 {
                        let _ = write!(cell, "; {} errors", run.result.errors);
                    }
                    cell
                },
            );
            let _ = write!(md, " {cell} |");
        }
        let _ = writeln!(md);
    }
}

/// Throughput, throughput relative to the smallest size, and p99, against the history size (the
/// sizes evenly spaced, labelled). None without a history dimension.
pub fn charts(r: &Results) -> Vec<(&'static str, String)> {
    let h = &r.history;
    let (Some(clients), Some(first)) = (headline_level(h), h.sizes.first()) else {
        return Vec::new();
    };
    let x_ticks: Vec<(f64, String)> = h
        .sizes
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64, s.sold.to_string()))
        .collect();
    let series = |value: &dyn Fn(&HistorySize, &HistoryRun) -> Option<f64>| -> Vec<Series> {
        Workload::ALL
            .into_iter()
            .map(|workload| Series {
                name: workload.label().to_owned(),
                points: h
                    .sizes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, size)| {
                        size.run_of(workload, clients)
                            .and_then(|run| value(size, run))
                            .map(|v| (i as f64, v))
                    })
                    .collect(),
            })
            .collect()
    };
    let x_label = "sold tickets already in the databases";
    let throughput_title = format!("Throughput against history ({clients} clients)");
    let relative_title = format!(
        "Throughput against history, % of {} sold ({clients} clients)",
        first.sold
    );
    let p99_title = format!("p99 latency against history ({clients} clients)");
    let throughput_chart = svg::line_chart(&LineChart {
        title: &throughput_title,
        x_label,
        y_label: "successful answers per second",
        series: series(&|_, run| Some(ok_rps(run))),
        x_ticks: x_ticks.clone(),
        reference: None,
    });
    let relative_chart = svg::line_chart(&LineChart {
        title: &relative_title,
        x_label,
        y_label: "% of the throughput with the least history",
        series: series(&|_, run| {
            ratio(Some(ok_rps(run)), throughput(first, run.workload, clients)).map(|r| r * 100.0)
        }),
        x_ticks: x_ticks.clone(),
        reference: Some((HISTORY_GOAL * 100.0, "target 80%".to_owned())),
    });
    let p99_chart = svg::line_chart(&LineChart {
        title: &p99_title,
        x_label,
        y_label: "p99 milliseconds",
        series: series(&|_, run| Some(run.result.latency.p99_ms)),
        x_ticks,
        reference: None,
    });
    vec![
        ("history-throughput.svg", throughput_chart),
        ("history-relative.svg", relative_chart),
        ("history-p99.svg", p99_chart),
    ]
}
