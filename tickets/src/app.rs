//! Builds the tickets application: database, indexes, event bus, listeners, outbox relay, router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::FromRef;
use common::bus::{EventBus, ListenerOptions, listen};
use common::events::{OrderCancelled, OrderCreated};
use common::server::{ReadinessCheck, Server, finish_router};
use common::session::SessionKeys;
use mongodb::Database;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::listeners::{QUEUE_GROUP, order_cancelled, order_created};
use crate::routes;
use crate::settings::Settings;
use crate::store::TicketStore;

/// How often the outbox relay looks for changes whose events were not published.
pub const RELAY_INTERVAL: Duration = Duration::from_secs(1);
/// Changes younger than this are left to the request that made them, which publishes right away.
pub const RELAY_MIN_AGE: Duration = Duration::from_secs(3);

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: TicketStore,
    pub bus: EventBus,
    pub keys: SessionKeys,
}

impl FromRef<AppState> for SessionKeys {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

pub struct Application {
    server: Server,
    router: Router,
    background: Vec<JoinHandle<()>>,
    /// Stops the listeners and the relay, also when the application is dropped without running.
    stop: DropGuard,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = common::store::connect(&settings.mongo, "tickets").await?;
        let store = TicketStore::new(&db);
        store
            .ensure_indexes()
            .await
            .context("creating the tickets indexes")?;
        let bus = EventBus::connect(&settings.nats, "tickets").await?;
        let server = Server::bind(&settings.http)
            .await
            .with_context(|| format!("binding {}:{}", settings.http.host, settings.http.port))?;

        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let background = spawn_background(&store, &bus, &stop).await?;
        let state = AppState {
            store,
            bus: bus.clone(),
            keys: SessionKeys::new(&settings.jwt.key),
        };
        let router = finish_router(routes::router().with_state(state), readiness(db, bus));
        Ok(Self {
            server,
            router,
            background,
            stop: guard,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let stop = self.stop.disarm();
        let linked = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => linked.cancel(),
                _ = linked.cancelled() => {}
            }
        });
        self.server.run(self.router, stop, self.background).await
    }
}

/// The two order listeners and the outbox relay.
async fn spawn_background(
    store: &TicketStore,
    bus: &EventBus,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let created = {
        let (store, handler_bus) = (store.clone(), bus.clone());
        listen::<OrderCreated, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            stop.clone(),
            move |event, _delivery| {
                let (store, bus) = (store.clone(), handler_bus.clone());
                async move { order_created::handle(&store, &bus, event).await }
            },
        )
        .await?
    };
    let cancelled = {
        let (store, handler_bus) = (store.clone(), bus.clone());
        listen::<OrderCancelled, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            stop.clone(),
            move |event, _delivery| {
                let (store, bus) = (store.clone(), handler_bus.clone());
                async move { order_cancelled::handle(&store, &bus, event).await }
            },
        )
        .await?
    };
    let relay = Arc::new(store.tickets.clone()).spawn_relay(
        bus.clone(),
        stop.clone(),
        RELAY_INTERVAL,
        RELAY_MIN_AGE,
    );
    Ok(vec![created, cancelled, relay])
}

fn readiness(db: Database, bus: EventBus) -> ReadinessCheck {
    Arc::new(move || {
        let (db, bus) = (db.clone(), bus.clone());
        Box::pin(async move {
            vec![
                ("database", common::store::ping(&db).await),
                ("event bus", bus.is_connected()),
            ]
        })
    })
}
