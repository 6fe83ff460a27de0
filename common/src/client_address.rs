//! The address of the browser behind a request, for per-address rate limits.
//!
//! A request reaching a service through our proxy (nginx locally, ingress-nginx in the cluster)
//! carries the address the proxy saw as the last `X-Forwarded-For` hop. The web client calls auth
//! server-side, though, so that hop is the client itself: every web user would share one budget.
//! The client therefore vouches for the browser's address in [`CLIENT_ADDRESS_HEADER`], with the
//! key both share (`CLIENT_ADDRESS_KEY`) in [`CLIENT_ADDRESS_KEY_HEADER`]; auth believes the
//! address only with the right key, so a browser cannot choose its own address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;

/// The browser's address, as the web client vouches for it.
pub const CLIENT_ADDRESS_HEADER: &str = "x-client-address";
/// The shared key that makes [`CLIENT_ADDRESS_HEADER`] believable.
pub const CLIENT_ADDRESS_KEY_HEADER: &str = "x-client-address-key";

/// The last `X-Forwarded-For` hop: the address our own proxy saw (hops before it are whatever the
/// sender wrote).
pub fn last_forwarded_hop(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .next_back()
}

/// Who sent this request: the last forwarded hop, else the TCP peer.
pub fn sender(parts: &Parts) -> Option<IpAddr> {
    last_forwarded_hop(&parts.headers).or_else(|| {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    })
}

/// The browser address the web client vouches for, if it carries `key` (compared in constant
/// time).
pub fn vouched_for(headers: &HeaderMap, key: &SecretString) -> Option<IpAddr> {
    let given = headers.get(CLIENT_ADDRESS_KEY_HEADER)?.as_bytes();
    if !bool::from(given.ct_eq(key.expose_secret().as_bytes())) {
        return None;
    }
    headers
        .get(CLIENT_ADDRESS_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: &str = "a-client-address-key-of-32-bytes!";

    #[test]
    fn the_last_forwarded_hop_is_the_sender() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 3.3.3.3"),
        );
        assert_eq!(
            last_forwarded_hop(&headers),
            Some(IpAddr::from([3, 3, 3, 3]))
        );
        assert_eq!(last_forwarded_hop(&HeaderMap::new()), None);
    }

    #[test]
    fn a_vouched_address_counts_only_with_the_right_key() {
        let key = SecretString::from(KEY);
        let headers = |address: &'static str, given: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(CLIENT_ADDRESS_HEADER, HeaderValue::from_static(address));
            headers.insert(CLIENT_ADDRESS_KEY_HEADER, HeaderValue::from_static(given));
            headers
        };
        assert_eq!(
            vouched_for(&headers("203.0.113.9", KEY), &key),
            Some(IpAddr::from([203, 0, 113, 9]))
        );
        assert_eq!(vouched_for(&headers("203.0.113.9", "guess"), &key), None);
        assert_eq!(vouched_for(&headers("not an address", KEY), &key), None);
        let mut unkeyed = HeaderMap::new();
        unkeyed.insert(
            CLIENT_ADDRESS_HEADER,
            HeaderValue::from_static("203.0.113.9"),
        );
        assert_eq!(vouched_for(&unkeyed, &key), None);
    }
}
