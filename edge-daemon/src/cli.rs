//! The command line: `tapwatch-edge analyze FILE...`.

use crate::offline::read_file;
use crate::output::{FlowRecordOut, RunTotals};
use clap::{Parser, Subcommand, ValueEnum};
use firmware::engine::{EngineConfig, FinishedFlow};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
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
}

/// What `analyze` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// One `flow` record per finished flow, with its features.
    Flows,
    /// One `stats` record at the end with the totals of the run.
    Stats,
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
}

/// Parse arguments and run; the exit code says whether every input was read whole.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => run_on_pipeline_thread(move || analyze(&args)),
    }
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
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let emit_flows = args.emit.contains(&Emit::Flows);
    let mut totals = RunTotals::default();
    let mut write_error: Option<io::Error> = None;
    let started = WallClock::now();

    // One engine for the run (its tables are large; building one per file would cost more than
    // reading most files), reset between files so that flows never span two captures.
    let mut engine = crate::new_engine(EngineConfig::default());
    for path in &args.files {
        let mut sink = |f: &FinishedFlow| {
            if emit_flows && write_error.is_none() {
                let r = serde_json::to_writer(&mut out, &FlowRecordOut::new(f))
                    .map_err(io::Error::from)
                    .and_then(|_| out.write_all(b"\n"));
                if let Err(e) = r {
                    write_error = Some(e);
                }
            }
        };
        let result = read_file(path, args.filter.as_deref(), &mut engine, &mut sink);
        // What was read before an error still becomes flows.
        engine.reset(&mut sink);
        totals.files += 1;
        if let Err(e) = result {
            totals.files_failed += 1;
            eprintln!("tapwatch-edge: {e}");
        }
        if write_error.is_some() {
            break;
        }
    }
    totals.seconds = started.elapsed().as_secs_f64();
    totals.engine = *engine.counters();
    totals.flows = *engine.flow_counters();

    if write_error.is_none() && args.emit.contains(&Emit::Stats) {
        let r = serde_json::to_writer(&mut out, &totals.to_json())
            .map_err(io::Error::from)
            .and_then(|_| out.write_all(b"\n"));
        if let Err(e) = r {
            write_error = Some(e);
        }
    }
    if write_error.is_none() {
        if let Err(e) = out.flush() {
            write_error = Some(e);
        }
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
