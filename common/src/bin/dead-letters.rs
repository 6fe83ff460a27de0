//! Lists and replays the events that a consumer moved to the dead-letter stream.
//!
//!   dead-letters list              one line per dead letter: sequence, consumer, subject, reason, payload
//!   dead-letters replay SEQUENCE   publish that letter's payload again on its subject, then delete it
//!   dead-letters replay-all        the same for every letter, oldest first
//!
//! Reads NATS_URL, NATS_STREAM and NATS_SUBJECT_PREFIX like the services (`scripts/app.sh env`, or a
//! pod's environment in Kubernetes). Replay after fixing what made the events inapplicable: a
//! consumer that still cannot apply one moves it back here.

use std::process::ExitCode;

use common::bus::{EventBus, count_by_consumer};
use common::settings::{Env, NatsSettings};

const USAGE: &str = "usage: dead-letters list | replay SEQUENCE | replay-all";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dead-letters: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let command = args.first().map(String::as_str);
    if !matches!(command, Some("list" | "replay" | "replay-all")) {
        anyhow::bail!("{USAGE}");
    }
    let settings = NatsSettings::from_env(&Env::from_process())?;
    let bus = EventBus::connect(&settings, "dead-letters").await?;
    match (command, args.get(1)) {
        (Some("list"), None) => {
            let letters = bus.dead_letters().await?;
            for letter in &letters {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    letter.sequence, letter.consumer, letter.subject, letter.reason, letter.payload
                );
            }
            let mut counts: Vec<_> = count_by_consumer(&letters).into_iter().collect();
            counts.sort();
            eprintln!(
                "{} dead letters in {}{}",
                letters.len(),
                bus.dead_letter_stream(),
                counts
                    .iter()
                    .map(|(consumer, n)| format!("; {consumer}: {n}"))
                    .collect::<String>()
            );
        }
        (Some("replay"), Some(sequence)) => {
            let sequence: u64 = sequence
                .parse()
                .map_err(|_| anyhow::anyhow!("{sequence:?} is not a sequence number; {USAGE}"))?;
            let letter = bus.replay_dead_letter(sequence).await?;
            println!(
                "replayed {} ({} for {})",
                letter.sequence, letter.subject, letter.consumer
            );
        }
        (Some("replay-all"), None) => {
            let letters = bus.dead_letters().await?;
            for letter in &letters {
                bus.replay_dead_letter(letter.sequence).await?;
                println!(
                    "replayed {} ({} for {})",
                    letter.sequence, letter.subject, letter.consumer
                );
            }
            eprintln!("{} dead letters replayed", letters.len());
        }
        _ => anyhow::bail!("{USAGE}"),
    }
    Ok(())
}
