//! The figures of a run: `results.json`, `report.md` with SVG charts, and `summary.md` (the table
//! the README carries), all in `bench-results/<run>/`. This module holds the figures and the goals;
//! each output has its own file.

mod charts;
mod goals;
mod history;
mod markdown;
mod summary;
mod svg;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::auth::Auth;
use crate::browse::{Browse, BrowseLevel, Endpoint};
use crate::database::CollectionSize;
use crate::flash_sale::{FlashSale, Payments};
use crate::history::History;
use crate::load::LatencySummary;
use crate::machine::Machine;
use crate::monitor::{PhaseUsage, Resident};
use crate::profile::Profile;
use crate::startup::ServiceStartup;

pub use charts::charts;
pub use goals::goals;
pub use markdown::markdown;
pub use summary::summary;

/// 20 MB (decimal, as the goal says) in MiB, the unit of the figures.
pub const IDLE_GOAL_MIB: f64 = 20_000_000.0 / 1_048_576.0;
pub const READY_GOAL_MS: f64 = 200.0;
pub const PROPAGATION_GOAL_MS: f64 = 100.0;
/// Issue 13's targets for the flash sale.
pub const SOLD_OUT_GOAL_MS: f64 = 1_500.0;
pub const FAST_PROPAGATION_GOAL_MS: f64 = 50.0;

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
    /// `scripts/app.sh up --replicas` of the run (`BENCH_REPLICAS`): `1`, `2`, `2,client=1`, ...
    pub replicas: String,
    /// How the services were built (`BENCH_APP_PROFILE`): `release` or `debug`.
    pub build: String,
    /// Sold tickets already in the databases at each step of the history dimension
    /// (`BENCH_HISTORY`); empty: no history dimension.
    pub history_sizes: Vec<usize>,
    /// Concurrent clients of the history workloads (`BENCH_HISTORY_LEVELS`).
    pub history_levels: Vec<usize>,
    pub history_seconds: f64,
    /// FerretDB's backend (`INFRA_DB_BACKEND`): `sqlite` or `postgresql`.
    pub db_backend: String,
}

impl Settings {
    /// FerretDB's store, as the report names it.
    pub fn store(&self) -> &'static str {
        if self.db_backend == "postgresql" {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }
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
    /// The read workloads at rising history sizes, with the DB-free ceiling.
    pub history: History,
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

/// The goals table, the same in the report and the summary.
fn goals_table(md: &mut String, goals: &[Goal]) {
    let _ = writeln!(md, "| Goal | Measured | |\n|---|---|---|");
    for goal in goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            goal.goal,
            goal.measured,
            yes(goal.met)
        );
    }
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

/// The resident MiB of the process `name` in `list`; 0 when it is not there (not sampled).
fn rss_of(list: &[Resident], name: &str) -> f64 {
    list.iter()
        .find(|p| p.name == name)
        .map_or(0.0, |p| p.rss_mib)
}

/// The levels of one endpoint, in the order they ran.
fn levels_of(browse: &Browse, endpoint: Endpoint) -> impl Iterator<Item = &BrowseLevel> {
    browse.levels.iter().filter(move |l| l.endpoint == endpoint)
}

/// The commands FerretDB served during a phase, or why there is no figure.
fn commands_cell(usage: &PhaseUsage) -> String {
    usage.database_commands.as_ref().map_or_else(
        || "not measured (no FERRETDB_METRICS_URL, or its metrics could not be read)".to_owned(),
        |commands| commands.line(),
    )
}

/// The phases worth comparing: each browse endpoint at its top concurrency, auth, sale, payments.
fn cpu_phases(r: &Results) -> Vec<PhaseUsage> {
    let mut phases = vec![r.idle_usage.clone()];
    for endpoint in [Endpoint::List, Endpoint::Show] {
        if let Some(level) = levels_of(&r.browse, endpoint).max_by_key(|l| l.result.concurrency) {
            phases.push(level.usage.clone());
        }
    }
    phases.push(r.auth.signup.usage.clone());
    phases.push(r.auth.signin.usage.clone());
    phases.push(r.flash_sale.usage.clone());
    phases.push(r.payments.usage.clone());
    phases
}

#[cfg(test)]
mod tests;
