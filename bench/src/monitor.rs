//! Resident memory and CPU time of every process of the stack (and of this load generator), per
//! phase of the benchmark: memory sampled every 100 ms, CPU time and FerretDB's command counts read
//! at the phase's ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::ferretdb::{CommandCounter, Commands, PhaseCommands, served_between};
use crate::procfs;
use crate::stack::Stack;

pub const LOAD_GENERATOR: &str = "bench (load generator)";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Watched {
    name: String,
    /// The process and its descendants (nginx's master and its workers).
    pids: Vec<u32>,
    service: bool,
}

#[derive(Default)]
struct Peaks {
    /// Since the current phase began, KiB.
    phase: BTreeMap<String, u64>,
    /// Since the monitor started, KiB.
    overall: BTreeMap<String, u64>,
}

pub struct Monitor {
    /// Replaced by [`Monitor::follow`] when services are restarted.
    watched: Arc<Mutex<Vec<Watched>>>,
    peaks: Arc<Mutex<Peaks>>,
    ticks_per_second: u64,
    sampler: JoinHandle<()>,
    commands: Option<CommandCounter>,
}

/// Where a phase started.
pub struct PhaseMark {
    name: String,
    started: Instant,
    cpu_ticks: BTreeMap<String, u64>,
    machine_ticks: u64,
    commands: Option<Commands>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessUsage {
    pub name: String,
    pub service: bool,
    pub cpu_seconds: f64,
    /// CPU time over wall time: 100 = one core busy for the whole phase.
    pub cpu_percent: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PhaseUsage {
    pub phase: String,
    pub wall_seconds: f64,
    pub processes: Vec<ProcessUsage>,
    /// Every CPU of the machine, every program (100 = one core): the machine is shared, so this
    /// tells how much of it the stack really had.
    pub machine_cpu_percent: f64,
    /// What programs outside the stack and the load generator used meanwhile (e.g. compilers).
    pub other_programs_cpu_percent: f64,
    /// The commands FerretDB served during the phase, for every client (`None`: not measured).
    pub database_commands: Option<PhaseCommands>,
}

impl PhaseUsage {
    pub fn total_cpu_percent(&self) -> f64 {
        self.processes.iter().map(|p| p.cpu_percent).sum()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Resident {
    pub name: String,
    pub service: bool,
    pub rss_mib: f64,
}

impl Monitor {
    /// Watches `stack`; with `commands`, also counts FerretDB's commands per phase.
    pub fn start(stack: &Stack, commands: Option<CommandCounter>) -> Self {
        let watched = Arc::new(Mutex::new(watched_processes(stack)));
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let sampler = {
            let (watched, peaks) = (watched.clone(), peaks.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    sample(&current(&watched), &peaks);
                }
            })
        };
        Self {
            watched,
            peaks,
            ticks_per_second: procfs::clock_ticks_per_second(),
            sampler,
            commands,
        }
    }

    /// Watches the processes of `stack` from now on (after a restart gave a service new pids), so
    /// that their CPU is not counted as other programs'. Between phases only: a phase begun before
    /// would compare the new processes' CPU time with the old ones'.
    pub fn follow(&self, stack: &Stack) {
        if let Ok(mut watched) = self.watched.lock() {
            *watched = watched_processes(stack);
        }
    }

    fn watched(&self) -> Vec<Watched> {
        current(&self.watched)
    }

    /// The commands FerretDB served so far, if counted and readable.
    async fn commands_served(&self) -> Option<Commands> {
        match &self.commands {
            Some(counter) => counter.served().await,
            None => None,
        }
    }

    pub async fn begin(&self, name: impl Into<String>) -> PhaseMark {
        let commands = self.commands_served().await;
        sample(&self.watched(), &self.peaks);
        if let Ok(mut peaks) = self.peaks.lock() {
            peaks.phase.clear();
        }
        sample(&self.watched(), &self.peaks);
        PhaseMark {
            name: name.into(),
            started: Instant::now(),
            cpu_ticks: self.cpu_ticks(),
            machine_ticks: procfs::machine_busy_ticks().unwrap_or(0),
            commands,
        }
    }

    pub async fn end(&self, mark: PhaseMark) -> PhaseUsage {
        sample(&self.watched(), &self.peaks);
        let wall = mark.started.elapsed().as_secs_f64();
        let now = self.cpu_ticks();
        let machine_ticks = procfs::machine_busy_ticks()
            .unwrap_or(0)
            .saturating_sub(mark.machine_ticks);
        let phase_peaks = self
            .peaks
            .lock()
            .map(|p| p.phase.clone())
            .unwrap_or_default();
        let percent = |seconds: f64| {
            if wall > 0.0 {
                100.0 * seconds / wall
            } else {
                0.0
            }
        };
        let processes: Vec<ProcessUsage> = self
            .watched()
            .iter()
            .map(|w| {
                let ticks = now
                    .get(&w.name)
                    .unwrap_or(&0)
                    .saturating_sub(*mark.cpu_ticks.get(&w.name).unwrap_or(&0));
                let cpu_seconds = ticks as f64 / self.ticks_per_second as f64;
                ProcessUsage {
                    name: w.name.clone(),
                    service: w.service,
                    cpu_seconds,
                    cpu_percent: percent(cpu_seconds),
                    peak_rss_mib: mib(*phase_peaks.get(&w.name).unwrap_or(&0)),
                }
            })
            .collect();
        let machine_cpu_percent = percent(machine_ticks as f64 / self.ticks_per_second as f64);
        let ours: f64 = processes.iter().map(|p| p.cpu_percent).sum();
        // Read last, so that the scrape is not in the phase's CPU figures.
        let database_commands = match &mark.commands {
            Some(before) => self
                .commands_served()
                .await
                .map(|after| PhaseCommands::of(served_between(before, &after))),
            None => None,
        };
        PhaseUsage {
            phase: mark.name,
            wall_seconds: wall,
            processes,
            machine_cpu_percent,
            other_programs_cpu_percent: (machine_cpu_percent - ours).max(0.0),
            database_commands,
        }
    }

    /// Resident memory of every watched process now.
    pub fn resident(&self) -> Vec<Resident> {
        self.watched()
            .iter()
            .map(|w| Resident {
                name: w.name.clone(),
                service: w.service,
                rss_mib: mib(rss_kib(&w.pids)),
            })
            .collect()
    }

    /// The highest resident memory sampled since the monitor started.
    pub fn overall_peaks(&self) -> Vec<Resident> {
        sample(&self.watched(), &self.peaks);
        let overall = self
            .peaks
            .lock()
            .map(|p| p.overall.clone())
            .unwrap_or_default();
        self.watched()
            .iter()
            .map(|w| Resident {
                name: w.name.clone(),
                service: w.service,
                rss_mib: mib(*overall.get(&w.name).unwrap_or(&0)),
            })
            .collect()
    }

    /// The kernel's own peak (VmHWM: highest resident set since the process started), which also
    /// catches spikes between two samples.
    pub fn high_water_marks(&self) -> Vec<Resident> {
        self.watched()
            .iter()
            .map(|w| Resident {
                name: w.name.clone(),
                service: w.service,
                rss_mib: mib(w
                    .pids
                    .iter()
                    .filter_map(|&pid| procfs::status_kib(pid, "VmHWM"))
                    .sum()),
            })
            .collect()
    }

    fn cpu_ticks(&self) -> BTreeMap<String, u64> {
        self.watched()
            .iter()
            .map(|w| {
                let ticks = w
                    .pids
                    .iter()
                    .filter_map(|&pid| procfs::cpu_ticks(pid))
                    .sum();
                (w.name.clone(), ticks)
            })
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// Every process of the stack and this load generator.
fn watched_processes(stack: &Stack) -> Vec<Watched> {
    stack
        .processes
        .iter()
        .map(|p| Watched {
            name: p.name.clone(),
            pids: procfs::process_tree(p.pid),
            service: p.service,
        })
        .chain(std::iter::once(Watched {
            name: LOAD_GENERATOR.to_owned(),
            pids: vec![std::process::id()],
            service: false,
        }))
        .collect()
}

fn current(watched: &Mutex<Vec<Watched>>) -> Vec<Watched> {
    // A Vec of plain values is never left half-written: a poisoned lock still holds a valid one.
    watched
        .lock()
        .map_or_else(|poisoned| poisoned.into_inner().clone(), |w| w.clone())
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| procfs::status_kib(pid, "VmRSS"))
        .sum()
}

fn sample(watched: &[Watched], peaks: &Mutex<Peaks>) {
    let now: Vec<(String, u64)> = watched
        .iter()
        .map(|w| (w.name.clone(), rss_kib(&w.pids)))
        .collect();
    if let Ok(mut peaks) = peaks.lock() {
        for (name, kib) in now {
            let phase = peaks.phase.entry(name.clone()).or_default();
            *phase = (*phase).max(kib);
            let overall = peaks.overall.entry(name).or_default();
            *overall = (*overall).max(kib);
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::StackProcess;

    fn tickets(pid: u32) -> Stack {
        Stack::of(vec![StackProcess {
            name: "tickets".to_owned(),
            pid,
            service: true,
        }])
    }

    fn resident_tickets(monitor: &Monitor) -> f64 {
        monitor
            .resident()
            .iter()
            .find(|r| r.name == "tickets")
            .map_or(0.0, |r| r.rss_mib)
    }

    #[tokio::test]
    async fn after_a_restart_the_monitor_follows_the_new_process() -> anyhow::Result<()> {
        let mut first = tokio::process::Command::new("sleep").arg("30").spawn()?;
        let mut second = tokio::process::Command::new("sleep").arg("30").spawn()?;
        let (Some(first_pid), Some(second_pid)) = (first.id(), second.id()) else {
            anyhow::bail!("a child exited at once");
        };
        let monitor = Monitor::start(&tickets(first_pid), None);
        assert!(resident_tickets(&monitor) > 0.0);

        first.kill().await?;
        assert_eq!(resident_tickets(&monitor), 0.0, "the old process is gone");
        monitor.follow(&tickets(second_pid));

        assert!(resident_tickets(&monitor) > 0.0);
        assert!(monitor.resident().iter().any(|r| r.name == LOAD_GENERATOR));
        second.kill().await?;
        Ok(())
    }
}
