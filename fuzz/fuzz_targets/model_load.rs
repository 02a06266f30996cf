//! A model file as the edge reads it (from the hub, or a disk): any bytes give a model that
//! passed every check, or a `ModelError`, never a panic. Seeded with the shipped models
//! (`fuzz/corpus/model_load`), so mutations reach the metadata checks and tract's translation,
//! not only the protobuf decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tapwatch_edge::model::{Model, ModelKind};

fuzz_target!(|data: &[u8]| {
    for kind in [ModelKind::Autoencoder, ModelKind::Classifier] {
        if let Ok(m) = Model::from_bytes(data, Path::new("fuzz.onnx"), kind) {
            // A model that loads runs, and its outputs have the promised shape.
            let out = m.run(&[[1.0; firmware::features::N_FEATURES]; 2]);
            if let Ok(out) = out {
                assert_eq!(out.len(), 2 * m.outputs);
            }
        }
    }
});
