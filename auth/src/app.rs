//! Builds the auth application: database, indexes, state, router, listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::FromRef;
use common::server::{App, Background, Server, database_readiness, finish_router};
use common::session::{CookiePolicy, SessionKeys};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::rate_limit::{ClientAddressKey, FailedSignins, RateLimiter};
use crate::routes;
use crate::settings::Settings;
use crate::store::UserStore;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
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

impl FromRef<AppState> for ClientAddressKey {
    fn from_ref(state: &AppState) -> Self {
        state.client_address_key.clone()
    }
}

impl FromRef<AppState> for SessionKeys {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// Nothing runs beside the server: no listeners or relays.
pub struct Application(App);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = common::store::connect(&settings.mongo, "auth").await?;
        let users = UserStore::new(&db);
        users
            .ensure_indexes()
            .await
            .context("creating the users indexes")?;
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
        let router = finish_router(routes::router().with_state(state), database_readiness(db));
        let server = Server::bind(&settings.http).await?;
        Ok(Self(App::new(server, router, Background::new())))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run_until_stopped(shutdown).await
    }
}
