//! What the backends with their own database on the event bus (tickets, orders, payments) do alike
//! when they start: connect to both, relay their outbox, and serve their API beside health,
//! readiness (database and bus) and the dead letters of their queue group.

use axum::Router;
use mongodb::Database;

use crate::bus::EventBus;
use crate::server::{
    App, Background, Server, database_and_bus_readiness, dead_letter_details,
    finish_router_with_details,
};
use crate::settings::BackendSettings;
use crate::store::{RelayTiming, VersionedRecord, VersionedStore};

/// The service's database and the event bus, each connected as `client_name`.
pub async fn connect(
    settings: &BackendSettings,
    client_name: &str,
) -> anyhow::Result<(Database, EventBus)> {
    let db = crate::store::connect(&settings.mongo, client_name).await?;
    let bus = EventBus::connect(&settings.nats, client_name).await?;
    Ok((db, bus))
}

/// Runs `store`'s outbox relay beside the server, with the production timing.
pub fn relay<T: VersionedRecord>(
    background: &mut Background,
    store: &VersionedStore<T>,
    bus: &EventBus,
) {
    background.push(store.spawn_relay(bus.clone(), background.token(), RelayTiming::DEFAULT));
}

/// The application: `api` with health, readiness on `db` and `bus`, and the dead letters of
/// `queue_group` beside a ready answer, served where `settings` say, with `background` beside it.
pub async fn serve(
    settings: &BackendSettings,
    api: Router,
    (db, bus): (Database, EventBus),
    queue_group: &'static str,
    background: Background,
) -> anyhow::Result<App> {
    let router = finish_router_with_details(
        api,
        database_and_bus_readiness(db, bus.clone()),
        dead_letter_details(bus, queue_group),
    );
    let server = Server::bind(&settings.http).await?;
    Ok(App::new(server, router, background))
}
