//! What the backends with their own database on the event bus (tickets, orders, payments) do alike
//! when they start: connect to both, relay their outbox, and serve their API beside health,
//! readiness (database and bus) and the dead letters of their queue group.

use std::sync::Arc;

use axum::Router;
use mongodb::Database;

use crate::bus::EventBus;
use crate::server::{
    App, Background, ReadinessDetails, Server, database_and_bus_readiness, dead_letter_details,
    finish_router_with_details,
};
use crate::settings::BackendSettings;
use crate::store::{RelayTiming, RequestLane, VersionedRecord, VersionedStore};

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
    let none: ReadinessDetails = Arc::new(|| Box::pin(async { serde_json::Map::new() }));
    serve_with_details(settings, api, (db, bus), queue_group, background, none).await
}

/// [`serve`], with `details` of the service's own added to `/readyz`'s ready answer.
pub async fn serve_with_details(
    settings: &BackendSettings,
    api: Router,
    (db, bus): (Database, EventBus),
    queue_group: &'static str,
    background: Background,
    details: ReadinessDetails,
) -> anyhow::Result<App> {
    let dead_letters = dead_letter_details(bus.clone(), queue_group);
    let all: ReadinessDetails = Arc::new(move || {
        let (dead_letters, details) = (dead_letters.clone(), details.clone());
        Box::pin(async move {
            let mut all = dead_letters().await;
            all.extend(details().await);
            all
        })
    });
    // Health and readiness stay outside the lane: a queue of requests must not fail the probes.
    let api = RequestLane::new(settings.mongo.request_concurrency).around(api);
    let router = finish_router_with_details(api, database_and_bus_readiness(db, bus), all);
    let server = Server::bind(&settings.http).await?;
    Ok(App::new(server, router, background))
}
