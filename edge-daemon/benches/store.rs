//! The SQLite writer's cost per flow row: the finished flows of real captures (tests/data, or
//! the file `TAPWATCH_BENCH_PCAP` names) as the pipeline sends them, written to a store on
//! disk (a temporary folder; `TMPDIR` picks the disk).
//!
//! - `write_batch`: one transaction of `batch_rows` (2,000) flow rows, the store alone;
//! - `writer thread`: 20,000 rows through `spawn_writer`'s queue, from the first send until the
//!   thread has committed them and stopped (channel, batching and the writes together).
//!
//! Run: `cargo bench -p tapwatch-edge --bench store`

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use tapwatch_edge::config::StoreConfig;
use tapwatch_edge::store::{spawn_writer, AgeClock, FlowRow, Row, Store, StoreCounters};

fn bench(c: &mut Criterion) {
    let all: Vec<FlowRow> = common::finished_flows().iter().map(FlowRow::from).collect();
    assert!(!all.is_empty(), "no flows to bench");
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = StoreConfig {
        path: dir.path().join("bench.db"),
        max_size_mb: 100_000,
        ..StoreConfig::default()
    };
    // As the pipeline sends them: chunks of 64 flows.
    let rows = |n: usize| -> Vec<Row> {
        let flows: Vec<_> = all.iter().cycle().take(n).cloned().collect();
        flows.chunks(64).map(|c| Row::Flows(c.to_vec())).collect()
    };
    let mut g = c.benchmark_group("store");
    g.sample_size(20);

    let batch = rows(config.batch_rows);
    let mut store = Store::open(&config, Arc::new(StoreCounters::default())).expect("store");
    g.throughput(Throughput::Elements(config.batch_rows as u64));
    g.bench_function("write_batch, 2000 flow rows", |b| {
        b.iter(|| store.write_batch(&batch).expect("write"))
    });
    drop(store);

    let n = 20_000;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("writer thread, 20000 flow rows", |b| {
        b.iter_batched(
            || rows(n),
            |rows| {
                let store =
                    Store::open(&config, Arc::new(StoreCounters::default())).expect("store");
                let w = spawn_writer(store, 8192, AgeClock::Off);
                for r in rows {
                    w.tx.send(r).expect("writer running");
                }
                drop(w.tx);
                w.handle.join().expect("writer thread");
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
