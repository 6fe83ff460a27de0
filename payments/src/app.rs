//! Builds the payments application: database, Stripe client, bus, listeners, relay, router.

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
use tokio_util::sync::CancellationToken;

use crate::listeners::{self, QUEUE_GROUP};
use crate::routes;
use crate::settings::Settings;
use crate::store::{OrderStore, PaymentStore};
use crate::stripe::StripeGateway;

/// How often the outbox relay looks for unpublished `payment:created` events, and how old they must
/// be (younger ones are still being published by their request).
const RELAY_INTERVAL: Duration = Duration::from_secs(1);
const RELAY_MIN_AGE: Duration = Duration::from_secs(3);

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub orders: OrderStore,
    pub payments: PaymentStore,
    pub bus: EventBus,
    pub stripe: StripeGateway,
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
    /// Stops the listeners and the relay; cancelled when the server stops.
    tasks_shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let stripe = StripeGateway::new(&settings.stripe)?;
        let db = common::store::connect(&settings.mongo, "payments").await?;
        let orders = OrderStore::new(&db);
        let payments = PaymentStore::new(&db);
        payments
            .versions()
            .ensure_indexes()
            .await
            .context("creating the payments indexes")?;
        let bus = EventBus::connect(&settings.nats, "payments").await?;

        let tasks_shutdown = CancellationToken::new();
        let mut background = spawn_listeners(&bus, &orders, &tasks_shutdown).await?;
        background.push(Arc::clone(payments.versions()).spawn_relay(
            bus.clone(),
            tasks_shutdown.clone(),
            RELAY_INTERVAL,
            RELAY_MIN_AGE,
        ));

        let state = AppState {
            orders,
            payments,
            bus: bus.clone(),
            stripe,
            keys: SessionKeys::new(&settings.jwt.key),
        };
        let router = finish_router(routes::router().with_state(state), readiness(db, bus));
        let server = Server::bind(&settings.http)
            .await
            .with_context(|| format!("binding {}:{}", settings.http.host, settings.http.port))?;
        Ok(Self {
            server,
            router,
            tasks_shutdown,
            background,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let tasks_shutdown = self.tasks_shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tasks_shutdown.cancel();
        });
        self.server
            .run(self.router, self.tasks_shutdown, self.background)
            .await
    }
}

async fn spawn_listeners(
    bus: &EventBus,
    orders: &OrderStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let created = {
        let orders = orders.clone();
        listen::<OrderCreated, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            shutdown.clone(),
            move |event, _| {
                let orders = orders.clone();
                async move { listeners::order_created::handle(&orders, event).await }
            },
        )
        .await?
    };
    let cancelled = {
        let orders = orders.clone();
        listen::<OrderCancelled, _, _>(
            bus,
            ListenerOptions::new(QUEUE_GROUP),
            shutdown.clone(),
            move |event, _| {
                let orders = orders.clone();
                async move { listeners::order_cancelled::handle(&orders, event).await }
            },
        )
        .await?
    };
    Ok(vec![created, cancelled])
}

fn readiness(db: Database, bus: EventBus) -> ReadinessCheck {
    Arc::new(move || {
        let db = db.clone();
        let bus = bus.clone();
        Box::pin(async move {
            vec![
                ("database", common::store::ping(&db).await),
                ("event bus", bus.is_connected()),
            ]
        })
    })
}
