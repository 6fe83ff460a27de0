//! The backend services as child processes (the binaries `cargo test` built), on free loopback ports,
//! sharing the infrastructure of `scripts/infra.sh` with a fresh database per service and a fresh
//! JetStream stream per run, plus the shared Stripe double (`common::testing::stripe_double`), whose
//! ledger the money invariant is checked against.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use common::bus::EventBus;
use common::settings::NatsSettings;
use common::testing::stripe_double::StripeDouble;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use wiremock::MockServer;

pub const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "payments", "expiration"];

/// The payments service's Stripe timeout here (`STRIPE_TIMEOUT_MS`): short, so that a slow Stripe
/// makes answers late within a run and the reconciler settles them within it.
pub const STRIPE_TIMEOUT: Duration = Duration::from_millis(1500);

/// When the payments reconciler takes up an attempt: the Stripe timeout plus its margin of 5 s
/// (`payments::saga::ReconcileTiming::for_stripe_timeout`).
pub const RECONCILE_HORIZON: Duration = Duration::from_millis(1500 + 5000);

/// The longest the payments reconciler waits between passes while payments stay unsettled
/// (`ReconcileTiming::max_backoff`).
pub const RECONCILE_MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The orders service's expiry sweeper here (`EXPIRY_SWEEP_SECONDS`): a pass every second, so that
/// orders whose Redis job was lost are cancelled within a run.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long past its window an order is left to the expiration service before the sweeper cancels
/// it (`EXPIRY_SWEEP_GRACE_SECONDS`).
pub const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// The queue groups of the services that consume events, each reporting its dead letters in
/// `/readyz` (`deadLetters`).
pub const CONSUMERS: [(&str, &str); 4] = [
    ("tickets", "tickets-service"),
    ("orders", "orders-service"),
    ("payments", "payments-service"),
    ("expiration", "expiration-service"),
];

/// How many replicas of each service a run starts (`FAULTS_REPLICAS`, 1 to 9; default 1).
pub fn replicas_wanted() -> anyhow::Result<usize> {
    match std::env::var("FAULTS_REPLICAS") {
        Err(_) => Ok(1),
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n @ 1..=9) => Ok(n),
            _ => bail!("FAULTS_REPLICAS must be a number from 1 to 9 (got {text:?})"),
        },
    }
}

/// A service: its replicas, and the round-robin balancer in front of them that stands for the
/// ingress and Kubernetes' endpoints (only replicas in rotation get requests).
pub struct Service {
    pub replicas: Vec<ServiceProcess>,
    next: AtomicUsize,
}

impl Service {
    /// A URL of the next replica in rotation (of any, if none is).
    pub fn url(&self, path: &str) -> String {
        let in_rotation: Vec<&ServiceProcess> = self
            .replicas
            .iter()
            .filter(|r| r.in_rotation.load(Ordering::Acquire))
            .collect();
        let pool: Vec<&ServiceProcess> = if in_rotation.is_empty() {
            self.replicas.iter().collect()
        } else {
            in_rotation
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        pool.get(turn % pool.len().max(1))
            .map_or_else(String::new, |replica| replica.url(path))
    }

    /// Starts every replica (each waits for its `/readyz`).
    pub async fn start(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        for replica in &self.replicas {
            replica.start(http).await?;
        }
        Ok(())
    }

    /// SIGKILLs every replica: the whole service is down.
    pub async fn kill(&self) -> anyhow::Result<()> {
        for replica in &self.replicas {
            replica.kill().await?;
        }
        Ok(())
    }
}

/// A service process and how to start it again.
pub struct ServiceProcess {
    /// The service's name, `-K` for replica K > 1 (`orders-2`).
    pub name: String,
    pub port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    /// Whether the balancer sends it requests (taken out before a graceful stop).
    in_rotation: AtomicBool,
}

impl ServiceProcess {
    /// Out of the balancer's rotation: no new request is sent to it.
    pub fn take_out_of_rotation(&self) {
        self.in_rotation.store(false, Ordering::Release);
    }

    pub fn put_in_rotation(&self) {
        self.in_rotation.store(true, Ordering::Release);
    }

    /// SIGTERM, as Kubernetes stops a pod: the service stops accepting, finishes what it serves and
    /// its background work, and exits; SIGKILL after `grace`. Returns how long it took to exit.
    pub async fn terminate(&self, grace: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut slot = self.child.lock().await;
        let Some(child) = slot.as_mut() else {
            return Ok(Duration::ZERO);
        };
        if let Some(pid) = child.id() {
            signal(pid, "TERM")
                .await
                .with_context(|| format!("stopping {}", self.name))?;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(exited) => {
                let status = exited.context("waiting for the stopped process")?;
                if !status.success() {
                    bail!(
                        "{} exited with {status} after SIGTERM; see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
            Err(_) => {
                child.start_kill().context("sending SIGKILL")?;
                child.wait().await.context("reaping the killed process")?;
                bail!(
                    "{} did not stop within {grace:?} of SIGTERM; see {}",
                    self.name,
                    self.log.display()
                );
            }
        }
        *slot = None;
        Ok(started.elapsed())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub async fn start(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        *self.child.lock().await = Some(child);
        self.wait_ready(http, Duration::from_secs(30)).await
    }

    async fn wait_ready(&self, http: &reqwest::Client, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(response) = http.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(child) = self.child.lock().await.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{} exited with {status} while starting; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {limit:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no graceful shutdown, in-flight work is simply lost.
    pub async fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.lock().await.take() {
            child.start_kill().context("sending SIGKILL")?;
            child.wait().await.context("reaping the killed process")?;
        }
        Ok(())
    }
}

pub struct Stack {
    pub services: BTreeMap<&'static str, Service>,
    pub http: reqwest::Client,
    /// The wiremock server the payments service calls as Stripe (kept alive with the stack).
    pub stripe: MockServer,
    /// Its ledger of charges and refunds, and how it answers (`set(Behaviour::...)`).
    pub stripe_double: StripeDouble,
    pub mongo_url: String,
    /// A client of the run's databases (for the checks).
    pub mongo: mongodb::Client,
    pub databases: BTreeMap<&'static str, String>,
    pub root: PathBuf,
    /// The run's JetStream stream, subject prefix and expiration queue (key prefix in Redis).
    pub nats: NatsSettings,
    pub expiration_queue: String,
    pub redis_url: String,
    /// The reservation window of this run's orders.
    pub window: Duration,
    /// Dead letters this run put on the bus on purpose (poison messages).
    poison: std::sync::Mutex<Vec<Poison>>,
    /// The suite's own connection to the run's stream, made on first use.
    bus: tokio::sync::OnceCell<EventBus>,
}

/// A poison message injected on the bus: every dead letter whose payload holds `marker` is
/// expected, and each of `consumers` (durable names) must have dead-lettered it.
#[derive(Debug, Clone)]
pub struct Poison {
    pub marker: String,
    pub consumers: Vec<&'static str>,
}

/// The loopback ports handed to the services: below Linux's ephemeral range (32768–60999), so that
/// no outgoing connection can hold a service's port while the suite restarts it (a SIGKILLed orders
/// once could not bind its old port 36831 again), and clear of the infrastructure's ports.
const SERVICE_PORTS: std::ops::Range<u32> = 15_000..20_000;

/// A port of [`SERVICE_PORTS`] that is free now and not yet handed out by this process. Each run
/// starts at an offset of its own, so concurrent runs rarely probe the same ports.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = SERVICE_PORTS.end - SERVICE_PORTS.start;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % span,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::AcqRel) % span;
        let port = u16::try_from(SERVICE_PORTS.start + offset)?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {SERVICE_PORTS:?}")
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to a process, with kill(1).
pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Waits until every thread of process `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`),
/// at most `within`; a thread that cannot be read counts as stopped (it may have exited).
pub async fn wait_until_stopped(pid: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline && !all_threads_stopped(pid) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_none_or(|state| state == 'T' || state == 't')
        })
    })
}

fn infra(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: run through scripts/faults.sh"))
}

impl Stack {
    /// Starts the five backend services with `expiration_window` seconds to pay.
    pub async fn start(root: &Path, run: &str, expiration_window: u64) -> anyhow::Result<Self> {
        // scripts/faults.sh says where the service binaries are.
        let bin_dir = std::env::var_os("FAULTS_BIN_DIR")
            .map_or_else(|| root.join("target/debug"), PathBuf::from);
        let logs = root.join(".data/logs/fault-suite");
        std::fs::create_dir_all(&logs)?;
        let stripe = MockServer::start().await;
        let stripe_double = StripeDouble::mount(&stripe).await;
        let mongo_url = infra("MONGO_URL")?;
        let mongo = mongodb::Client::with_uri_str(&mongo_url)
            .await
            .context("configuring the MongoDB client")?;
        let suffix = common::testing::unique_suffix();
        let nats = NatsSettings::isolated(
            infra("NATS_URL")?,
            format!("faults_{suffix}"),
            format!("f{suffix}."),
        );
        let expiration_queue = format!("faults:{suffix}");
        let redis_url = infra("REDIS_URL")?;
        let shared = vec![
            ("RUST_LOG".to_owned(), "info".to_owned()),
            ("HOST".to_owned(), "127.0.0.1".to_owned()),
            (
                "JWT_KEY".to_owned(),
                common::testing::TEST_JWT_KEY.to_owned(),
            ),
            ("MONGO_URL".to_owned(), mongo_url.clone()),
            ("NATS_URL".to_owned(), nats.url.clone()),
            ("REDIS_URL".to_owned(), redis_url.clone()),
            ("NATS_STREAM".to_owned(), nats.stream.clone()),
            (
                "NATS_SUBJECT_PREFIX".to_owned(),
                nats.subject_prefix.clone(),
            ),
            ("EXPIRATION_QUEUE".to_owned(), expiration_queue.clone()),
            (
                "EXPIRATION_WINDOW_SECONDS".to_owned(),
                expiration_window.to_string(),
            ),
            ("AUTH_RATE_LIMIT_PER_MINUTE".to_owned(), "0".to_owned()),
            ("STRIPE_KEY".to_owned(), "fault-suite-stripe-key".to_owned()),
            ("STRIPE_API_BASE".to_owned(), stripe.uri()),
        ];
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let replicas = replicas_wanted()?;
        let mut services = BTreeMap::new();
        let mut databases = BTreeMap::new();
        for name in SERVICES {
            let binary = bin_dir.join(name);
            if !binary.exists() {
                bail!(
                    "{} is missing: build the services first (cargo build --bins)",
                    binary.display()
                );
            }
            let database = format!("faults_{run}_{name}_{suffix}");
            let mut env = shared.clone();
            // Each service its own metrics port, not the shared default.
            env.push(("METRICS_PORT".to_owned(), "0".to_owned()));
            env.push(("MONGO_DB".to_owned(), database.clone()));
            if name == "payments" {
                env.push((
                    "STRIPE_TIMEOUT_MS".to_owned(),
                    STRIPE_TIMEOUT.as_millis().to_string(),
                ));
            }
            if name == "orders" {
                env.push((
                    "EXPIRY_SWEEP_SECONDS".to_owned(),
                    SWEEP_INTERVAL.as_secs().to_string(),
                ));
                env.push((
                    "EXPIRY_SWEEP_GRACE_SECONDS".to_owned(),
                    SWEEP_GRACE.as_secs().to_string(),
                ));
            }
            databases.insert(name, database);
            let mut processes = Vec::new();
            for replica in 1..=replicas {
                let replica_name = match replica {
                    1 => name.to_owned(),
                    k => format!("{name}-{k}"),
                };
                let port = free_port()?;
                let mut env = env.clone();
                env.push(("PORT".to_owned(), port.to_string()));
                let log = logs.join(format!("{run}-{replica_name}.log"));
                // Each run's log holds that run only (the checks read it).
                std::fs::write(&log, b"")
                    .with_context(|| format!("truncating {}", log.display()))?;
                processes.push(ServiceProcess {
                    name: replica_name,
                    port,
                    binary: binary.clone(),
                    env,
                    log,
                    child: Mutex::new(None),
                    in_rotation: AtomicBool::new(true),
                });
            }
            services.insert(
                name,
                Service {
                    replicas: processes,
                    next: AtomicUsize::new(0),
                },
            );
        }
        let stack = Self {
            services,
            http,
            stripe,
            stripe_double,
            mongo_url,
            mongo,
            databases,
            root: root.to_owned(),
            nats,
            expiration_queue,
            redis_url,
            window: Duration::from_secs(expiration_window),
            poison: std::sync::Mutex::new(Vec::new()),
            bus: tokio::sync::OnceCell::new(),
        };
        for name in SERVICES {
            stack.service(name)?.start(&stack.http).await?;
        }
        Ok(stack)
    }

    pub fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .get(name)
            .with_context(|| format!("no service {name}"))
    }

    pub fn url(&self, service: &str, path: &str) -> anyhow::Result<String> {
        Ok(self.service(service)?.url(path))
    }

    /// The database of a service in this run.
    pub fn database(&self, service: &str) -> anyhow::Result<mongodb::Database> {
        let name = self
            .databases
            .get(service)
            .with_context(|| format!("no database for {service}"))?;
        Ok(self.mongo.database(name))
    }

    /// `scripts/infra.sh <verb> <component>`.
    pub async fn infra(&self, verb: &str, component: &str) -> anyhow::Result<()> {
        let output = Command::new("bash")
            .arg(self.root.join("scripts/infra.sh"))
            .args([verb, component])
            .output()
            .await
            .context("running scripts/infra.sh")?;
        if !output.status.success() {
            bail!(
                "scripts/infra.sh {verb} {component} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// `scripts/infra.sh pid <component>`: the pid of a running infrastructure process.
    pub async fn infra_pid(&self, component: &str) -> anyhow::Result<u32> {
        let output = Command::new("bash")
            .arg(self.root.join("scripts/infra.sh"))
            .args(["pid", component])
            .output()
            .await
            .context("running scripts/infra.sh pid")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "scripts/infra.sh pid {component} failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        text.trim()
            .parse()
            .with_context(|| format!("scripts/infra.sh pid {component} printed {text:?}"))
    }

    /// `redis-cli -u <REDIS_URL> <args>` on the suite's private Redis; its output.
    pub async fn redis_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli")
            .args(["-u", &self.redis_url])
            .args(args)
            .output()
            .await
            .context("running redis-cli")?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || text.starts_with("ERR") {
            bail!(
                "redis-cli {} failed: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(text)
    }

    /// A connection to the run's event stream (for injecting messages and reading dead letters);
    /// it reconnects by itself after a NATS restart.
    pub async fn bus(&self) -> anyhow::Result<&EventBus> {
        self.bus
            .get_or_try_init(|| EventBus::connect(&self.nats, "fault-suite"))
            .await
    }

    /// Records a poison message this run injected (its dead letters are expected).
    pub fn expect_poison(&self, poison: Poison) {
        self.poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(poison);
    }

    /// The poison messages injected so far.
    pub fn injected_poison(&self) -> Vec<Poison> {
        self.poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The run's service log of `service` (of all its replicas, one after the other), as written
    /// so far.
    pub fn log_of(&self, service: &str) -> anyhow::Result<String> {
        let mut text = String::new();
        for replica in &self.service(service)?.replicas {
            let path = &replica.log;
            text.push_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
        }
        Ok(text)
    }

    /// How many replicas each service runs.
    pub fn replicas(&self) -> usize {
        self.services
            .values()
            .map(|service| service.replicas.len())
            .min()
            .unwrap_or(1)
    }

    pub async fn stop(self) {
        for service in self.services.values() {
            let _ = service.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that spawn processes and by the one that checks ports are free: a child
    /// between fork and exec holds a copy of every socket, so a port just closed here can still be
    /// bound there.
    static SPAWNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn service_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let _alone = SPAWNING.blocking_lock();
        let ports: Vec<u16> = (0..20).map(|_| free_port().expect("a port")).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(SERVICE_PORTS.contains(&u32::from(port)), "{port}");
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "{port}");
        }
    }

    #[tokio::test]
    async fn a_process_is_seen_stopped_only_once_sigstop_has_taken_it() -> anyhow::Result<()> {
        let _alone = SPAWNING.lock().await;
        let mut child = Command::new("sleep").arg("30").kill_on_drop(true).spawn()?;
        let pid = child.id().context("the child's pid")?;
        assert!(!all_threads_stopped(pid), "running");
        signal(pid, "STOP").await?;
        wait_until_stopped(pid, Duration::from_secs(2)).await;
        assert!(all_threads_stopped(pid), "stopped");
        signal(pid, "CONT").await?;
        child.kill().await?;
        Ok(())
    }
}
