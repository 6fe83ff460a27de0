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
