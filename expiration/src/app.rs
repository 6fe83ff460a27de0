//! Builds the expiration application: Redis queue, event bus, the `order:created` listener, the
//! poller that fires due jobs, and the HTTP server for `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use common::bus::{EventBus, ListenerOptions, listen};
use common::events::OrderCreated;
use common::server::{ReadinessCheck, Server, finish_router};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::listeners::{QUEUE_GROUP, order_created};
use crate::poller::spawn_poller;
use crate::scheduler::{self, ExpirationScheduler};
use crate::settings::Settings;

pub struct Application {
    server: Server,
    router: Router,
    /// The listener and the poller; they start at build time and stop with `stop`.
    background: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    /// Stops the background tasks if the application is dropped without being run.
    _stop_on_drop: DropGuard,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let redis = scheduler::connect(&settings.redis).await?;
        let scheduler = ExpirationScheduler::new(redis, &settings.redis.queue, &settings.scheduler);
        let bus = EventBus::connect(&settings.nats, "expiration").await?;

        let stop = CancellationToken::new();
        let listener = {
            let scheduler = scheduler.clone();
            listen::<OrderCreated, _, _>(
                &bus,
                ListenerOptions::new(QUEUE_GROUP),
                stop.clone(),
                move |event, _delivery| {
                    let scheduler = scheduler.clone();
                    async move { order_created::handle(&scheduler, event).await }
                },
            )
            .await
            .context("subscribing to order:created")?
        };
        let poller = spawn_poller(
            scheduler.clone(),
            bus.clone(),
            settings.scheduler.clone(),
            stop.clone(),
        );

        // No API of its own: only the health routes.
        let router = finish_router(Router::new(), readiness(scheduler, bus));
        let server = Server::bind(&settings.http)
            .await
            .with_context(|| format!("binding {}:{}", settings.http.host, settings.http.port))?;
        Ok(Self {
            server,
            router,
            background: vec![listener, poller],
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Serves until `shutdown` is cancelled, then waits for the listener's in-flight events and
    /// the poller's current round to finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self {
            server,
            router,
            background,
            stop,
            _stop_on_drop: stop_on_return,
        } = self;
        // The background tasks watch `stop`: the server cancels it once it has stopped serving,
        // and the guard if serving fails, so they never outlive this call.
        let _stop_on_return = stop_on_return;
        let relay = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => relay.cancel(),
                _ = relay.cancelled() => {}
            }
        });
        server.run(router, stop, background).await
    }
}

fn readiness(scheduler: ExpirationScheduler, bus: EventBus) -> ReadinessCheck {
    Arc::new(move || {
        let scheduler = scheduler.clone();
        let bus = bus.clone();
        Box::pin(async move {
            vec![
                ("redis", scheduler.ping().await),
                ("event bus", bus.is_connected()),
            ]
        })
    })
}
