//! Builds the expiration application: Redis queue, event bus, the `order:created` listener, the
//! poller that fires due jobs, and the HTTP server for `/healthz` and `/readyz`.

use axum::Router;
use common::bus::EventBus;
use common::server::{
    App, Background, Server, dead_letter_details, finish_router_with_details, readiness,
};

use crate::listeners::{self, QUEUE_GROUP};
use crate::poller::spawn_poller;
use crate::scheduler::{self, ExpirationScheduler};
use crate::settings::Settings;

/// The health server with the listener and the poller beside it; they start at build time and
/// stop with the server, or when the application is dropped without being run.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let redis = scheduler::connect(&settings.redis).await?;
    let scheduler = ExpirationScheduler::new(redis, &settings.redis.queue, &settings.scheduler);
    let bus = EventBus::connect(&settings.nats, "expiration").await?;

    let mut background = Background::new();
    listeners::subscribe(&mut background, &bus, &scheduler).await?;
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
    Ok(App::new(server, router, background))
}
