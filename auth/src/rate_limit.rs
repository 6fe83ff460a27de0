//! Rate limiting of signup and signin, in memory and per replica (see the README's "Security"):
//! token buckets per client address slow down password guessing and account spraying from one
//! address, and a per-account delay after repeated failed signins slows guessing one account's
//! password from many addresses without ever locking its owner out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use common::client_address;
use secrecy::SecretString;

/// Above this many tracked addresses, buckets that have refilled completely are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_minute` attempts per address, refilled continuously; 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How long a client whose budget is spent waits for its next attempt.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(60 / u64::from(self.per_minute.max(1))).max(Duration::from_secs(1))
    }

    /// Takes one attempt for `client`; `false` when its budget is spent. Unknown clients pass.
    pub fn allow(&self, client: Option<IpAddr>) -> bool {
        let (Some(client), true) = (client, self.per_minute > 0) else {
            return true;
        };
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update; the map is still usable.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > MAX_TRACKED {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.updated).as_secs_f64() * per_second)
            .min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Failed signins allowed per email before attempts must wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait between two attempts for one email.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A failure older than this is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Failed signins per email. After [`FREE_FAILURES`] failures in a row, an attempt for that email
/// must come at least 1 s after the last failure, then 2 s, 4 s ... up to [`MAX_DELAY`]: guessing
/// slows to about one try a minute, while the owner (or anyone) can still sign in after that wait.
/// A success, or [`FORGET_AFTER`] without failures, clears the count. Only the email is the key:
/// an attacker flooding one account slows that account, no other.
#[derive(Clone, Default)]
pub struct FailedSignins {
    by_email: Arc<Mutex<HashMap<String, Failures>>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn delay(self) -> Duration {
        if self.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (self.count - FREE_FAILURES).min(16);
        Duration::from_secs(1u64 << doublings).min(MAX_DELAY)
    }
}

impl FailedSignins {
    /// `Err(wait)` when an attempt for `email` must wait `wait` longer.
    pub fn check(&self, email: &str) -> Result<(), Duration> {
        self.check_at(email, Instant::now())
    }

    fn check_at(&self, email: &str, now: Instant) -> Result<(), Duration> {
        let by_email = self.by_email.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(failures) = by_email.get(email) else {
            return Ok(());
        };
        let ready_at = failures.last + failures.delay();
        if now < ready_at {
            Err(ready_at - now)
        } else {
            Ok(())
        }
    }

    /// Records a failed signin for `email`.
    pub fn failed(&self, email: &str) {
        self.failed_at(email, Instant::now());
    }

    fn failed_at(&self, email: &str, now: Instant) {
        let mut by_email = self.by_email.lock().unwrap_or_else(PoisonError::into_inner);
        if by_email.len() > MAX_TRACKED {
            by_email.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        let failures = by_email.entry(email.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(failures.last) >= FORGET_AFTER {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
    }

    /// A successful signin clears the email's failures.
    pub fn succeeded(&self, email: &str) {
        self.by_email
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(email);
    }
}

/// The client's address: the browser address the web client vouches for with the shared key
/// (`common::client_address`), else the last `X-Forwarded-For` hop (the one our own proxy or
/// ingress appended), else the TCP peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The key with which the web client vouches for browser addresses (none: nobody can).
#[derive(Clone, Default)]
pub struct ClientAddressKey(pub Option<Arc<SecretString>>);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    ClientAddressKey: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ClientAddressKey(key) = ClientAddressKey::from_ref(state);
        let vouched = key.and_then(|key| client_address::vouched_for(&parts.headers, &key));
        Ok(Self(vouched.or_else(|| client_address::sender(parts))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_budget_and_then_is_refused() {
        let limiter = RateLimiter::new(3);
        let client = Some(IpAddr::from([10, 0, 0, 1]));
        assert!((0..3).all(|_| limiter.allow(client)));
        assert!(!limiter.allow(client));
        // Another address has its own budget.
        assert!(limiter.allow(Some(IpAddr::from([10, 0, 0, 2]))));
    }

    #[test]
    fn failed_signins_for_one_email_slow_that_email_only_and_never_lock_it() {
        let signins = FailedSignins::default();
        let start = Instant::now();
        for n in 0..FREE_FAILURES {
            assert_eq!(
                signins.check_at("victim@test.com", start),
                Ok(()),
                "try {n}"
            );
            signins.failed_at("victim@test.com", start);
        }
        // The sixth attempt waits 1 s after the fifth failure, then the waits double.
        assert_eq!(
            signins.check_at("victim@test.com", start),
            Err(Duration::from_secs(1))
        );
        assert_eq!(signins.check_at("other@test.com", start), Ok(()));
        let mut now = start + Duration::from_secs(1);
        for expected in [2, 4, 8, 16, 32, 60, 60, 60] {
            assert_eq!(signins.check_at("victim@test.com", now), Ok(()));
            signins.failed_at("victim@test.com", now);
            assert_eq!(
                signins.check_at("victim@test.com", now),
                Err(Duration::from_secs(expected))
            );
            now += Duration::from_secs(expected);
        }
        // After the longest wait an attempt is always allowed, and a success forgets it all.
        assert_eq!(signins.check_at("victim@test.com", now), Ok(()));
        signins.succeeded("victim@test.com");
        signins.failed_at("victim@test.com", now);
        assert_eq!(signins.check_at("victim@test.com", now), Ok(()));
    }

    #[test]
    fn failures_older_than_fifteen_minutes_are_forgotten() {
        let signins = FailedSignins::default();
        let start = Instant::now();
        for _ in 0..FREE_FAILURES + 3 {
            signins.failed_at("a@test.com", start);
        }
        let later = start + FORGET_AFTER;
        signins.failed_at("a@test.com", later);
        assert_eq!(signins.check_at("a@test.com", later), Ok(()));
    }

    #[test]
    fn zero_disables_the_limit() {
        let limiter = RateLimiter::new(0);
        assert!((0..100).all(|_| limiter.allow(Some(IpAddr::from([10, 0, 0, 1])))));
    }
}
