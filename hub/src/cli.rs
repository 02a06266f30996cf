//! The command line: `tapwatch-hub schema` and `tapwatch-hub check`.

use crate::contract::decode;
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tapwatch-hub",
    version,
    about = "Tapwatch hub: ingest, storage and API for Tapwatch edges"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the JSON Schema of a stream's message (anomalies, flows, stats, metrics, analyses,
    /// status), as edges publish them.
    Schema { stream: String },
    /// Check an edge message as the hub's ingest would: exit 0 and print a summary if accepted,
    /// exit 65 with the reason if not.
    Check {
        /// The MQTT topic it was (or would be) published on, `tapwatch/v1/<device>/<stream>`.
        #[arg(long)]
        topic: String,
        /// The payload file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Schema { stream } => {
            match firmware::proto::json_schemas().into_iter().find(|(name, _)| *name == stream) {
                Some((_, schema)) => {
                    println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                None => {
                    let names: Vec<&str> =
                        firmware::proto::Stream::ALL.iter().map(|s| s.name()).collect();
                    eprintln!("tapwatch-hub: no stream {stream:?}; streams: {}", names.join(", "));
                    ExitCode::from(64)
                }
            }
        }
        Command::Check { topic, file } => {
            let mut payload = Vec::new();
            let read = match file.as_deref() {
                None => std::io::stdin().read_to_end(&mut payload).map(|_| ()),
                Some(p) if p.as_os_str() == "-" => {
                    std::io::stdin().read_to_end(&mut payload).map(|_| ())
                }
                Some(p) => std::fs::read(p).map(|b| payload = b),
            };
            if let Err(e) = read {
                eprintln!("tapwatch-hub: cannot read the payload: {e}");
                return ExitCode::from(66);
            }
            match decode(&topic, &payload) {
                Ok(m) => {
                    let h = m.header();
                    println!(
                        "accepted: {} message from {} seq {} ts {}",
                        m.stream().name(),
                        h.device,
                        h.seq,
                        h.ts
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rejected ({}): {e}", e.reason());
                    ExitCode::from(65)
                }
            }
        }
    }
}
