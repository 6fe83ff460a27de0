//! Per-client rate limiting of signup and signin (token buckets in memory, per replica): slows down
//! password guessing and account spraying from one address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

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

/// The client's address: the last `X-Forwarded-For` hop (the one our own proxy or ingress appended)
/// when present, else the TCP peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Self(forwarded_for(&parts.headers).or(peer)))
    }
}

fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
    fn zero_disables_the_limit() {
        let limiter = RateLimiter::new(0);
        assert!((0..100).all(|_| limiter.allow(Some(IpAddr::from([10, 0, 0, 1])))));
    }

    #[test]
    fn the_last_forwarded_hop_is_the_client() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 3.3.3.3"),
        );
        assert_eq!(forwarded_for(&headers), Some(IpAddr::from([3, 3, 3, 3])));
        assert_eq!(forwarded_for(&HeaderMap::new()), None);
    }
}
