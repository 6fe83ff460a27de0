//! Startup time of each service: a replica is started from the same binary and the same
//! environment file as the running one (as `scripts/app.sh` does: `env -i bash -c 'source <env>
//! && exec <binary>'`), on a spare loopback port, and timed from spawn to the first `GET /readyz`
//! = 200. It then joins the running service's queue groups like a second replica would (the app
//! is idle at that point), and is stopped with SIGTERM.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::monitor::mib;
use crate::process::signal_then_kill;
use crate::procfs;
use crate::stack::Stack;

const READY_WITHIN: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(2);
/// How long the fresh replica is left alone before its idle memory is read.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize, Default)]
pub struct StartupRun {
    pub ready_ms: f64,
    pub rss_at_ready_mib: f64,
    pub rss_settled_mib: f64,
    /// SIGTERM to exit (graceful shutdown).
    pub stop_ms: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ServiceStartup {
    pub service: String,
    pub runs: Vec<StartupRun>,
    pub median_ready_ms: f64,
    pub max_ready_ms: f64,
    pub median_rss_settled_mib: f64,
}

pub async fn measure_all(
    stack: &Stack,
    services: &[&str],
    runs: usize,
    log_dir: &Path,
) -> anyhow::Result<Vec<ServiceStartup>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut results = Vec::new();
    for &service in services {
        let mut measured = Vec::new();
        for run in 0..runs {
            let log = log_dir.join(format!("startup-{service}-{run}.log"));
            let one = measure_one(stack, service, &http, &log)
                .await
                .with_context(|| format!("startup of {service} (log {})", log.display()))?;
            measured.push(one);
        }
        let ready: Vec<f64> = measured.iter().map(|r| r.ready_ms).collect();
        let settled: Vec<f64> = measured.iter().map(|r| r.rss_settled_mib).collect();
        results.push(ServiceStartup {
            service: service.to_owned(),
            median_ready_ms: median(&ready),
            max_ready_ms: ready.iter().copied().fold(0.0, f64::max),
            median_rss_settled_mib: median(&settled),
            runs: measured,
        });
    }
    Ok(results)
}

async fn measure_one(
    stack: &Stack,
    service: &str,
    http: &reqwest::Client,
    log: &Path,
) -> anyhow::Result<StartupRun> {
    let binary = stack.binary(service)?;
    let env_file = stack.env_file(service);
    anyhow::ensure!(
        env_file.exists(),
        "no environment file {}",
        env_file.display()
    );
    let port = spare_port()?;
    let log_file = std::fs::File::create(log)?;
    let mut command = Command::new("env");
    command
        .args(["-i", "/bin/bash", "-c"])
        .arg(r#"source "$1" && export PORT="$3" METRICS_PORT=0 && exec "$2""#)
        .arg(service)
        .arg(&env_file)
        .arg(&binary)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    let url = format!("http://127.0.0.1:{port}/readyz");
    let spawned = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let Some(pid) = child.id() else {
        bail!("{service} exited at once");
    };
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status().as_u16() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("{service} exited with {status} before it was ready");
        }
        if spawned.elapsed() > READY_WITHIN {
            stop(&mut child).await;
            bail!("{service} not ready within {READY_WITHIN:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let ready = spawned.elapsed();
    let rss_at_ready = procfs::status_kib(pid, "VmRSS").unwrap_or(0);
    tokio::time::sleep(SETTLE).await;
    let rss_settled = procfs::status_kib(pid, "VmRSS").unwrap_or(0);
    let stopping = Instant::now();
    stop(&mut child).await;
    Ok(StartupRun {
        ready_ms: ready.as_secs_f64() * 1000.0,
        rss_at_ready_mib: mib(rss_at_ready),
        rss_settled_mib: mib(rss_settled),
        stop_ms: stopping.elapsed().as_secs_f64() * 1000.0,
    })
}

/// SIGTERM (graceful shutdown), then SIGKILL if it takes longer than 15 s.
async fn stop(child: &mut Child) {
    signal_then_kill(child, "-TERM", Duration::from_secs(15)).await;
}

/// A loopback port nobody listens on (the kernel's pick, released for the service to bind).
fn spare_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a spare port")?;
    Ok(listener.local_addr()?.port())
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
