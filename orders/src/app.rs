//! Builds the orders application: database, indexes, event bus, listeners, outbox relay, router,
//! HTTP listener.

use anyhow::Context as _;
use axum::extract::FromRef;
use chrono::TimeDelta;
use common::backend;
use common::bus::EventBus;
use common::server::{App, Background};
use common::session::SessionKeys;

use crate::listeners::{self, QUEUE_GROUP};
use crate::routes;
use crate::settings::Settings;
use crate::store::OrderStore;
use crate::sweeper::{OutageClock, spawn_sweeper};

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: OrderStore,
    pub bus: EventBus,
    pub keys: SessionKeys,
    pub expiration_window: TimeDelta,
}

/// Builds the server with the listeners and the relay beside it; they stop with the server, or when the
/// application is dropped without running.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let (db, bus) = backend::connect(&settings.backend, "orders").await?;
    let store = OrderStore::new(&db);
    store
        .ensure_indexes()
        .await
        .context("creating the orders indexes")?;
    // Before serving: orders written before `user_orders` and `order_expiries` existed must be
    // listed and swept from the first request on.
    let entered = store
        .backfill(&bus)
        .await
        .context("entering existing orders into user_orders and order_expiries")?;
    if entered > 0 {
        tracing::info!(entered, "entered orders written before their indexes");
    }

    let clock = OutageClock::new();
    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    let context = listeners::Context {
        store: store.clone(),
        bus: bus.clone(),
        clock: clock.clone(),
        grace: settings.sweep.grace,
    };
    listeners::subscribe(&mut background, &bus, context).await?;
    backend::relay(&mut background, store.orders(), &bus);
    background.push(clock.watch(bus.clone(), background.token()));
    background.push(spawn_sweeper(
        store.clone(),
        bus.clone(),
        settings.sweep,
        clock,
        background.token(),
    ));
    let state = AppState {
        store,
        bus: bus.clone(),
        keys: SessionKeys::new(&settings.backend.jwt.key),
        expiration_window: settings.expiration_window,
    };
    let api = routes::router().with_state(state);
    backend::serve(&settings.backend, api, (db, bus), QUEUE_GROUP, background).await
}
