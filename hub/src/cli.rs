//! The command line: `run`, `device add`, `migrate`, `config`, `schema` and `check`.

use crate::config::Config;
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
    /// Ingest what the edges send into PostgreSQL until SIGTERM or SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Bring the database schema to the latest version and exit.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Devices allowed to send.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
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

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device id (its messages are refused until it is registered, unless
    /// ingest.auto_register_devices is set).
    Add {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Example,
    /// Check a configuration file and print every problem found.
    Check { file: PathBuf },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Connect and migrate.
async fn prepare(config: &Config) -> Result<tokio_postgres::Client, String> {
    let mut client = crate::db::connect(&config.postgres.url)
        .await
        .map_err(|e| format!("postgres.url: cannot connect: {e}"))?;
    crate::db::migrate(&mut client).await?;
    Ok(client)
}

fn run_hub(path: &std::path::Path) -> Result<(), String> {
    let mut config = Config::load(path)?;
    if config.broker.embedded {
        crate::broker::start(&config.broker)?;
        config.mqtt.broker = config.broker.listen_v5.to_string();
    }
    runtime()?.block_on(async move {
        prepare(&config).await?;
        let counters = std::sync::Arc::new(crate::ingest::IngestCounters::default());
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|e| format!("http.listen {}: {e}", config.http.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("listening on http://{addr}");
        let state = crate::http::AppState {
            counters: counters.clone(),
            registry: std::sync::Arc::new(crate::http::registry(counters.clone())),
        };
        tokio::spawn(async move { axum::serve(listener, crate::http::app(state)).await });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ingest = tokio::spawn(crate::ingest::run(config, counters, stop_rx));
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tracing::info!("hub running");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
        ingest.await.map_err(|e| e.to_string())?
    })
}

fn exit(r: Result<(), String>, code: u8) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapwatch-hub: {e}");
            ExitCode::from(code)
        }
    }
}

pub fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Run { config } => exit(run_hub(&config), 78),
        Command::Migrate { config } => exit(
            Config::load(&config).and_then(|c| runtime()?.block_on(prepare(&c)).map(|_| ())),
            78,
        ),
        Command::Device(DeviceCommand::Add { config, id }) => exit(
            (|| {
                if !firmware::proto::valid_device_id(&id) {
                    return Err(format!("device id {id:?}: must be 1-64 of A-Z a-z 0-9 _ . -"));
                }
                let c = Config::load(&config)?;
                runtime()?.block_on(async {
                    let client = prepare(&c).await?;
                    let new =
                        crate::db::add_device(&client, &id).await.map_err(|e| e.to_string())?;
                    println!("{id}: {}", if new { "added" } else { "already registered" });
                    Ok(())
                })
            })(),
            78,
        ),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file }) => {
            exit(Config::load(&file).map(|_| println!("{}: ok", file.display())), 78)
        }
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
