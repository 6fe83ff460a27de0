//! Builds the tickets application: database, indexes, event bus, listeners, outbox relay, router.

use anyhow::Context as _;
use axum::extract::FromRef;
use common::bus::EventBus;
use common::server::{
    App, Background, Server, database_and_bus_readiness, dead_letter_details,
    finish_router_with_details,
};
use common::session::SessionKeys;
use common::store::RelayTiming;

use crate::listeners::{self, QUEUE_GROUP};
use crate::routes;
use crate::settings::Settings;
use crate::store::TicketStore;

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: TicketStore,
    pub bus: EventBus,
    pub keys: SessionKeys,
}

/// Builds the server with the listeners and the relay beside it; they stop with the server, or when the
/// application is dropped without running.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let db = common::store::connect(&settings.mongo, "tickets").await?;
    let store = TicketStore::new(&db);
    store
        .ensure_indexes()
        .await
        .context("creating the tickets indexes")?;
    let bus = EventBus::connect(&settings.nats, "tickets").await?;
    let server = Server::bind(&settings.http).await?;

    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    listeners::subscribe(&mut background, &bus, &store).await?;
    background.push(store.tickets().spawn_relay(
        bus.clone(),
        background.token(),
        RelayTiming::DEFAULT,
    ));
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
    Ok(App::new(server, router, background))
}
