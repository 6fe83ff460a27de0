//! Helpers for integration tests (feature `testing`): real infrastructure from the environment the
//! test command sets up, with a fresh database and fresh NATS stream/subjects per test.

use std::time::Duration;

use secrecy::SecretString;

use crate::session::{COOKIE_NAME, SessionKeys, encode_session};
use crate::settings::Env;

/// The JWT key every test app uses.
pub const TEST_JWT_KEY: &str = "test-jwt-key-not-a-secret";

fn infra_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests through `scripts/test.sh`, which starts FerretDB, NATS and Redis \
             and exports their URLs"
        ),
    }
}

/// A short unique suffix for names of databases, streams, queues.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The environment of one test: infrastructure URLs from the test command, a fresh database, a
/// fresh stream with its own subject prefix, the test JWT key, an ephemeral port.
pub fn test_env(database_prefix: &str, extra: &[(&str, &str)]) -> Env {
    let suffix = unique_suffix();
    let mut pairs: Vec<(String, String)> = vec![
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), "0".into()),
        ("JWT_KEY".into(), TEST_JWT_KEY.into()),
        ("MONGO_DB".into(), format!("{database_prefix}_{suffix}")),
        ("NATS_STREAM".into(), format!("test_{suffix}")),
        ("NATS_SUBJECT_PREFIX".into(), format!("t{suffix}.")),
    ];
    for name in ["MONGO_URL", "NATS_URL", "REDIS_URL"] {
        if let Ok(value) = std::env::var(name) {
            pairs.push((name.into(), value));
        }
    }
    pairs.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    Env::from_pairs(pairs)
}

/// Panics unless the infrastructure URLs are set (call first in `spawn_app`).
pub fn require_infra(names: &[&str]) {
    for name in names {
        infra_var(name);
    }
}

/// The `Cookie` header of a signed-in user, as the auth service would have issued it.
pub fn session_cookie(user_id: &str, email: &str) -> String {
    let keys = SessionKeys::new(&SecretString::from(TEST_JWT_KEY.to_owned()));
    let token = keys
        .issue(user_id, email, Duration::from_secs(3600))
        .unwrap_or_else(|err| panic!("cannot sign a test token: {err}"));
    format!("{COOKIE_NAME}={}", encode_session(&token))
}

/// A fresh ObjectId-like user id.
pub fn new_user_id() -> String {
    mongodb::bson::oid::ObjectId::new().to_hex()
}
