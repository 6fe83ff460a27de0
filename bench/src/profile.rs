//! Optional CPU profiles (`BENCH_PROFILE=1`): one system-wide `perf record` (software clock
//! sampling, which also works in VMs without hardware counters) during a phase, summarised per
//! process of the stack as its top symbols with `perf report --pid`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::process::signal_then_kill;

const FREQUENCY_HZ: &str = "499";
const TOP_SYMBOLS: usize = 12;

pub struct Profiler {
    targets: Vec<(String, Vec<u32>)>,
    dir: PathBuf,
    profiles: Mutex<Vec<Profile>>,
}

/// How long perf is given to attach (it first walks every process's memory maps) before the
/// measured phase starts.
const ATTACH: Duration = Duration::from_millis(1500);

/// A profile being recorded.
pub struct Session {
    label: String,
    data: PathBuf,
    recorder: Child,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub phase: String,
    pub processes: Vec<ProcessProfile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessProfile {
    pub name: String,
    pub samples: u64,
    /// Share of the process's samples by binary or library (`[kernel.kallsyms]` = system calls).
    pub by_object: Vec<Share>,
    pub top_symbols: Vec<Share>,
    pub data_file: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Share {
    pub percent: f64,
    pub what: String,
}

impl Profiler {
    /// `None` when `perf` cannot record here.
    pub async fn new(targets: Vec<(String, Vec<u32>)>, dir: &Path) -> Option<Self> {
        let works = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
        if !works {
            eprintln!("WARNING: perf cannot record here; no profiles");
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        Some(Self {
            targets,
            dir: dir.to_owned(),
            profiles: Mutex::new(Vec::new()),
        })
    }

    /// Starts recording the whole machine and returns once perf has had time to attach.
    pub async fn start(&self, label: &str) -> anyhow::Result<Session> {
        let data = self.dir.join(format!("{label}.perf.data"));
        let log = std::fs::File::create(self.dir.join(format!("{label}.perf.log")))?;
        let recorder = Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                FREQUENCY_HZ,
                "-g",
                "-a",
                "-o",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting perf record")?;
        tokio::time::sleep(ATTACH).await;
        Ok(Session {
            label: label.to_owned(),
            data,
            recorder,
        })
    }

    pub async fn stop(&self, session: Session) -> anyhow::Result<()> {
        let Session {
            label,
            data,
            mut recorder,
        } = session;
        // perf writes its file on SIGINT.
        signal_then_kill(&mut recorder, "-INT", Duration::from_secs(60)).await;
        let mut processes = Vec::new();
        for (name, pids) in &self.targets {
            processes.push(summarise(name, pids, &data).await);
        }
        processes.sort_by_key(|p| std::cmp::Reverse(p.samples));
        if let Ok(mut profiles) = self.profiles.lock() {
            profiles.push(Profile {
                phase: label,
                processes,
            });
        }
        Ok(())
    }

    pub fn profiles(&self) -> Vec<Profile> {
        self.profiles.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

async fn summarise(name: &str, pids: &[u32], data: &Path) -> ProcessProfile {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let pids = pids.join(",");
    let report = |sort: &'static str| {
        let (data, pids) = (data.to_owned(), pids.clone());
        async move {
            let output = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-g",
                    "none",
                    "-q",
                    "-n",
                ])
                .args(["--percentage", "relative", "--percent-limit", "0.5"])
                .arg(format!("--pid={pids}"))
                .args(["--sort", sort, "-i"])
                .arg(&data)
                .stderr(Stdio::null())
                .output()
                .await;
            output
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        }
    };
    let objects = parse_report(&report("dso").await);
    let symbols = parse_report(&report("dso,sym").await);
    ProcessProfile {
        name: name.to_owned(),
        samples: objects.iter().map(|(_, samples, _)| samples).sum(),
        by_object: objects
            .into_iter()
            .map(|(percent, _, what)| Share { percent, what })
            .collect(),
        top_symbols: symbols
            .into_iter()
            .take(TOP_SYMBOLS)
            .map(|(percent, _, what)| Share { percent, what })
            .collect(),
        data_file: data.display().to_string(),
    }
}

/// Lines of `perf report -q -n`: `  12.34%  567  <columns…>` → (percent, samples, columns).
pub fn parse_report(text: &str) -> Vec<(f64, u64, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let percent: f64 = words.next()?.strip_suffix('%')?.parse().ok()?;
            let samples: u64 = words.next()?.parse().ok()?;
            let rest: Vec<&str> = words.collect();
            (!rest.is_empty()).then(|| (percent, samples, rest.join(" ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_report_lines_are_split_into_share_samples_and_what() {
        let text = "\n    41.20%      1234  ferretdb  [.] github.com/FerretDB/sqlite.step\n\
                    # comment\n     3.00%        90  [kernel.kallsyms]  [k] tcp_sendmsg\n";
        assert_eq!(
            parse_report(text),
            vec![
                (
                    41.2,
                    1234,
                    "ferretdb [.] github.com/FerretDB/sqlite.step".to_owned()
                ),
                (3.0, 90, "[kernel.kallsyms] [k] tcp_sendmsg".to_owned()),
            ]
        );
    }
}
