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
pub mod fleet;
pub mod http;
pub mod hub_models;
pub mod inference;
pub mod metrics;
pub use edge_model as model;
pub mod offline;
pub mod output;
pub mod pipeline;
pub mod ring;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod update;

/// Write a file so that a reader sees the old bytes or the new ones, never part: a temporary
/// file beside it, fsync, rename, fsync of the folder.
pub fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    path.parent().filter(|d| !d.as_os_str().is_empty()).map_or(Ok(()), sync_dir)
}

/// fsync a folder: what was renamed or created in it survives a power cut.
pub fn sync_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

use firmware::engine::Engine;
use firmware::flow::HeapShards;

pub use edge_config::{
    DEFAULT_MAX_FLOWS, FLOWS_HELD_PER_SHARD, FLOWS_PER_SHARD, FLOW_SHARDS, LIMIT_MAX_FLOWS,
};
/// Slots for source hosts with window counters (a power of two; 7/8 of them are held at once).
pub const MAX_HOSTS: usize = 1 << 13;

/// Finished flows go to the store in chunks of this many at most (and at every judgement): a
/// message each woke the writer for each flow.
pub const STORE_FLOW_CHUNK: usize = 64;

/// Messages waiting for the store writer at most: a chunk of [`STORE_FLOW_CHUNK`] flows is one,
/// as are an anomaly, an interval's statistics and a ring write. Full chunks of flows are 16,384
/// rows (a row is a flow with its features, about half a KiB): eight batches of the writer,
/// 8 MiB of memory; it absorbs commit latency, not sustained overload (which is counted in
/// tapwatch_store_queue_drops_total). Counted in rows while flows came in chunks, the queue held
/// 4,096 chunks: 128 MiB at the end of a capture of a million flows (`bench/memory.sh 1000000`:
/// 0.48 KiB a flow, 0.36 with this bound). A queue of 4,096 rows cost `analyze --db` a tenth of its speed
/// (the pipeline waited on the writer's commits); 16,384 cost nothing.
pub const STORE_QUEUE_MESSAGES: usize = 16_384 / STORE_FLOW_CHUNK;

/// The engine the daemon runs.
pub type EdgeEngine = Engine<FLOWS_PER_SHARD, MAX_HOSTS, HeapShards<FLOWS_PER_SHARD, FLOW_SHARDS>>;

/// A new engine on the heap.
///
/// The tables are fixed-size arrays of several tens of MiB; a debug build first builds the value
/// on the stack, so callers run the pipeline on a thread with a stack of at least
/// [`PIPELINE_STACK`] bytes (see [`cli::run`]).
pub fn new_engine(config: firmware::engine::EngineConfig) -> Box<EdgeEngine> {
    // The flow shards are allocations of their own (HeapShards), built in place. The rest (the
    // host, victim and analyzer tables, 9 MB) is written where it lives, into an allocation
    // made first: `Box::new(Engine::new(..))` must make the shards before the box, so it built
    // the engine on the stack and copied it over, both copies' pages resident from the start
    // where the tables' pages should stay untouched until hosts fill them
    // (`bench/memory.sh`: one flow's run 30.9 -> 15.4 MiB; a million flows' 318.9 -> 305.8).
    // A release build writes it in place: the call's result is the box's memory.
    Box::write(Box::new_uninit(), Engine::new(config))
}

/// Stack size of the pipeline thread: room for an [`EdgeEngine`] built in place in a debug build.
pub const PIPELINE_STACK: usize = 8
    * (std::mem::size_of::<EdgeEngine>()
        + std::mem::size_of::<firmware::flow::FlowMap<FLOWS_PER_SHARD>>())
    + (64 << 20);

/// Run `f` on a thread with the pipeline's stack, as the pipeline runs (tests that build an
/// engine), and give back its panic if it panics.
#[cfg(test)]
pub(crate) fn on_pipeline_stack(f: impl FnOnce() + Send + 'static) {
    let t = std::thread::Builder::new().stack_size(PIPELINE_STACK);
    if let Err(panic) = t.spawn(f).expect("spawning a test thread").join() {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_max_flows(n: Option<u64>) -> Result<config::Config, config::ConfigError> {
        let flows = n.map(|n| format!("[flows]\nmax_flows = {n}\n")).unwrap_or_default();
        config::Config::parse(&format!("[device]\nid = \"t\"\n{flows}"), "t.toml")
    }

    #[test]
    fn test_the_flow_table_is_as_large_as_configured() {
        on_pipeline_stack(|| {
            for (max_flows, capacity) in
                [(None, DEFAULT_MAX_FLOWS), (Some(1), 57_344), (Some(1_000_000), 1_032_192)]
            {
                let engine = new_engine(with_max_flows(max_flows).unwrap().engine());
                assert_eq!(engine.flows().capacity(), capacity, "max_flows {max_flows:?}");
            }
        });
        for max_flows in [0, LIMIT_MAX_FLOWS as u64 + 1] {
            let e = with_max_flows(Some(max_flows)).unwrap_err().to_string();
            assert!(e.contains("flows.max_flows"), "{e}");
        }
    }
}
