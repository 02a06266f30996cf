//! The command line: `tapwatch-edge analyze FILE...`.

use crate::config::Config;
use crate::inference::ModelStage;
use crate::output::RunTotals;
use crate::pipeline::Pipeline;
use crate::store::{spawn_writer, AgeClock, Store, StoreCounters};
use clap::{Parser, Subcommand, ValueEnum};
use firmware::engine::FinishedFlow;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant as WallClock;

#[derive(Debug, Parser)]
#[command(
    name = "tapwatch-edge",
    version,
    about = "Tapwatch edge daemon: network traffic capture, flows and attack detection"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Analyse pcap or pcapng files offline and write JSON lines to stdout.
    Analyze(AnalyzeArgs),
    /// Capture live on the configured interfaces until SIGTERM or SIGINT (SIGHUP reloads rules).
    Run {
        /// The configuration file (see `tapwatch-edge config example`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send what the store's outbox holds to the hub (`[sync]` of the configuration), then
    /// exit: for a store filled offline by `analyze --db --config`, or left by a stopped daemon.
    Sync {
        /// The configuration file; its `[sync]` section and `store.path` are used.
        #[arg(long, short)]
        config: PathBuf,
        /// The edge database, instead of the configuration's `store.path`.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Signed updates of this program into a standby slot (A/B), kept only once healthy.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Write an anomaly's evidence packets as a pcap file.
    ExportPcap {
        /// The edge database.
        #[arg(long)]
        db: PathBuf,
        /// The anomaly's id (`anomalies.id`).
        #[arg(long)]
        anomaly: i64,
        /// The pcap file to write.
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Example,
    /// Check a configuration file and print every problem found.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Make a release key: its secret seed goes to OUT (mode 0600, keep it offline), its
    /// public half, for `update.public_key`, to stdout.
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Make a signed bundle of a program (the first file, installed as tapwatch-edge) and any
    /// files that travel with it.
    Pack {
        /// The release key (from `update keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The release's version.
        #[arg(long)]
        version: String,
        /// The architecture it is built for (default: this machine's).
        #[arg(long, default_value = std::env::consts::ARCH)]
        arch: String,
        /// The bundle to write.
        #[arg(long, short)]
        out: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check a bundle against update.public_key and put it in the standby slot; the next start
    /// of the service runs it on trial.
    Install {
        #[arg(long, short)]
        config: PathBuf,
        bundle: PathBuf,
    },
    /// Print the slots' state: the active program, any update on trial, the last outcome.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Go back to the factory program (the package's); the package does this when installed.
    Reset {
        #[arg(long, short)]
        config: PathBuf,
        /// Why, kept as the last outcome.
        #[arg(long, default_value = "reset by hand")]
        reason: String,
    },
}

/// What `analyze` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// One `flow` record per finished flow, with its features.
    Flows,
    /// One `stats` record at the end with the totals of the run.
    Stats,
    /// One `anomaly` record per anomaly episode (window detectors: scans, sweeps, floods, ARP
    /// and DHCP abuse), written when it ends.
    Anomalies,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng). Each is analysed on its own: flows do not span files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Records to write, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "flows")]
    pub emit: Vec<Emit>,
    /// A BPF filter applied while reading (tcpdump syntax).
    #[arg(long)]
    pub filter: Option<String>,
    /// Keep flows, statistics and the evidence ring in this SQLite database, as the live
    /// daemon does.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Flow and statistics settings from this edge.toml (its store path is replaced by --db).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run the models in this folder on every flow (autoencoder.onnx and classifier.onnx, as
    /// models/train.py writes them; the appliance's are in /usr/share/tapwatch/models); this
    /// replaces the files [detect.models] names.
    #[arg(long)]
    pub models: Option<PathBuf>,
}

/// Parse arguments and run; the exit code says whether every input was read whole.
/// A panic anywhere stops the process, as `panic = "abort"` would (the workspace unwinds for
/// the hub's sake): a capture, pipeline or store thread that died leaves a daemon that only
/// looks alive, so it exits and its service manager starts it again. The message is printed
/// first.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

pub fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Analyze(args) => run_on_pipeline_thread(move || analyze(&args)),
        Command::Run { config } => match crate::update::launch(&config) {
            crate::update::Launch::Exit(code) => code,
            crate::update::Launch::Continue => match crate::daemon::run(config) {
                Ok(crate::daemon::Stopped::Asked) => ExitCode::SUCCESS,
                Ok(crate::daemon::Stopped::Relaunch) => crate::update::relaunch(),
                Err(e) => {
                    eprintln!("tapwatch-edge: {e}");
                    ExitCode::from(78)
                }
            },
        },
        Command::Update(cmd) => match update(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tapwatch-edge: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sync { config, db } => match sync_drain(&config, db) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tapwatch-edge: {e}");
                ExitCode::from(69)
            }
        },
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
        // The active slot's program judges, when there is one; the packaged one's yes is enough
        // too (the launcher falls back to it when the slot's does not start).
        Command::Config(ConfigCommand::Check { file }) => {
            match crate::update::check_with_active(&file) {
                Some((true, said)) => {
                    println!("{said}");
                    ExitCode::SUCCESS
                }
                Some((false, said)) => {
                    eprintln!("tapwatch-edge: the active slot's program refused it: {said}");
                    check_config(&file)
                }
                None => check_config(&file),
            }
        }
        Command::ExportPcap { db, anomaly, output } => {
            let cfg = crate::config::StoreConfig { path: db, ..Default::default() };
            let result = Store::open(&cfg, Arc::new(StoreCounters::default()))
                .and_then(|s| s.export_pcap(anomaly, &output));
            match result {
                Ok(n) => {
                    eprintln!("tapwatch-edge: wrote {n} packets to {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tapwatch-edge: {e}");
                    ExitCode::from(65)
                }
            }
        }
    }
}

/// `config check FILE` by this program.
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(78)
        }
    }
}

fn update(cmd: UpdateCommand) -> Result<(), String> {
    let slots = |config: &std::path::Path| {
        Config::load(config).map(|c| (crate::update::Slots::new(&c), c)).map_err(|e| e.to_string())
    };
    match cmd {
        UpdateCommand::Keygen { out } => {
            let public = crate::update::keygen(&out)?;
            eprintln!("tapwatch-edge: release key written to {}; its public half:", out.display());
            println!("{public}");
        }
        UpdateCommand::Pack { key, version, arch, out, files } => {
            let m = crate::update::pack(&key, &version, &arch, &files, &out)?;
            eprintln!(
                "tapwatch-edge: {} {} for {}: {} files, {} bytes",
                out.display(),
                m.version,
                m.arch,
                m.files.len(),
                m.size()
            );
        }
        UpdateCommand::Install { config, bundle } => {
            let (s, c) = slots(&config)?;
            let t = s.install(&bundle, &c, &config)?;
            eprintln!(
                "tapwatch-edge: {} ({}) is in slot {}; the next start of the service runs it on \
                 trial (systemctl restart tapwatch-edge)",
                t.version,
                t.sha256,
                t.slot.name()
            );
        }
        UpdateCommand::Status { config } => {
            let (s, _) = slots(&config)?;
            let state = s.load()?;
            println!("{}", serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?);
        }
        UpdateCommand::Reset { config, reason } => {
            let (s, _) = slots(&config)?;
            s.reset(&reason)?;
            eprintln!("tapwatch-edge: the factory program runs from the next start");
        }
    }
    Ok(())
}

/// Logs go to stderr; `TAPWATCH_LOG` sets the filter (tracing's env-filter syntax, default
/// `info`), e.g. `TAPWATCH_LOG=tapwatch_edge::store=debug`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `tapwatch-edge sync`: send the outbox until it is empty.
fn sync_drain(path: &std::path::Path, db: Option<PathBuf>) -> Result<(), String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(db) = db {
        config.store.path = db;
    }
    if !config.sync.enabled {
        return Err(format!("{}: sync.enabled is false", path.display()));
    }
    let _claim = crate::store::claim(&config.store.path)?;
    // Open once with the writer's code: the schema is created or migrated.
    let store = Arc::new(StoreCounters::default());
    Store::open(&config.store, store.clone()).map_err(|e| e.to_string())?;
    let counters = Arc::new(crate::sync::SyncCounters { store, ..Default::default() });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    runtime.block_on(crate::sync::run(
        config.sync.clone(),
        config.device.id.clone(),
        config.store.path.clone(),
        counters.clone(),
        crate::sync::Until::Drained,
        stop_rx,
        // Its status messages name the hub's configuration the daemon last applied here.
        crate::sync::Fleet {
            configs: None,
            commands: None,
            applied: Some(tokio::sync::watch::channel(crate::fleet::kept_revision(&config)).1),
        },
    ))?;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "tapwatch-edge: outbox sent: {} messages acknowledged by the broker ({} flow records), {} confirmed by the hub, {} sent again",
        counters.acked.iter().map(load).sum::<u64>(),
        load(&counters.flows_acked),
        counters.confirmed.iter().map(load).sum::<u64>(),
        counters.resent.iter().map(load).sum::<u64>()
    );
    Ok(())
}

/// Run `f` on a thread with a stack large enough for the engine (see [`crate::PIPELINE_STACK`]).
fn run_on_pipeline_thread(f: impl FnOnce() -> ExitCode + Send + 'static) -> ExitCode {
    match std::thread::Builder::new()
        .name("pipeline".into())
        .stack_size(crate::PIPELINE_STACK)
        .spawn(f)
    {
        Ok(h) => h.join().unwrap_or(ExitCode::from(70)),
        Err(e) => {
            eprintln!("tapwatch-edge: cannot start the pipeline thread: {e}");
            ExitCode::from(71)
        }
    }
}

fn analyze(args: &AnalyzeArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tapwatch-edge: {e}");
                return ExitCode::from(78);
            }
        },
        None => Config::offline(args.db.as_deref()),
    };
    if let Some(db) = &args.db {
        config.store.path = db.clone();
    }
    if let Some(dir) = &args.models {
        let m = &mut config.detect.models;
        m.autoencoder = dir.join("autoencoder.onnx").display().to_string();
        m.classifier = dir.join("classifier.onnx").display().to_string();
    }
    // Offline, a model that does not load is an error: it was asked for.
    let (stage, refused) = ModelStage::from_config(&config);
    if let Some(e) = refused.first() {
        eprintln!("tapwatch-edge: {e}");
        return ExitCode::from(78);
    }
    // Each file is an interface of its own for the evidence ring.
    let names: Vec<Arc<str>> =
        args.files.iter().map(|p| Arc::from(p.display().to_string())).collect();
    let writer = match &args.db {
        None => None,
        Some(_) => {
            let counters = Arc::new(StoreCounters::default());
            let opened = Store::open(&config.store, counters.clone()).and_then(|mut s| {
                s.without_sync()?;
                if config.sync.enabled {
                    s.enable_outbox(&config.device.id, config.sync.outbox_max_messages)?;
                    s.set_evidence_limit(u64::from(config.sync.evidence_max_mb) << 20);
                }
                Ok(s)
            });
            match opened {
                Ok(store) => Some((
                    spawn_writer(store, crate::STORE_QUEUE_MESSAGES, AgeClock::Off),
                    counters,
                )),
                Err(e) => {
                    eprintln!("tapwatch-edge: {e}");
                    return ExitCode::from(73);
                }
            }
        }
    };
    let emit_anomalies = args.emit.contains(&Emit::Anomalies);
    let mut lines = match crate::output::JsonLines::spawn() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tapwatch-edge: cannot start the output thread: {e}");
            return ExitCode::from(71);
        }
    };
    let emit_flows = args.emit.contains(&Emit::Flows);
    let mut totals = RunTotals::default();
    let mut write_error: Option<io::Error> = None;
    let started = WallClock::now();

    // One pipeline for the run (its tables are large; building one per file would cost more than
    // reading most files), finished between files so that flows never span two captures.
    let store = writer.as_ref().map(|(w, c)| (w.tx.clone(), c.clone()));
    let mut pipeline =
        Pipeline::new(&config, names, store).blocking().collect_anomalies().with_models(stage);
    for (iface, path) in args.files.iter().enumerate() {
        let mut sink = |f: &FinishedFlow| {
            if emit_flows {
                lines.flow(f);
            }
        };
        // Reading and analysing run side by side: a reader thread hands batches of packets on
        // (as live capture does), this thread runs the pipeline.
        let result = std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<crate::capture::Batch>(16);
            // Batches done with go back to the reader to be filled again.
            let (back, spare) = crossbeam_channel::bounded::<crate::capture::Batch>(4);
            let filter = args.filter.as_deref();
            let reader = std::thread::Builder::new()
                .name("reader".into())
                .spawn_scoped(scope, move || {
                    crate::offline::read_file_batched(path, filter, iface, &tx, &spare)
                })
                .map_err(|e| crate::offline::CaptureFileError::Open {
                    path: path.clone(),
                    message: format!("cannot start the reader thread: {e}"),
                })?;
            for b in rx {
                pipeline.batch(&b, &mut sink);
                let _ = back.try_send(b);
            }
            reader.join().unwrap_or_else(|_| {
                Err(crate::offline::CaptureFileError::Open {
                    path: path.clone(),
                    message: "the reader thread failed".into(),
                })
            })
        });
        // What was read before an error still becomes flows.
        pipeline.finish(&mut sink);
        let anomalies = pipeline.take_anomalies();
        totals.anomalies += anomalies.len() as u64;
        if emit_anomalies && !lines.failed() {
            for a in anomalies {
                if let Err(e) = lines.record(&crate::output::AnomalyRecordOut::new(&a, path)) {
                    write_error = Some(e);
                    break;
                }
            }
        }
        totals.files += 1;
        if let Err(e) = result {
            totals.files_failed += 1;
            eprintln!("tapwatch-edge: {e}");
        }
        if write_error.is_some() || lines.failed() {
            break;
        }
    }
    totals.engine = *pipeline.engine().counters();
    totals.flows = *pipeline.engine().flow_counters();
    if let Some(m) = pipeline.models().filter(|m| m.active()) {
        let c = m.counters();
        eprintln!(
            "tapwatch-edge: models: {} flows in {} batches, {} flagged, {} verdicts of another transport left unnamed, {:.3} s",
            c.rows,
            c.batches,
            c.flagged,
            c.misfits,
            c.nanos as f64 / 1e9
        );
    }
    drop(pipeline);
    if let Some((w, counters)) = writer {
        drop(w.tx);
        if w.handle.join().is_err() {
            eprintln!("tapwatch-edge: the store writer failed");
            return ExitCode::from(74);
        }
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let written: u64 = counters.written.iter().map(load).sum();
        eprintln!(
            "tapwatch-edge: database {}: {written} rows written, {} evicted (size limit), {} ring packets rotated",
            config.store.path.display(),
            counters.evicted_total(),
            load(&counters.ring_rotated)
        );
        let lost = load(&counters.rows_lost);
        if lost > 0 {
            eprintln!("tapwatch-edge: {lost} rows could not be written to the database");
            totals.files_failed += 1;
        }
    }
    totals.seconds = started.elapsed().as_secs_f64();

    if write_error.is_none() && args.emit.contains(&Emit::Stats) {
        if let Err(e) = lines.record(&totals.to_json()) {
            write_error = Some(e);
        }
    }
    // What is left is written and flushed; the first error the output met is the one told.
    if let Err(e) = lines.finish() {
        write_error.get_or_insert(e);
    }
    match write_error {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("tapwatch-edge: cannot write output: {e}");
            return ExitCode::from(74);
        }
        None => {}
    }
    eprintln!("{}", totals.summary());
    if totals.files_failed > 0 {
        ExitCode::from(65)
    } else {
        ExitCode::SUCCESS
    }
}
