//! The Tapwatch edge daemon, as a library: `main.rs` only parses arguments and calls [`cli::run`].
//!
//! - [`offline`]: reading pcap and pcapng files through the firmware core, with errors that name
//!   the file and the byte offset.
//! - [`output`]: the JSON-lines records `analyze` writes.
//! - [`cli`]: the command line.

pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod offline;
pub mod output;
pub mod pipeline;
pub mod store;

use firmware::engine::Engine;

/// Flows the edge tracks at once (a power of two).
pub const MAX_FLOWS: usize = 1 << 16;
/// Source hosts with window counters at once (a power of two).
pub const MAX_HOSTS: usize = 1 << 14;

/// The engine the daemon runs.
pub type EdgeEngine = Engine<MAX_FLOWS, MAX_HOSTS>;

/// A new engine on the heap.
///
/// The tables are fixed-size arrays of several tens of MiB; in a debug build `Box::new` first
/// builds the value on the stack, so callers run the pipeline on a thread with a stack of at least
/// [`PIPELINE_STACK`] bytes (see [`cli::run`]).
pub fn new_engine(config: firmware::engine::EngineConfig) -> Box<EdgeEngine> {
    Box::new(Engine::new(config))
}

/// Stack size of the pipeline thread: room for an [`EdgeEngine`] built in place in a debug build.
pub const PIPELINE_STACK: usize = 8 * std::mem::size_of::<EdgeEngine>() + (64 << 20);
