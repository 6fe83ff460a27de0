//! The commands FerretDB served, by command name, from the Prometheus metrics of its debug handler
//! (`scripts/infra.sh` starts it on `FERRETDB_METRICS_PORT`). Times on a shared 2-CPU machine move
//! by tens of percent between runs; how many commands a phase cost moves by a few percent (how many
//! losing buyers reach the database depends on when they arrive), so this is the figure that
//! compares two versions of the code.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// FerretDB's counter of requests, labelled by command (`find`, `insert`, ...) and opcode.
const REQUESTS: &str = "ferretdb_client_requests_total";

/// Commands by name, e.g. `{"find": 1606, "insert": 1000}`.
pub type Commands = BTreeMap<String, u64>;

/// Reads FerretDB's counters.
#[derive(Clone)]
pub struct CommandCounter {
    client: reqwest::Client,
    url: String,
}

impl CommandCounter {
    /// `None` without a metrics address, or (with a warning) without an HTTP client.
    pub fn new(url: Option<String>) -> Option<Self> {
        let url = url?;
        match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(client) => Some(Self { client, url }),
            Err(err) => {
                eprintln!("WARNING: no HTTP client to read FerretDB's command counts: {err}");
                None
            }
        }
    }

    /// Every command served since FerretDB started; `None` (with a warning) if the metrics cannot
    /// be read, so that a run never fails for want of this figure.
    pub async fn served(&self) -> Option<Commands> {
        let scraped = async {
            let text = self
                .client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            anyhow::Ok(parse(&text)?)
        }
        .await;
        match scraped {
            Ok(commands) => Some(commands),
            Err(err) => {
                eprintln!(
                    "WARNING: FerretDB's command counts are not available ({}): {err:#}",
                    self.url
                );
                None
            }
        }
    }
}

/// The requests counter summed over opcodes, by command.
fn parse(text: &str) -> std::io::Result<Commands> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))?;
    let mut commands = Commands::new();
    for sample in scrape.samples.iter().filter(|s| s.metric == REQUESTS) {
        let (prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n)) =
            sample.value
        else {
            continue;
        };
        let command = sample.labels.get("command").unwrap_or("unknown");
        // Counters are whole numbers; f64 holds them exactly up to 2^53.
        *commands.entry(command.to_owned()).or_default() += n as u64;
    }
    Ok(commands)
}

/// What was served between two readings (a command first seen in `after` counts from zero).
pub fn served_between(before: &Commands, after: &Commands) -> Commands {
    after
        .iter()
        .map(|(command, n)| {
            let earlier = before.get(command).copied().unwrap_or(0);
            (command.clone(), n.saturating_sub(earlier))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The commands of a phase, as the report shows them.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct PhaseCommands {
    pub total: u64,
    pub by_command: Commands,
}

impl PhaseCommands {
    pub fn of(by_command: Commands) -> Self {
        Self {
            total: by_command.values().sum(),
            by_command,
        }
    }

    /// "3,058 (find 1,606, insert 1,000, update 200, delete 200)": the largest first; "0" alone.
    pub fn line(&self) -> String {
        if self.by_command.is_empty() {
            return thousands(self.total);
        }
        let mut commands: Vec<_> = self.by_command.iter().collect();
        commands.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = commands
            .iter()
            .map(|(command, n)| format!("{command} {}", thousands(**n)))
            .collect();
        format!("{} ({})", thousands(self.total), parts.join(", "))
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP ferretdb_client_requests_total Total number of requests.
# TYPE ferretdb_client_requests_total counter
ferretdb_client_requests_total{command="find",opcode="OP_MSG"} 1606
ferretdb_client_requests_total{command="find",opcode="OP_QUERY"} 4
ferretdb_client_requests_total{command="insert",opcode="OP_MSG"} 1000
# HELP ferretdb_client_responses_total Total number of responses.
# TYPE ferretdb_client_responses_total counter
ferretdb_client_responses_total{argument="unknown",command="find",opcode="OP_MSG",result="ok"} 1606
"#;

    #[test]
    fn requests_are_counted_by_command_over_every_opcode_and_nothing_else() -> anyhow::Result<()> {
        let commands = parse(METRICS)?;
        assert_eq!(
            commands,
            Commands::from([("find".to_owned(), 1610), ("insert".to_owned(), 1000)])
        );
        Ok(())
    }

    #[test]
    fn a_phase_counts_what_was_served_between_its_readings() {
        let before = Commands::from([("find".to_owned(), 10), ("insert".to_owned(), 4)]);
        let after = Commands::from([
            ("find".to_owned(), 25),
            ("insert".to_owned(), 4),
            ("delete".to_owned(), 3),
        ]);
        let phase = PhaseCommands::of(served_between(&before, &after));
        assert_eq!(phase.total, 18);
        assert_eq!(phase.line(), "18 (find 15, delete 3)");
    }

    #[test]
    fn a_phase_without_commands_reads_as_a_bare_zero() {
        assert_eq!(PhaseCommands::of(Commands::new()).line(), "0");
    }

    #[test]
    fn large_counts_are_grouped_by_thousands() {
        let phase = PhaseCommands::of(Commands::from([
            ("find".to_owned(), 1_606),
            ("insert".to_owned(), 1_000),
            ("update".to_owned(), 200),
            ("delete".to_owned(), 200),
            ("getMore".to_owned(), 1_234_567),
        ]));
        assert_eq!(
            phase.line(),
            "1,237,573 (getMore 1,234,567, find 1,606, insert 1,000, delete 200, update 200)"
        );
    }
}
