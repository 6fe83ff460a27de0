//! Builds the orders application: database, indexes, event bus, listeners, outbox relay, router,
//! HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::FromRef;
use chrono::TimeDelta;
use common::bus::{Delivery, EventBus, ListenerOptions, Outcome, listen};
use common::events::{
    ExpirationComplete, PaymentCreated, PaymentUpdated, TicketCreated, TicketUpdated,
};
use common::server::{
    App, Background, Server, database_and_bus_readiness, dead_letter_details,
    finish_router_with_details,
};
use common::session::SessionKeys;
use common::store::RelayTiming;
use tokio_util::sync::CancellationToken;

use crate::listeners::{self, QUEUE_GROUP, patient};
use crate::routes;
use crate::settings::Settings;
use crate::store::OrderStore;
use crate::sweeper::{OutageClock, SweepTiming, spawn_sweeper};

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: OrderStore,
    pub bus: EventBus,
    pub keys: SessionKeys,
    pub expiration_window: TimeDelta,
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
        let db = common::store::connect(&settings.mongo, "orders").await?;
        let store = OrderStore::new(&db);
        store
            .ensure_indexes()
            .await
            .context("creating the orders indexes")?;
        let bus = EventBus::connect(&settings.nats, "orders").await?;
        let server = Server::bind(&settings.http).await?;

        let clock = OutageClock::new();
        let mut background = spawn_background(&store, &bus, &clock, settings.sweep).await?;
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
            keys: SessionKeys::new(&settings.jwt.key),
            expiration_window: settings.expiration_window,
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

    /// Serves until `shutdown` is cancelled, then stops the listeners and the relay and waits for
    /// them to finish what they are doing.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run_until_stopped(shutdown).await
    }
}

/// The four listeners (queue group `orders-service`) and the outbox relay.
/// How soon an expiration that came during or right after an outage is looked at again.
const EXPIRY_AFTER_OUTAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

async fn spawn_background(
    store: &OrderStore,
    bus: &EventBus,
    clock: &OutageClock,
    sweep: SweepTiming,
) -> anyhow::Result<Background> {
    let options = || ListenerOptions::new(QUEUE_GROUP);
    // Dropped on an early return, which stops whatever already started.
    let mut tasks = Background::new();

    let s = store.clone();
    tasks.push(
        listen::<TicketCreated, _, _>(bus, options(), tasks.token(), move |event, delivery| {
            let store = s.clone();
            async move {
                Ok(patient(
                    listeners::ticket_created::handle(&store, event).await?,
                    delivery,
                ))
            }
        })
        .await?,
    );

    let s = store.clone();
    tasks.push(
        listen::<TicketUpdated, _, _>(bus, options(), tasks.token(), move |event, delivery| {
            let store = s.clone();
            async move {
                Ok(patient(
                    listeners::ticket_updated::handle(&store, event).await?,
                    delivery,
                ))
            }
        })
        .await?,
    );

    let (s, b, c) = (store.clone(), bus.clone(), clock.clone());
    tasks.push(
        listen::<ExpirationComplete, _, _>(
            bus,
            options(),
            tasks.token(),
            move |event, delivery: Delivery| {
                let (store, bus, clock) = (s.clone(), b.clone(), c.clone());
                async move {
                    // After an outage, payments held back by it apply first (see OutageClock).
                    if !clock.calm_for(sweep.grace) {
                        return Ok(Outcome::Retry(EXPIRY_AFTER_OUTAGE_RETRY));
                    }
                    let outcome =
                        listeners::expiration_complete::handle(&store, &bus, event, delivery)
                            .await
                            .inspect_err(|_| clock.trouble())?;
                    Ok(patient(outcome, delivery))
                }
            },
        )
        .await?,
    );

    let s = store.clone();
    tasks.push(
        listen::<PaymentCreated, _, _>(bus, options(), tasks.token(), move |event, delivery| {
            let store = s.clone();
            async move {
                Ok(patient(
                    listeners::payment_created::handle(&store, event).await?,
                    delivery,
                ))
            }
        })
        .await?,
    );

    let s = store.clone();
    tasks.push(
        listen::<PaymentUpdated, _, _>(bus, options(), tasks.token(), move |event, delivery| {
            let store = s.clone();
            async move {
                Ok(patient(
                    listeners::payment_updated::handle(&store, event).await?,
                    delivery,
                ))
            }
        })
        .await?,
    );

    tasks.push(Arc::new(store.orders().clone()).spawn_relay(
        bus.clone(),
        tasks.token(),
        RelayTiming::DEFAULT,
    ));
    Ok(tasks)
}
