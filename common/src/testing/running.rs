//! What keeps a test's apps running: they stop when the test drops their guard (also when it
//! fails), so no server or listener outlives its test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type AppTask = JoinHandle<std::io::Result<()>>;

/// Apps started with one shutdown token, cancelled on drop; observers of the test may share it.
#[derive(Default)]
pub struct Running {
    shutdown: CancellationToken,
    tasks: Mutex<Vec<AppTask>>,
}

impl Running {
    /// A guard with nothing started yet (e.g. only for observers).
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard of one app: `run` gets the token that stops it (`|t| app.run_until_stopped(t)`).
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let running = Self::new();
        running.also(run);
        running
    }

    /// Starts one more app under the same token.
    pub fn also<F>(&self, run: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let task = tokio::spawn(run(self.shutdown.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    /// The token that stops everything this guard started.
    pub fn token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Stops the apps (as SIGTERM would) without waiting for them.
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Stops the apps and waits until each has stopped cleanly.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            task.await
                .expect("the app task")
                .expect("the app stops cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An app a test has built and started: where it serves its API and `GET /metrics`, and the guard
/// that stops it.
pub struct Started {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub running: Running,
}

/// Awaits `build` (the test fails, naming `service`, when the app does not build) and runs the app
/// until the returned guard is dropped or stopped.
pub async fn start(
    service: &str,
    build: impl Future<Output = anyhow::Result<crate::server::App>>,
) -> Started {
    let app = build
        .await
        .unwrap_or_else(|err| panic!("the {service} app does not build: {err:#}"));
    Started {
        addr: app.addr(),
        metrics_addr: app.metrics_addr(),
        running: Running::spawn(|shutdown| app.run_until_stopped(shutdown)),
    }
}
