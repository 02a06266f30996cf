//! The models' cost per flow inside the pipeline: [`ModelStage`] with both shipped models, fed
//! the finished flows of real captures (tests/data, or the file `TAPWATCH_BENCH_PCAP` names),
//! batched as the pipeline batches them (64, and 256). What is timed is what the pipeline pays:
//! queueing a flow with its features, the transform and normalisation, both models in tract,
//! per-feature errors and the verdicts. Target: at most 2 us a flow.
//!
//! Run: `cargo bench -p tapwatch-edge --bench inference`

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firmware::engine::FinishedFlow;
use std::path::Path;
use tapwatch_edge::inference::ModelStage;
use tapwatch_edge::model::{Model, ModelKind};

fn bench(c: &mut Criterion) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
    let load = |name: &str, kind| Model::load(&shipped.join(name), kind).expect("shipped model");
    let all = common::finished_flows();
    assert!(!all.is_empty(), "no flows to bench");
    // At least 4096 flows per iteration (the set repeated).
    let set: Vec<(FinishedFlow, firmware::features::FeatureVector)> =
        all.iter().cycle().take(all.len().max(4096)).map(|f| (*f, f.features())).collect();
    let mut g = c.benchmark_group("models");
    g.throughput(Throughput::Elements(set.len() as u64));
    for batch in [16usize, 64, 256] {
        let mut stage = ModelStage::new(
            Some(load("autoencoder.onnx", ModelKind::Autoencoder)),
            Some(load("classifier.onnx", ModelKind::Classifier)),
            batch,
            3,
            10_000_000,
        );
        g.bench_function(format!("both models, batch {batch}"), |b| {
            b.iter(|| {
                let mut trips = 0u32;
                for (f, v) in &set {
                    if stage.push(f, v) {
                        stage.flush(&mut |_, _, _, _| trips += 1);
                    }
                }
                stage.flush(&mut |_, _, _, _| trips += 1);
                std::hint::black_box(trips)
            })
        });
    }
    // Each model alone in tract, on rows already normalised: what the graph itself costs.
    for (name, kind) in
        [("autoencoder", ModelKind::Autoencoder), ("classifier", ModelKind::Classifier)]
    {
        let m = load(&format!("{name}.onnx"), kind);
        let mut rows = Vec::new();
        for (_, v) in set.iter().take(4096) {
            m.normalise(v, &mut rows);
        }
        let n = rows.len() / m.features.len();
        // A run's fixed cost shows at a few rows a run: offline, flows end a dozen a batch.
        for batch in [1usize, 13, 64] {
            let per = batch * m.features.len();
            g.bench_function(format!("{name} in tract only, batch {batch}"), |b| {
                b.iter(|| {
                    let mut total = 0.0f32;
                    for chunk in rows.chunks(per) {
                        let out = m.run_normalised(chunk.to_vec(), chunk.len() / m.features.len());
                        total += out.map_or(0.0, |o| o[0]);
                    }
                    std::hint::black_box((total, n))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
