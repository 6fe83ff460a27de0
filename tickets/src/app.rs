//! Builds the tickets application: database, indexes, event bus, listeners, outbox relay, read
//! model, router.

use anyhow::Context as _;
use axum::extract::FromRef;
use common::backend;
use common::bus::EventBus;
use common::server::{App, Background};
use common::session::SessionKeys;

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
    let settings = settings.backend;
    let (db, bus) = backend::connect(&settings, "tickets").await?;
    let store = TicketStore::new(&db);
    store
        .ensure_indexes()
        .await
        .context("creating the tickets indexes")?;

    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    listeners::subscribe(&mut background, &bus, &store).await?;
    backend::relay(&mut background, store.tickets(), &bus);
    store
        .catalog()
        .spawn(&mut background, &bus, store.tickets());
    let read_model = store.catalog().details();
    let state = AppState {
        store,
        bus: bus.clone(),
        keys: SessionKeys::new(&settings.jwt.key),
    };
    let api = routes::router().with_state(state);
    backend::serve_with_details(
        &settings,
        api,
        (db, bus),
        QUEUE_GROUP,
        background,
        read_model,
    )
    .await
}
