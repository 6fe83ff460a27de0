//! The delayed-job queue in Redis (CONSISTENCY.md pattern 6).
//!
//! Two sorted sets per queue, member = order id:
//! - `<queue>:due` scored by the due time (epoch ms);
//! - `<queue>:inflight` scored by the end of the claim's lease (epoch ms);
//!
//! and a hash `<queue>:trace`, order id → the trace context (JSON) the job was scheduled in, so that
//! its `expiration:complete` continues the purchase's trace (a job scheduled before traces were
//! kept, or outside one, has none).
//!
//! A job is claimed by one Lua script that moves it from `due` to `inflight` (Redis runs scripts
//! one at a time, so each job goes to exactly one claimer, whatever the number of replicas). The
//! claimer publishes and then removes it from `inflight`. If the claimer dies in between, the
//! lease runs out and the reaper moves the job back to `due`: it fires late, never not at all.
//! Times inside the scripts come from the Redis server's clock, so all replicas agree on them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use common::events::Id;
use common::telemetry::TraceContext;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script, ScriptInvocation};
use secrecy::ExposeSecret as _;

use crate::settings::{RedisSettings, SchedulerSettings};

/// The current Redis server time in epoch milliseconds, as the first lines of every script.
/// (`TIME` before writes needs Redis 5 or later: scripts replicate their effects, not themselves.)
const NOW_MS: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: due, inflight, trace. ARGV: order id, due time (epoch ms), trace context (may be empty).
/// A job in flight is being fired right now: adding it to `due` again would fire it twice.
const SCHEDULE: &str = "if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
return 1";

/// KEYS: due, inflight, trace. ARGV: lease (ms), batch size.
/// Returns `[id, due, trace, id, due, trace, ...]` of the jobs this caller now owns (`trace` empty
/// when the job has none).
const CLAIM: &str = "local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local lease_end = now + tonumber(ARGV[1])
local claimed = {}
for i = 1, #jobs, 2 do
  redis.call('ZREM', KEYS[1], jobs[i])
  redis.call('ZADD', KEYS[2], lease_end, jobs[i])
  claimed[#claimed + 1] = jobs[i]
  claimed[#claimed + 1] = jobs[i + 1]
  claimed[#claimed + 1] = redis.call('HGET', KEYS[3], jobs[i]) or ''
end
return claimed";

/// KEYS: due, inflight. ARGV: batch size.
/// Jobs whose lease ran out are due again at once. Returns how many were moved.
const REAP: &str =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], now, id)
end
return #ids";

/// KEYS: due, inflight. ARGV: order id, delay (ms).
/// Gives a claimed job back (its publish failed) to be retried after the delay. Only the job's
/// current holder finds it in `inflight`; if the reaper already took it back there is nothing to do.
const RELEASE: &str = "if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0";

/// A job this replica has claimed and must now fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub order_id: String,
    /// When it was due (epoch ms): how late it fires is worth logging.
    pub due_at_ms: i64,
    /// The trace its order was created in (empty if it was scheduled outside one).
    pub trace: TraceContext,
}

struct Scripts {
    schedule: Script,
    claim: Script,
    reap: Script,
    release: Script,
}

/// The queue. Cheap to clone; the connection reconnects by itself after Redis restarts.
#[derive(Clone)]
pub struct ExpirationScheduler {
    redis: ConnectionManager,
    due_key: String,
    inflight_key: String,
    trace_key: String,
    lease: Duration,
    batch_size: usize,
    scripts: Arc<Scripts>,
}

/// Connects to Redis (the first connection must succeed; later ones are retried by the manager).
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.url.expose_secret()).context("opening REDIS_URL")?;
    // Short timeouts so that an outage fails a poll (retried on the next one) instead of hanging
    // it; reconnection keeps trying with backoff up to 2 s between attempts.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config)
        .await
        .context("connecting to Redis")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ExpirationScheduler {
    pub fn new(redis: ConnectionManager, queue: &str, settings: &SchedulerSettings) -> Self {
        let script = |body: &str| Script::new(&format!("{NOW_MS}{body}"));
        Self {
            redis,
            due_key: format!("{queue}:due"),
            inflight_key: format!("{queue}:inflight"),
            trace_key: format!("{queue}:trace"),
            lease: settings.lease,
            batch_size: settings.batch_size.max(1),
            scripts: Arc::new(Scripts {
                schedule: Script::new(SCHEDULE),
                claim: script(CLAIM),
                reap: script(REAP),
                release: script(RELEASE),
            }),
        }
    }

    /// `script` on this queue's keys, `due` then `inflight`: every script takes both (`schedule`
    /// and `claim` take the trace hash after them).
    fn on_queue<'a>(&'a self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.key(&self.due_key);
        invocation.key(&self.inflight_key);
        invocation
    }

    /// Schedules the expiry of an order at `due_at`; a time in the past fires at the next poll.
    ///
    /// Idempotent: the score is the event's `expiresAt`, which never changes for an order, so a
    /// redelivered `order:created` rewrites the same score. (Keeping the earliest would only
    /// matter if two events disagreed, which they cannot.) A redelivery that arrives while the job
    /// is being fired is ignored. One arriving after the job fired schedules it again: that second
    /// `expiration:complete` carries the same message id, so JetStream drops it inside its
    /// duplicate window, and after it the orders service ignores expiry of orders not pending.
    ///
    /// The job keeps the trace of the current span (the `order:created` being handled).
    pub async fn schedule(&self, order_id: Id, due_at: DateTime<Utc>) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let trace = TraceContext::current();
        let trace = if trace.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&trace).context("serialising a trace context")?
        };
        let _added: i64 = self
            .on_queue(&self.scripts.schedule)
            .key(&self.trace_key)
            .arg(order_id.to_string())
            .arg(due_at.timestamp_millis())
            .arg(trace)
            .invoke_async(&mut redis)
            .await
            .with_context(|| format!("scheduling the expiry of order {order_id}"))?;
        Ok(())
    }

    /// Claims up to a batch of due jobs for this caller alone, each under a lease.
    pub async fn claim_due(&self) -> anyhow::Result<Vec<ClaimedJob>> {
        let mut redis = self.redis.clone();
        let flat: Vec<String> = self
            .on_queue(&self.scripts.claim)
            .key(&self.trace_key)
            .arg(millis(self.lease))
            .arg(self.batch_size)
            .invoke_async(&mut redis)
            .await
            .context("claiming due jobs")?;
        Ok(flat
            .chunks(3)
            .filter_map(|job| match job {
                [order_id, score, trace] => Some(ClaimedJob {
                    order_id: order_id.clone(),
                    // Scores are whole milliseconds, well inside f64's exact integer range.
                    due_at_ms: score.parse::<f64>().map(|ms| ms as i64).unwrap_or_default(),
                    // A trace that does not read is only a trace lost, never a job lost.
                    trace: serde_json::from_str(trace).unwrap_or_default(),
                }),
                _ => None,
            })
            .collect())
    }

    /// Puts jobs whose lease expired (their claimer died or hung) back into `due`.
    pub async fn reap_expired_leases(&self) -> anyhow::Result<usize> {
        let mut redis = self.redis.clone();
        let moved: usize = self
            .on_queue(&self.scripts.reap)
            .arg(self.batch_size)
            .invoke_async(&mut redis)
            .await
            .context("re-queueing jobs with expired leases")?;
        Ok(moved)
    }

    /// The job was announced: forget it, and its trace.
    pub async fn complete(&self, order_id: &str) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let _removed: (usize, usize) = redis::pipe()
            .atomic()
            .zrem(&self.inflight_key, order_id)
            .hdel(&self.trace_key, order_id)
            .query_async(&mut redis)
            .await
            .with_context(|| format!("completing the expiry job of order {order_id}"))?;
        Ok(())
    }

    /// The job could not be announced: make it due again after `delay`.
    pub async fn release(&self, order_id: &str, delay: Duration) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let _released: i64 = self
            .on_queue(&self.scripts.release)
            .arg(order_id)
            .arg(millis(delay))
            .invoke_async(&mut redis)
            .await
            .with_context(|| format!("releasing the expiry job of order {order_id}"))?;
        Ok(())
    }

    /// How many jobs wait in `due` (not yet claimed), for the `expiration_queue_depth` gauge.
    pub async fn depth(&self) -> anyhow::Result<u64> {
        let mut redis = self.redis.clone();
        redis
            .zcard(&self.due_key)
            .await
            .context("counting the due expiry jobs")
    }

    /// Whether Redis answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut redis = self.redis.clone();
        let ping = redis::cmd("PING");
        let pong = ping.query_async::<String>(&mut redis);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), pong).await,
            Ok(Ok(_))
        )
    }
}
