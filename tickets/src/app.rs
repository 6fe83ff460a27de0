//! Builds the tickets application: database, indexes, event bus, listeners, outbox relay, router.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::FromRef;
use common::bus::{EventBus, ListenerOptions, listen};
use common::events::{OrderCancelled, OrderCreated};
use common::server::{
    App, Background, Server, database_and_bus_readiness, dead_letter_details,
    finish_router_with_details,
};
use common::session::SessionKeys;
use common::store::RelayTiming;
use tokio_util::sync::CancellationToken;

use crate::listeners::{QUEUE_GROUP, order_cancelled, order_created};
use crate::routes;
use crate::settings::Settings;
use crate::store::TicketStore;

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

/// The server with the listeners and the relay beside it; they stop with the server, or when the
/// application is dropped without running.
pub struct Application(App);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = common::store::connect(&settings.mongo, "tickets").await?;
        let store = TicketStore::new(&db);
        store
            .ensure_indexes()
            .await
            .context("creating the tickets indexes")?;
        let bus = EventBus::connect(&settings.nats, "tickets").await?;
        let server = Server::bind(&settings.http).await?;

        let background = spawn_background(&store, &bus).await?;
        let state = AppState {
            store,
            bus: bus.clone(),
            keys: SessionKeys::new(&settings.jwt.key),
        };
        let router = finish_router_with_details(
            routes::router().with_state(state),
            database_and_bus_readiness(db, bus.clone()),
            dead_letter_details(bus, QUEUE_GROUP),
        );
        Ok(Self(App::new(server, router, background)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run_until_stopped(shutdown).await
    }
}

/// The two order listeners and the outbox relay.
async fn spawn_background(store: &TicketStore, bus: &EventBus) -> anyhow::Result<Background> {
    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    let created = {
        let (store, handler_bus) = (store.clone(), bus.clone());
        listen::<OrderCreated, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            background.token(),
            move |event, _delivery| {
                let (store, bus) = (store.clone(), handler_bus.clone());
                async move { order_created::handle(&store, &bus, event).await }
            },
        )
        .await?
    };
    background.push(created);
    let cancelled = {
        let (store, handler_bus) = (store.clone(), bus.clone());
        listen::<OrderCancelled, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            background.token(),
            move |event, _delivery| {
                let (store, bus) = (store.clone(), handler_bus.clone());
                async move { order_cancelled::handle(&store, &bus, event).await }
            },
        )
        .await?
    };
    background.push(cancelled);
    background.push(Arc::new(store.tickets.clone()).spawn_relay(
        bus.clone(),
        background.token(),
        RelayTiming::DEFAULT,
    ));
    Ok(background)
}
