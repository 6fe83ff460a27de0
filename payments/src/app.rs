//! Builds the payments application: database, Stripe client, bus, listeners, relay, reconciler,
//! router.

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

use crate::listeners::{self, QUEUE_GROUP};
use crate::routes;
use crate::saga::PaymentSaga;
use crate::settings::Settings;
use crate::store::{OrderStore, PaymentStore};
use crate::stripe::StripeGateway;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub orders: OrderStore,
    pub saga: PaymentSaga,
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
        let stripe = StripeGateway::new(&settings.stripe)?;
        let db = common::store::connect(&settings.mongo, "payments").await?;
        let orders = OrderStore::new(&db);
        let payments = PaymentStore::new(&db);
        payments
            .ensure_indexes()
            .await
            .context("creating the payments indexes")?;
        let bus = EventBus::connect(&settings.nats, "payments").await?;
        let saga = PaymentSaga::new(payments.clone(), orders.clone(), stripe, bus.clone());

        let mut background = spawn_listeners(&bus, &orders, &saga).await?;
        background.push(Arc::clone(payments.versions()).spawn_relay(
            bus.clone(),
            background.token(),
            RelayTiming::DEFAULT,
        ));
        background.push(saga.spawn_reconciler(background.token(), settings.reconcile));
        // Shutdown waits for this task, and it waits for the charges in flight.
        background.push(saga.spawn_drain(background.token()));

        let state = AppState {
            orders,
            saga,
            keys: SessionKeys::new(&settings.jwt.key),
        };
        let router = finish_router_with_details(
            routes::router().with_state(state),
            database_and_bus_readiness(db, bus.clone()),
            dead_letter_details(bus, QUEUE_GROUP),
        );
        let server = Server::bind(&settings.http).await?;
        Ok(Self(App::new(server, router, background)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run_until_stopped(shutdown).await
    }
}

async fn spawn_listeners(
    bus: &EventBus,
    orders: &OrderStore,
    saga: &PaymentSaga,
) -> anyhow::Result<Background> {
    // Dropped on an early return, which stops whatever already started.
    let mut background = Background::new();
    let created = {
        let orders = orders.clone();
        listen::<OrderCreated, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            background.token(),
            move |event, _| {
                let orders = orders.clone();
                async move { listeners::order_created::handle(&orders, event).await }
            },
        )
        .await?
    };
    background.push(created);
    let cancelled = {
        let (orders, saga) = (orders.clone(), saga.clone());
        listen::<OrderCancelled, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            background.token(),
            move |event, _| {
                let (orders, saga) = (orders.clone(), saga.clone());
                async move { listeners::order_cancelled::handle(&orders, &saga, event).await }
            },
        )
        .await?
    };
    background.push(cancelled);
    Ok(background)
}
