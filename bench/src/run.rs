//! One benchmark run, phase by phase, against the app `scripts/bench.sh` started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::api::Api;
use crate::browse::{self, BrowseOptions};
use crate::ferretdb::CommandCounter;
use crate::flash_sale::{self, FlashSale, Payments, SaleSetup};
use crate::history::{self, History, HistoryOptions};
use crate::monitor::{Monitor, PhaseUsage, Resident};
use crate::profile::Profiler;
use crate::report::{self, Results, SeedFigures, Settings};
use crate::stack::{SERVICES, Stack};
use crate::{auth, database, machine, startup};

/// How long the stack is watched doing nothing, for its idle memory and CPU.
const IDLE: Duration = Duration::from_secs(3);

/// Everything a run is told, from the environment (`scripts/bench.sh` sets the locations).
#[derive(Debug, Clone)]
pub struct Config {
    pub repo: PathBuf,
    pub run_dir: PathBuf,
    pub out_dir: PathBuf,
    pub mongo_url: String,
    pub orders_db: String,
    pub payments_db: String,
    pub nats_url: String,
    pub subject_prefix: String,
    /// The expiration service's Redis, emptied with the databases by the history dimension.
    pub redis_url: Option<String>,
    /// FerretDB's Prometheus metrics (`scripts/infra.sh env`), for its command counts per phase.
    pub ferretdb_metrics_url: Option<String>,
    /// The load and the address, as the results record them.
    pub settings: Settings,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A list of whole numbers separated by commas; `allow_zero` for the history sizes.
fn numbers(name: &str, default: &[usize], allow_zero: bool) -> anyhow::Result<Vec<usize>> {
    match var(name) {
        None => Ok(default.to_vec()),
        Some(v) if allow_zero && v.trim() == "none" => Ok(Vec::new()),
        Some(v) => v
            .split(',')
            .map(|l| {
                l.trim()
                    .replace('_', "")
                    .parse()
                    .ok()
                    .filter(|n: &usize| allow_zero || *n > 0)
            })
            .collect::<Option<Vec<usize>>>()
            .filter(|l| !l.is_empty())
            .with_context(|| {
                format!(
                    "{name} must be {} whole numbers separated by commas (got {v:?})",
                    if allow_zero { "" } else { "positive" }
                )
            }),
    }
}

fn number(name: &str, default: usize) -> anyhow::Result<usize> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name} must be a positive whole number (got {v:?})")),
    }
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let repo = var("BENCH_REPO")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        let browse_levels = numbers("BENCH_BROWSE_LEVELS", &[1, 4, 16, 64, 256], false)?;
        let mut history_sizes = numbers("BENCH_HISTORY", &[0, 1_000, 10_000], true)?;
        history_sizes.sort_unstable();
        history_sizes.dedup();
        let mut config = Self {
            run_dir: var("BENCH_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(".data/run")),
            out_dir: var("BENCH_OUT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join("bench-results")),
            mongo_url: var("MONGO_URL").context(
                "MONGO_URL is not set (scripts/bench.sh sets it from scripts/infra.sh env)",
            )?,
            orders_db: var("BENCH_ORDERS_DB").unwrap_or_else(|| "orders".into()),
            payments_db: var("BENCH_PAYMENTS_DB").unwrap_or_else(|| "payments".into()),
            nats_url: var("NATS_URL").context(
                "NATS_URL is not set (scripts/bench.sh sets it from scripts/infra.sh env)",
            )?,
            subject_prefix: var("NATS_SUBJECT_PREFIX").unwrap_or_default(),
            ferretdb_metrics_url: var("FERRETDB_METRICS_URL"),
            redis_url: var("REDIS_URL"),
            settings: Settings {
                base_url: var("BENCH_BASE_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into()),
                users: number("BENCH_USERS", 1000)?,
                tickets: number("BENCH_TICKETS", 100)?,
                signin_users: number("BENCH_SIGNIN_USERS", 200)?,
                auth_concurrency: number("BENCH_AUTH_CONCURRENCY", 16)?,
                sale_in_flight: number("BENCH_SALE_IN_FLIGHT", 256)?,
                browse_levels,
                browse_seconds: number("BENCH_BROWSE_SECONDS", 4)? as f64,
                startup_runs: number("BENCH_STARTUP_RUNS", 3)?,
                profile: var("BENCH_PROFILE").is_some_and(|v| v != "0"),
                replicas: var("BENCH_REPLICAS").unwrap_or_else(|| "1".into()),
                build: var("BENCH_APP_PROFILE").unwrap_or_else(|| "release".into()),
                history_sizes,
                history_levels: numbers("BENCH_HISTORY_LEVELS", &[64], false)?,
                history_seconds: number("BENCH_HISTORY_SECONDS", 4)? as f64,
                db_backend: var("BENCH_DB_BACKEND").unwrap_or_else(|| "sqlite".into()),
            },
            repo,
        };
        let settings = &mut config.settings;
        if settings.users < settings.tickets {
            bail!(
                "BENCH_USERS ({}) must be at least BENCH_TICKETS ({})",
                settings.users,
                settings.tickets
            );
        }
        // Only users that signed up can sign in.
        settings.signin_users = settings.signin_users.min(settings.users);
        Ok(config)
    }
}

/// Runs every phase, writes the results, and returns them with the folder they are in.
pub async fn run(config: &Config) -> anyhow::Result<(Results, PathBuf)> {
    let began = Instant::now();
    let machine = machine::describe(&config.repo);
    let (run, out) = run_folder(config)?;

    let stack = Stack::discover(&config.run_dir)?;
    let api = Api::new(&config.settings.base_url)?;
    api.get_bytes("/api/tickets")
        .await
        .with_context(|| format!("the app does not answer at {}", config.settings.base_url))?;
    let commands = CommandCounter::new(config.ferretdb_metrics_url.clone());
    if config.ferretdb_metrics_url.is_none() {
        eprintln!(
            "WARNING: FERRETDB_METRICS_URL is not set: no FerretDB command counts in this run"
        );
    }
    let monitor = Monitor::start(&stack, commands.clone());

    let (mongo, database_at_start) = database_at_start(config).await?;

    let (idle_usage, idle) = idle(&monitor).await;
    let startup = startup(config, &stack, &out).await?;
    let profiler = profiler(config, &stack, &out).await;

    let history = history(&api, &mongo, &monitor, config, &run).await?;
    // A fresh monitor after the history phase (which follows the tickets service it restarts): the
    // peaks of the run's other phases must not include the history's (10,000 tickets in memory).
    let monitor = if config.settings.history_sizes.is_empty() {
        monitor
    } else {
        drop(monitor);
        Monitor::start(&Stack::discover(&config.run_dir)?, commands)
    };

    let orders_db = mongo.database(&config.orders_db);
    let seed = flash_sale::seed(&api, &orders_db, &run, config.settings.tickets).await?;
    let browse = browse::run(
        &api,
        &monitor,
        &seed.ticket_ids,
        &BrowseOptions {
            levels: &config.settings.browse_levels,
            duration: Duration::from_secs_f64(config.settings.browse_seconds),
            profiler: profiler.as_ref(),
        },
    )
    .await?;
    let (auth, signed_up) = auth(&api, &monitor, &run, config).await?;
    let (flash_sale, payments) = sale_and_payments(
        &api,
        &monitor,
        config,
        &Sale {
            cookies: &signed_up.cookies,
            ticket_ids: &seed.ticket_ids,
            orders_db: &orders_db,
            payments_db: &mongo.database(&config.payments_db),
            profiler: profiler.as_ref(),
        },
    )
    .await?;

    let goals = report::goals(&idle, &startup, &flash_sale, &payments);
    let database_at_end = database::sizes(&mongo).await?;
    let removed = database::remove_bench_users(&mongo.database("auth")).await?;
    eprintln!("==> removed the {removed} users of this run");
    let results = Results {
        run: run.clone(),
        machine,
        settings: config.settings.clone(),
        idle,
        idle_usage,
        database_at_start,
        database_at_end,
        startup,
        seed: SeedFigures {
            tickets: seed.ticket_ids.len(),
            create_ticket_latency: seed.create_ticket_latency,
            replica_ms: seed.replica_ms,
        },
        browse,
        history,
        auth,
        flash_sale,
        payments,
        after_the_run: monitor.resident(),
        peak_sampled: monitor.overall_peaks(),
        peak_since_start: monitor.high_water_marks(),
        profiles: profiler.map(|p| p.profiles()).unwrap_or_default(),
        goals,
        duration_seconds: began.elapsed().as_secs_f64(),
    };
    report::write(&out, &results)?;
    point_latest_at(&config.out_dir, &run);
    Ok((results, out))
}

/// The run's name (its start, UTC) and its folder, created with its `logs/`.
fn run_folder(config: &Config) -> anyhow::Result<(String, PathBuf)> {
    let run = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let out = config.out_dir.join(&run);
    std::fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("creating {}", out.display()))?;
    eprintln!("==> benchmark run {run}: results in {}", out.display());
    Ok((run, out))
}

/// The database, rid of users earlier runs left behind, and the size of its collections.
async fn database_at_start(
    config: &Config,
) -> anyhow::Result<(mongodb::Client, Vec<database::CollectionSize>)> {
    let mongo = mongodb::Client::with_uri_str(&config.mongo_url)
        .await
        .context("connecting to FerretDB")?;
    let removed = database::remove_bench_users(&mongo.database("auth")).await?;
    if removed > 0 {
        eprintln!("==> removed {removed} users left by earlier runs");
    }
    let sizes = database::sizes(&mongo).await?;
    Ok((mongo, sizes))
}

/// The stack as `scripts/app.sh up` left it, before anything else: its CPU and memory at rest.
async fn idle(monitor: &Monitor) -> (PhaseUsage, Vec<Resident>) {
    eprintln!("==> idle for {IDLE:?}");
    let mark = monitor.begin("idle").await;
    tokio::time::sleep(IDLE).await;
    let idle_usage = monitor.end(mark).await;
    (idle_usage, monitor.resident())
}

/// Fresh replicas of each service, started and stopped `startup_runs` times; their logs go to
/// the run's `logs/`.
async fn startup(
    config: &Config,
    stack: &Stack,
    out: &Path,
) -> anyhow::Result<Vec<startup::ServiceStartup>> {
    let runs = config.settings.startup_runs;
    eprintln!("==> startup: {runs} starts of each service");
    startup::measure_all(stack, &SERVICES, runs, &out.join("logs")).await
}

/// With `BENCH_PROFILE`, a profiler of every process of the stack (none where perf cannot run).
async fn profiler(config: &Config, stack: &Stack, out: &Path) -> Option<Profiler> {
    if !config.settings.profile {
        return None;
    }
    let targets = stack
        .processes
        .iter()
        .map(|p| (p.name.clone(), crate::procfs::process_tree(p.pid)))
        .collect();
    Profiler::new(targets, &out.join("profile")).await
}

/// The read workloads at each history size (none without sizes); the databases empty afterwards.
async fn history(
    api: &Api,
    mongo: &mongodb::Client,
    monitor: &Monitor,
    config: &Config,
    run: &str,
) -> anyhow::Result<History> {
    let settings = &config.settings;
    if settings.history_sizes.is_empty() {
        return Ok(History::default());
    }
    history::run(
        api,
        mongo,
        monitor,
        &HistoryOptions {
            sizes: &settings.history_sizes,
            levels: &settings.history_levels,
            duration: Duration::from_secs_f64(settings.history_seconds),
            free_tickets: settings.tickets,
            run,
            app: &crate::stack::AppFiles {
                repo: config.repo.clone(),
                run_dir: config.run_dir.clone(),
            },
            redis_url: config.redis_url.as_deref(),
        },
    )
    .await
}

/// argon2 alone, then signups and signins through the app; the users signed up take part in the
/// sale.
async fn auth(
    api: &Api,
    monitor: &Monitor,
    run: &str,
    config: &Config,
) -> anyhow::Result<(auth::Auth, auth::SignedUp)> {
    eprintln!("==> argon2 in this process");
    let argon2 = auth::argon2_figures(6).await?;
    let (signup, signed_up) = auth::signup(
        api,
        monitor,
        run,
        config.settings.users,
        config.settings.auth_concurrency,
    )
    .await?;
    let signin = auth::signin(
        api,
        monitor,
        run,
        config.settings.signin_users,
        config.settings.auth_concurrency,
    )
    .await?;
    Ok((
        auth::Auth {
            argon2,
            signup,
            signin,
        },
        signed_up,
    ))
}

/// What the sale and the payments after it work on.
struct Sale<'a> {
    cookies: &'a [String],
    ticket_ids: &'a [String],
    orders_db: &'a mongodb::Database,
    payments_db: &'a mongodb::Database,
    profiler: Option<&'a Profiler>,
}

/// The flash sale, then its winners pay.
async fn sale_and_payments(
    api: &Api,
    monitor: &Monitor,
    config: &Config,
    sale: &Sale<'_>,
) -> anyhow::Result<(FlashSale, Payments)> {
    let (flash_sale, winners) = flash_sale::run(
        api,
        monitor,
        &SaleSetup {
            cookies: sale.cookies,
            ticket_ids: sale.ticket_ids,
            in_flight: config.settings.sale_in_flight,
            nats_url: &config.nats_url,
            subject_prefix: &config.subject_prefix,
            orders_db: sale.orders_db,
            profiler: sale.profiler,
        },
    )
    .await?;
    let payers = winners
        .into_iter()
        .filter_map(|(user, order)| sale.cookies.get(user).map(|c| (c.clone(), order)))
        .collect();
    let payments = flash_sale::pay(api, monitor, sale.orders_db, sale.payments_db, payers).await?;
    Ok((flash_sale, payments))
}

/// `bench-results/latest` → the newest run (best effort: the run's own folder is what counts).
fn point_latest_at(out_dir: &Path, run: &str) {
    let latest = out_dir.join("latest");
    let _ = std::fs::remove_file(&latest);
    if let Err(err) = std::os::unix::fs::symlink(run, &latest) {
        eprintln!(
            "WARNING: could not point {} at {run}: {err}",
            latest.display()
        );
    }
}
