//! Builds the payments application: database, Stripe client, bus, listeners, relay, reconciler,
//! router.

use anyhow::Context as _;
use axum::extract::FromRef;
use common::backend;
use common::server::{App, Background};
use common::session::SessionKeys;

use crate::listeners::{self, QUEUE_GROUP};
use crate::routes;
use crate::saga::PaymentSaga;
use crate::settings::Settings;
use crate::store::{OrderStore, PaymentStore};
use crate::stripe::StripeGateway;

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub orders: OrderStore,
    pub saga: PaymentSaga,
    pub keys: SessionKeys,
}

/// Builds the server with the listeners and the relay beside it; they stop with the server, or when the
/// application is dropped without running.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let stripe = StripeGateway::new(&settings.stripe)?;
    let (db, bus) = backend::connect(&settings.backend, "payments").await?;
    let orders = OrderStore::new(&db);
    let payments = PaymentStore::new(&db);
    payments
        .ensure_indexes()
        .await
        .context("creating the payments indexes")?;
    let saga = PaymentSaga::new(payments.clone(), orders.clone(), stripe, bus.clone());

    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    listeners::subscribe(&mut background, &bus, &orders, &saga).await?;
    backend::relay(&mut background, payments.payments(), &bus);
    background.push(saga.spawn_reconciler(background.token(), settings.reconcile));
    // Shutdown waits for this task, and it waits for the charges in flight.
    background.push(saga.spawn_drain(background.token()));

    let state = AppState {
        orders,
        saga,
        keys: SessionKeys::new(&settings.backend.jwt.key),
    };
    let api = routes::router().with_state(state);
    backend::serve(&settings.backend, api, (db, bus), QUEUE_GROUP, background).await
}
