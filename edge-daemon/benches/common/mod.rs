//! What the benches feed on: the finished flows of real captures (tests/data, or the file
//! `TAPWATCH_BENCH_PCAP` names), through the pipeline as `analyze` runs it.

use firmware::engine::FinishedFlow;
use std::path::{Path, PathBuf};
use tapwatch_edge::config::Config;
use tapwatch_edge::pipeline::{PacketIn, Pipeline};

/// The finished flows, made on a thread with the pipeline's stack (the engine is larger than
/// a main thread's default stack).
pub fn finished_flows() -> Vec<FinishedFlow> {
    std::thread::Builder::new()
        .stack_size(tapwatch_edge::PIPELINE_STACK)
        .spawn(finished_flows_here)
        .expect("a thread for the pipeline")
        .join()
        .expect("the pipeline's thread")
}

fn finished_flows_here() -> Vec<FinishedFlow> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files: Vec<PathBuf> = match std::env::var_os("TAPWATCH_BENCH_PCAP") {
        Some(p) => vec![p.into()],
        None => std::fs::read_dir(root.join("tests/data"))
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default(),
    };
    let config = Config::offline(None);
    let mut out = Vec::new();
    let mut p = Pipeline::new(&config, vec!["bench".into()], None);
    for f in files {
        let mut keep = |f: &FinishedFlow| out.push(*f);
        let _ = tapwatch_edge::offline::read_file(&f, None, |pk| {
            p.packet(
                PacketIn {
                    iface: 0,
                    link: pk.link,
                    dlt: pk.dlt,
                    ts_us: pk.ts_us,
                    wire_len: pk.wire_len,
                    data: pk.data,
                },
                &mut keep,
            )
        });
        p.finish(&mut keep);
    }
    out
}
