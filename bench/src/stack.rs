//! The running local app as `scripts/app.sh` and `scripts/infra.sh` left it: pid files, launch files
//! and environment files under `.data/run/`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::procfs;

/// The Rust services, in `scripts/app.sh`'s order.
pub const SERVICES: [&str; 6] = [
    "client",
    "auth",
    "tickets",
    "orders",
    "payments",
    "expiration",
];

/// What the services run on; measured too, to find the bottleneck.
pub const INFRA: [&str; 5] = ["nginx", "ferretdb", "nats", "redis", "stripe-mock"];

#[derive(Debug, Clone, Serialize)]
pub struct StackProcess {
    pub name: String,
    pub pid: u32,
    /// One of our Rust services (rather than infrastructure or the load generator).
    pub service: bool,
}

#[derive(Debug, Clone)]
pub struct Stack {
    run_dir: PathBuf,
    pub processes: Vec<StackProcess>,
}

impl Stack {
    /// A stack of these processes (for tests).
    #[cfg(test)]
    pub(crate) fn of(processes: Vec<StackProcess>) -> Self {
        Self {
            run_dir: PathBuf::new(),
            processes,
        }
    }

    /// Every service must be running; infrastructure that is not is left out of the figures.
    pub fn discover(run_dir: &Path) -> anyhow::Result<Self> {
        let mut processes = Vec::new();
        for name in SERVICES {
            let Some(pid) = read_pid(run_dir, name) else {
                bail!(
                    "service {name} is not running (no live pid in {}/{name}.pid): start the app with scripts/bench.sh",
                    run_dir.display()
                );
            };
            processes.push(StackProcess {
                name: name.to_owned(),
                pid,
                service: true,
            });
            // Further replicas (`scripts/app.sh up --replicas`): orders-2, orders-3, ...
            for replica in 2..=9 {
                let name = format!("{name}-{replica}");
                if let Some(pid) = read_pid(run_dir, &name) {
                    processes.push(StackProcess {
                        name,
                        pid,
                        service: true,
                    });
                }
            }
        }
        for name in INFRA {
            if let Some(pid) = read_pid(run_dir, name) {
                processes.push(StackProcess {
                    name: name.to_owned(),
                    pid,
                    service: false,
                });
            }
        }
        Ok(Self {
            run_dir: run_dir.to_owned(),
            processes,
        })
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
    }

    /// The binary `scripts/app.sh` started the service from (`binary <path> <mtime> <size>` in
    /// `<service>.launch`).
    pub fn binary(&self, service: &str) -> anyhow::Result<PathBuf> {
        let launch = self.run_dir.join(format!("{service}.launch"));
        let text = std::fs::read_to_string(&launch)
            .with_context(|| format!("reading {}", launch.display()))?;
        parse_launch_binary(&text)
            .with_context(|| format!("no `binary` line in {}", launch.display()))
    }

    /// The 0600 file of `export NAME=value` lines the service was started with.
    pub fn env_file(&self, service: &str) -> PathBuf {
        self.run_dir.join(format!("{service}.env"))
    }
}

/// The pid in the first line of `<run_dir>/<name>.pid`, if that process is alive.
pub fn read_pid(run_dir: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(run_dir.join(format!("{name}.pid"))).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    procfs::alive(pid).then_some(pid)
}

pub fn parse_launch_binary(launch: &str) -> Option<PathBuf> {
    launch.lines().find_map(|line| {
        let rest = line.strip_prefix("binary ")?;
        rest.split_whitespace().next().map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_read_from_a_launch_file() {
        let launch = "binary /repo/target/release/orders 1700000000 123456\nsettings abc\n";
        assert_eq!(
            parse_launch_binary(launch),
            Some(PathBuf::from("/repo/target/release/orders"))
        );
        assert_eq!(parse_launch_binary("settings abc\n"), None);
    }
}

/// The running app's files and the script that runs it, for the phases that restart a service.
#[derive(Debug, Clone)]
pub struct AppFiles {
    pub repo: PathBuf,
    pub run_dir: PathBuf,
}

impl AppFiles {
    /// Restarts the tickets service (every replica, `scripts/app.sh restart tickets`) and waits
    /// until each replica's read model is filled from the database (`/readyz` says `live`): for
    /// phases that change the databases behind the services' back.
    pub async fn refill_ticket_read_models(&self) -> anyhow::Result<()> {
        let script = self.repo.join("scripts/app.sh");
        let status = tokio::process::Command::new("bash")
            .arg(&script)
            .args(["restart", "tickets"])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("running {} restart tickets", script.display()))?;
        if !status.success() {
            bail!("{} restart tickets failed ({status})", script.display());
        }
        let client = reqwest::Client::new();
        for name in
            std::iter::once("tickets".to_owned()).chain((2..=9).map(|k| format!("tickets-{k}")))
        {
            let Ok(env) = std::fs::read_to_string(self.run_dir.join(format!("{name}.env"))) else {
                continue;
            };
            if read_pid(&self.run_dir, &name).is_none() {
                continue;
            }
            let port = env
                .lines()
                .find_map(|line| line.strip_prefix("export PORT="))
                .with_context(|| format!("no PORT in {name}.env"))?
                .trim()
                .to_owned();
            let url = format!("http://127.0.0.1:{port}/readyz");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            loop {
                let live = match client.get(&url).send().await {
                    Ok(reply) => reply
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|body| body["readModel"]["state"] == "live"),
                    Err(_) => false,
                };
                if live {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("{name}'s read model was not filled within 300 s of its restart ({url})");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}
