//! Generates the feature names and indices from `models/features.json`, the single source of
//! truth for the feature vector: reorder or rename a feature there and the code follows; add one
//! there without computing it here and `features::tests::test_every_feature_is_computed` fails.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let path = manifest.join("../models/features.json");
    println!("cargo:rerun-if-changed={}", path.display());
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let version = doc["version"].as_u64().expect("features.json: version must be a number");
    let features = doc["features"].as_array().expect("features.json: features must be a list");
    let mut names = Vec::new();
    let mut units = Vec::new();
    let mut idx = String::new();
    for (i, f) in features.iter().enumerate() {
        let name = f["name"].as_str().expect("features.json: every feature needs a name");
        let unit = f["unit"].as_str().expect("features.json: every feature needs a unit");
        assert!(
            f["definition"].as_str().is_some_and(|d| !d.is_empty()),
            "features.json: {name} needs a definition"
        );
        assert_eq!(f["index"].as_u64(), Some(i as u64), "features.json: {name} index out of order");
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "features.json: {name} must be snake_case"
        );
        idx.push_str(&format!("    pub const {}: usize = {i};\n", name.to_uppercase()));
        names.push(format!("{name:?}"));
        units.push(format!("{unit:?}"));
    }
    let n = names.len();
    let out = format!(
        "/// Version of the feature set (`version` in models/features.json).\n\
         pub const FEATURE_SET_VERSION: u32 = {version};\n\
         /// Number of features.\n\
         pub const N_FEATURES: usize = {n};\n\
         /// Feature names, in vector order.\n\
         pub const NAMES: [&str; N_FEATURES] = [{}];\n\
         /// Feature units, in vector order.\n\
         pub const UNITS: [&str; N_FEATURES] = [{}];\n\
         /// Index of each feature in the vector.\n\
         #[allow(dead_code)]\n\
         pub mod idx {{\n{idx}}}\n",
        names.join(", "),
        units.join(", ")
    );
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("features_gen.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
    sketch_estimates();
}

/// A distinct-count sketch's estimate by the number of its bits set (`hosts::Sketch`): m ln(m /
/// zeros), with the same `libm::logf` the core uses, so that a table read gives the very value
/// the formula does (a host's features, five estimates, are taken at every flow's end).
fn sketch_estimates() {
    const BITS: u32 = 512;
    let m = BITS as f32;
    let values: Vec<String> = (0..=BITS)
        .map(|ones| {
            if ones == 0 {
                return format!("{:?}", 0.0f32);
            }
            let zeros = (BITS - ones).max(1) as f32;
            format!("{:?}", m * libm::logf(m / zeros))
        })
        .collect();
    let out = format!(
        "/// `Sketch::estimate` by bits set (build.rs).\n\
         static ESTIMATES: [f32; {}] = [{}];\n",
        values.len(),
        values.join(", ")
    );
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("sketch_gen.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
