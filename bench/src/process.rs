//! Stopping a process the benchmark started.

use std::time::Duration;

use tokio::process::{Child, Command};

/// Sends `signal` (e.g. `-TERM`) to `child`, then kills it if it has not exited within `grace`.
pub async fn signal_then_kill(child: &mut Child, signal: &str, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
