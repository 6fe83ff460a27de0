use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::bus::{EventBus, ListenerOptions, Outcome, listen};
use common::events::{ExpirationComplete, OrderCreated, Subject};
use common::money::Price;
use common::settings::Env;

use common::testing::{
    Running, as_id, drain, eventually, require_infra, send, start, test_env, unique_suffix,
};
use expiration::scheduler::ExpirationScheduler;
use expiration::settings::{SchedulerSettings, Settings};
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Tests share one Redis; the one that restarts it runs alone (write lock), all others together.
static REDIS_GATE: RwLock<()> = RwLock::const_new(());

/// One test's world: its own queue key prefix in Redis and its own stream and subjects on NATS.
/// Every app spawned from it (the replicas) shares both.
pub struct TestContext {
    env: Env,
    pub queue: String,
    /// Applied to every app spawned from this context.
    pub scheduler: SchedulerSettings,
    exclusive: bool,
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

/// Short lease so that a lost claim comes back quickly; production keeps the 100 ms poll.
pub fn test_scheduler_settings() -> SchedulerSettings {
    SchedulerSettings {
        lease: Duration::from_secs(2),
        retry_delay: Duration::from_millis(200),
        ..SchedulerSettings::default()
    }
}

impl TestContext {
    pub async fn new() -> Self {
        let mut context = Self::create();
        context._shared = Some(REDIS_GATE.read().await);
        context
    }

    /// For a test that stops or restarts Redis: no other test runs meanwhile.
    pub async fn exclusive() -> Self {
        let mut context = Self::create();
        context._exclusive = Some(REDIS_GATE.write().await);
        context.exclusive = true;
        context
    }

    fn create() -> Self {
        require_infra(&["NATS_URL", "REDIS_URL"]);
        common::testing::init_test_log("expiration-test");
        let queue = format!("test:expiration:{}", unique_suffix());
        let env = test_env("expiration", &[("EXPIRATION_QUEUE", queue.as_str())]);
        Self {
            env,
            queue,
            scheduler: test_scheduler_settings(),
            exclusive: false,
            _shared: None,
            _exclusive: None,
        }
    }

    pub fn settings(&self) -> Settings {
        let mut settings = Settings::from_env(&self.env).expect("test settings");
        settings.scheduler = self.scheduler.clone();
        settings
    }

    /// Starts one instance (replica) of the service.
    pub async fn spawn_app(&self) -> TestApp {
        let app = start("expiration", expiration::app::build(self.settings())).await;
        TestApp {
            addr: app.addr,
            metrics_addr: app.metrics_addr,
            client: reqwest::Client::new(),
            running: app.running,
        }
    }

    /// An observer (started first, so that it sees everything), one running instance and a bus
    /// to publish on: what most scheduling tests start from.
    pub async fn observed_app(&self) -> (Observer, TestApp, EventBus) {
        let observer = self.observe().await;
        let app = self.spawn_app().await;
        (observer, app, self.bus().await)
    }

    pub async fn bus(&self) -> EventBus {
        EventBus::connect(&self.settings().nats, "expiration-test")
            .await
            .expect("the test connects to NATS")
    }

    /// A scheduler on this context's queue, as a replica would have it (to claim jobs by hand).
    pub async fn scheduler(&self, settings: &SchedulerSettings) -> ExpirationScheduler {
        ExpirationScheduler::new(self.redis().await, &self.queue, settings)
    }

    pub async fn redis(&self) -> ConnectionManager {
        expiration::scheduler::connect(&self.settings().redis)
            .await
            .expect("the test connects to Redis")
    }

    /// `(order id, score)` of every member of `<queue>:<set>` (`due` or `inflight`).
    pub async fn jobs_in(&self, set: &str) -> Vec<(String, i64)> {
        let mut redis = self.redis().await;
        let jobs: Vec<(String, f64)> = redis
            .zrange_withscores(format!("{}:{set}", self.queue), 0, -1)
            .await
            .expect("ZRANGE");
        jobs.into_iter()
            .map(|(id, score)| (id, score as i64))
            .collect()
    }

    /// Polls until the order's job is in `<queue>:due` (the listener has handled the event).
    pub async fn wait_until_scheduled(&self, order_id: &str) -> i64 {
        eventually(&format!("order {order_id} to be scheduled"), async || {
            self.jobs_in("due")
                .await
                .into_iter()
                .find(|(id, _)| id == order_id)
                .map(|(_, score)| score)
        })
        .await
    }

    /// [`Self::observed_app`], then `order:created` of a new order due `due_in_ms` from now,
    /// published and waited for until the listener has scheduled its job.
    pub async fn observed_app_with_job(&self, due_in_ms: i64) -> (Observer, TestApp, Job) {
        let (observer, app, bus) = self.observed_app().await;
        let order_id = new_order_id();
        let due = millis_from_now(due_in_ms);
        self.publish_order_created(&bus, &order_id, due).await;
        let scheduled_at = self.wait_until_scheduled(&order_id).await;
        let job = Job {
            order_id,
            due,
            scheduled_at,
        };
        (observer, app, job)
    }

    /// Publishes `order:created` as the orders service would.
    pub async fn publish_order_created(
        &self,
        bus: &EventBus,
        order_id: &str,
        expires_at: DateTime<Utc>,
    ) {
        bus.publish(&order_created(order_id, expires_at))
            .await
            .expect("order:created is published");
    }

    /// Starts watching `expiration:complete` (before anything can fire).
    pub async fn observe(&self) -> Observer {
        let bus = self.bus().await;
        let stop = CancellationToken::new();

        // Every publish on the wire, duplicates included: JetStream drops a repeated message id
        // from the stream, but core subscribers still see it.
        let nats_url = self.settings().nats.url;
        let client = async_nats::connect(nats_url.as_str())
            .await
            .expect("the observer connects to NATS");
        let mut subscription = client
            .subscribe(bus.subject(Subject::ExpirationComplete))
            .await
            .expect("core subscription");
        client.flush().await.expect("subscription registered");
        let (wire_tx, wire) = mpsc::unbounded_channel();
        let wire_stop = stop.clone();
        tokio::spawn(async move {
            let _client = client;
            loop {
                tokio::select! {
                    _ = wire_stop.cancelled() => return,
                    message = subscription.next() => match message {
                        Some(message) => {
                            let event: ExpirationComplete = serde_json::from_slice(&message.payload)
                                .expect("expiration:complete payload");
                            let _ = wire_tx.send(Fired { order_id: event.order_id.to_string(), at: Utc::now() });
                        }
                        None => return,
                    },
                }
            }
        });

        // What the orders service would receive: the stream, through a durable consumer.
        let (stream_tx, stream) = mpsc::unbounded_channel();
        listen::<ExpirationComplete, _, _>(
            &bus,
            ListenerOptions::new("test-observer"),
            stop.clone(),
            move |event, _delivery| {
                let stream_tx = stream_tx.clone();
                async move {
                    let _ = stream_tx.send(Fired {
                        order_id: event.order_id.to_string(),
                        at: Utc::now(),
                    });
                    Ok(Outcome::Ack)
                }
            },
        )
        .await
        .expect("the observer listens");

        Observer {
            wire: Feed {
                fired: wire,
                seen: "published",
            },
            stream: Feed {
                fired: stream,
                seen: "delivered from the stream",
            },
            _stop: stop.drop_guard(),
        }
    }

    /// Stops Redis (only an exclusive context may); the returned guard starts it again, also
    /// when the test fails before it does.
    pub async fn stop_redis(&self) -> RedisDown {
        assert!(self.exclusive, "only an exclusive context may stop Redis");
        tokio::task::spawn_blocking(|| infra(&["down", "redis"]))
            .await
            .expect("infra.sh task");
        RedisDown { up: false }
    }
}

/// Redis is down until `start` (or drop) brings it back.
pub struct RedisDown {
    up: bool,
}

impl RedisDown {
    /// Starts Redis and waits until it answers PING.
    pub async fn start(mut self) {
        tokio::task::spawn_blocking(|| infra(&["up", "redis"]))
            .await
            .expect("infra.sh task");
        self.up = true;
    }
}

impl Drop for RedisDown {
    fn drop(&mut self) {
        if !self.up {
            infra(&["up", "redis"]);
        }
    }
}

/// `scripts/infra.sh <args>` from the repository root (fault injection).
fn infra(args: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let output = std::process::Command::new(root.join("scripts/infra.sh"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("infra.sh runs");
    assert!(
        output.status.success(),
        "infra.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for TestContext {
    /// Removes the test's jobs from the shared Redis (some tests leave jobs behind on purpose).
    fn drop(&mut self) {
        let keys = [
            format!("{}:due", self.queue),
            format!("{}:inflight", self.queue),
            format!("{}:trace", self.queue),
        ];
        let Ok(settings) = Settings::from_env(&self.env) else {
            return;
        };
        let deleted = redis::Client::open(settings.redis.url.expose_secret())
            .and_then(|client| client.get_connection())
            .and_then(|mut redis| redis::cmd("DEL").arg(&keys).query::<i64>(&mut redis));
        if let Err(err) = deleted {
            eprintln!("could not delete the test queue {}: {err}", self.queue);
        }
    }
}

/// A fresh order id, as the Redis queue holds it (text).
pub fn new_order_id() -> String {
    common::testing::new_order_id().to_string()
}

/// `order:created` of a €20 order of a new user, due at `expires_at`.
pub fn order_created(order_id: &str, expires_at: DateTime<Utc>) -> OrderCreated {
    let ticket_id = common::testing::new_order_id();
    let user_id = common::testing::new_user_id();
    OrderCreated {
        expires_at,
        ..common::testing::order_created(
            as_id(order_id),
            ticket_id,
            &user_id,
            Price::from_cents(2000),
        )
    }
}

/// `now + offset`, cut to whole milliseconds like `expiresAt` on the wire.
pub fn millis_from_now(offset_ms: i64) -> DateTime<Utc> {
    let at = Utc::now().timestamp_millis() + offset_ms;
    DateTime::from_timestamp_millis(at).expect("a representable time")
}

/// The job of one order, as the listener scheduled it.
pub struct Job {
    pub order_id: String,
    pub due: DateTime<Utc>,
    /// When the job is scheduled at, in ms.
    pub scheduled_at: i64,
}

/// One `expiration:complete` seen by the observer, and when.
#[derive(Debug, Clone)]
pub struct Fired {
    pub order_id: String,
    pub at: DateTime<Utc>,
}

impl Fired {
    /// How long after `due` it was seen, in ms (negative = early).
    pub fn late_ms(&self, due: DateTime<Utc>) -> i64 {
        (self.at - due).num_milliseconds()
    }
}

pub struct Observer {
    /// Every publish, as it went over the wire.
    pub wire: Feed,
    /// Every delivery from the stream to a consumer.
    pub stream: Feed,
    _stop: DropGuard,
}

/// The `expiration:complete`s seen one way: published over the wire, or delivered from the stream.
pub struct Feed {
    fired: mpsc::UnboundedReceiver<Fired>,
    /// How they are seen, for failure messages.
    seen: &'static str,
}

impl Feed {
    /// The next one, waited for up to `within`: it must be `order_id`'s.
    pub async fn next_of(&mut self, order_id: &str, within: Duration) -> Fired {
        let fired = self
            .next_within(within)
            .await
            .unwrap_or_else(|| panic!("no expiration:complete {} within {within:?}", self.seen));
        assert_eq!(fired.order_id, order_id, "{}", self.seen);
        fired
    }

    /// Whether anything (more) comes within `within`.
    pub async fn any_within(&mut self, within: Duration) -> bool {
        self.next_within(within).await.is_some()
    }

    async fn next_within(&mut self, within: Duration) -> Option<Fired> {
        tokio::time::timeout(within, self.fired.recv())
            .await
            .ok()
            .flatten()
    }

    /// How often each order fired, until `count` distinct orders did or `within` passed, and then
    /// for as long as more keep coming within `quiet` of each other (so that duplicates show up).
    pub async fn counts(
        &mut self,
        count: usize,
        within: Duration,
        quiet: Duration,
    ) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let deadline = tokio::time::Instant::now() + within;
        while counts.len() < count {
            match tokio::time::timeout_at(deadline, self.fired.recv()).await {
                Ok(Some(fired)) => *counts.entry(fired.order_id).or_insert(0) += 1,
                _ => break,
            }
        }
        for fired in drain(&mut self.fired, quiet).await {
            *counts.entry(fired.order_id).or_insert(0) += 1;
        }
        counts
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where the instance serves `GET /metrics`.
    pub metrics_addr: SocketAddr,
    client: reqwest::Client,
    running: Running,
}

impl TestApp {
    /// Graceful stop, as on SIGTERM; returns once the listener and the poller have stopped.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// The Prometheus text the instance serves on its metrics port.
    pub async fn metrics(&self) -> String {
        common::testing::scrape_metrics(&self.client, self.metrics_addr).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let url = format!("http://{}{}", self.addr, path);
        let reply = send(&self.client, Method::GET, &url, None, None).await;
        (reply.status, reply.body)
    }
}
