//! Builds the auth application: database, indexes, state, router, listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::FromRef;
use common::server::{App, Background, Server, database_readiness, finish_router};
use common::session::{CookiePolicy, SessionKeys};
use common::store::RequestLane;
use tokio::sync::OnceCell;

use crate::rate_limit::{ClientAddressKey, FailedSignins, RateLimiter};
use crate::routes;
use crate::settings::Settings;
use crate::store::UserStore;

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub users: UserStore,
    pub keys: SessionKeys,
    pub cookie: CookiePolicy,
    pub token_ttl: Duration,
    /// Verified against for unknown emails, so signin timing does not reveal which emails exist.
    /// Made on the first such signin, not at start: a hash holds a hashing thread's 19 MiB buffer.
    pub dummy_hash: Arc<OnceCell<String>>,
    pub rate_limiter: RateLimiter,
    /// Per-account slow-down after repeated failed signins.
    pub failed_signins: FailedSignins,
    pub client_address_key: ClientAddressKey,
}

/// Builds the service; nothing runs beside its server: no listeners or relays.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let db = common::store::connect(&settings.mongo, "auth").await?;
    let users = UserStore::new(&db);
    users
        .ensure_indexes()
        .await
        .context("creating the users indexes")?;
    // Before serving: a user signed up before `emails` existed must be able to sign in at once.
    let copied = users
        .backfill_emails()
        .await
        .context("copying users into emails")?;
    if copied > 0 {
        tracing::info!(copied, "copied users written before the emails collection");
    }
    let state = AppState {
        users,
        keys: SessionKeys::new(&settings.jwt.key),
        cookie: CookiePolicy {
            secure: settings.cookie_secure,
            max_age: settings.token_ttl,
        },
        token_ttl: settings.token_ttl,
        dummy_hash: Arc::new(OnceCell::new()),
        rate_limiter: RateLimiter::new(settings.rate_limit_per_minute),
        failed_signins: FailedSignins::default(),
        client_address_key: ClientAddressKey(settings.client_address_key.map(Arc::new)),
    };
    // Health and readiness stay outside the lane: a queue of requests must not fail the probes.
    let api = RequestLane::new(settings.mongo.request_concurrency)
        .around(routes::router().with_state(state));
    let router = finish_router(api, database_readiness(db));
    let server = Server::bind(&settings.http).await?;
    Ok(App::new(server, router, Background::new()))
}
