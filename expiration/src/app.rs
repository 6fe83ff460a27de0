//! Builds the expiration application: Redis queue, event bus, the `order:created` listener, the
//! poller that fires due jobs, and the HTTP server for `/healthz` and `/readyz`.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use common::bus::{EventBus, ListenerOptions, listen};
use common::events::OrderCreated;
use common::server::{
    App, Background, Server, dead_letter_details, finish_router_with_details, readiness,
};
use tokio_util::sync::CancellationToken;

use crate::listeners::{QUEUE_GROUP, order_created};
use crate::poller::spawn_poller;
use crate::scheduler::{self, ExpirationScheduler};
use crate::settings::Settings;

/// The health server with the listener and the poller beside it; they start at build time and
/// stop with the server, or when the application is dropped without being run.
pub struct Application(App);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let redis = scheduler::connect(&settings.redis).await?;
        let scheduler = ExpirationScheduler::new(redis, &settings.redis.queue, &settings.scheduler);
        let bus = EventBus::connect(&settings.nats, "expiration").await?;

        let mut background = Background::new();
        let listener = {
            let scheduler = scheduler.clone();
            listen::<OrderCreated, _, _>(
                &bus,
                ListenerOptions::new(QUEUE_GROUP),
                background.token(),
                move |event, _delivery| {
                    let scheduler = scheduler.clone();
                    async move { order_created::handle(&scheduler, event).await }
                },
            )
            .await
            .context("subscribing to order:created")?
        };
        background.push(listener);
        background.push(spawn_poller(
            scheduler.clone(),
            bus.clone(),
            settings.scheduler.clone(),
            background.token(),
        ));

        // No API of its own: only the health routes.
        let details = dead_letter_details(bus.clone(), QUEUE_GROUP);
        let router = finish_router_with_details(
            Router::new(),
            readiness(move || {
                let (scheduler, bus) = (scheduler.clone(), bus.clone());
                async move {
                    vec![
                        ("redis", scheduler.ping().await),
                        ("event bus", bus.is_connected()),
                    ]
                }
            }),
            details,
        );
        let server = Server::bind(&settings.http).await?;
        Ok(Self(App::new(server, router, background)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Serves until `shutdown` is cancelled, then waits for the listener's in-flight events and
    /// the poller's current round to finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run_until_stopped(shutdown).await
    }
}
