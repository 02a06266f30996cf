//! A fixture as the hub takes it at upload and an edge takes it from the hub: any bytes give a
//! fixture the shipped classifier passes, or an error naming the row or field, never a panic
//! (rows of any length, NaN and infinite values, more rows than a batch). Seeded with the
//! shipped fixtures (`fuzz/corpus/model_fixture`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tapwatch_edge::model::{Fixture, Model, ModelKind};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped/classifier.onnx");
        Model::load(&p, ModelKind::Classifier).expect("the shipped classifier")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = serde_json::from_slice::<Fixture>(data) {
        let _ = model().check_fixture(&f);
    }
});
