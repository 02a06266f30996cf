//! The shipped models in tract: the same outputs as onnxruntime gave for the fixture rows
//! (`models/shipped/fixtures`, written by models/train.py with onnxruntime, and checked again
//! against onnxruntime by models/parity.py in CI), the same normalisation as Python's, and the
//! files that must be refused: not a model, a wrong slot, a feature the extractor does not
//! compute, broken metadata. A changed file is loaded again; a bad one is refused and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::{Path, PathBuf};
use tapwatch_edge::model::{Model, ModelError, ModelKind};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped")
}

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    features: Vec<String>,
    raw: Vec<Vec<f64>>,
    normalised: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> Fixture {
    let p = shipped().join("fixtures").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn tract_matches_onnxruntime_on_every_shipped_model() {
    for (name, kind) in
        [("autoencoder", ModelKind::Autoencoder), ("classifier", ModelKind::Classifier)]
    {
        let f = fixture(name);
        let m = Model::load(&shipped().join(&f.model), kind).unwrap();
        assert_eq!(m.features, f.features, "{name}: feature list");
        assert_eq!(f.normalised.len(), tapwatch_edge::model::FIXED_BATCH, "{name}: fixture rows");
        // All 64 rows (the plan made for batches of 64) and 63 of them (the plan for any size).
        for rows in [64, 63] {
            let input: Vec<f32> = f.normalised.iter().take(rows).flatten().copied().collect();
            let out = m.run_normalised(input, rows).unwrap();
            let mut worst = 0f32;
            for (i, want) in f.outputs.iter().take(rows).enumerate() {
                let got = &out[i * m.outputs..(i + 1) * m.outputs];
                for (j, (g, w)) in got.iter().zip(want).enumerate() {
                    if (g - w).abs() > 1e-4 && std::env::var_os("TAPWATCH_DEBUG").is_some() {
                        eprintln!("{name} row {i} out {j}: tract {g} onnxruntime {w}");
                    }
                    worst = worst.max((g - w).abs());
                }
            }
            assert!(
                worst <= 1e-4,
                "{name}, {rows} rows: tract differs from onnxruntime by {worst}"
            );
        }

        // The edge's normalisation (f32) is Python's (f64, then f32).
        for (raw, want) in f.raw.iter().zip(&f.normalised) {
            let mut v = [0f32; firmware::features::N_FEATURES];
            for (j, name) in f.features.iter().enumerate() {
                v[firmware::features::index_of(name).unwrap()] = raw[j] as f32;
            }
            let mut got = Vec::new();
            m.normalise(&v, &mut got);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{name}: normalised {g} vs {w}");
            }
        }
    }
}

/// A copy of a shipped model with one metadata entry changed (or removed: `None`).
fn altered(dir: &Path, name: &str, key: &str, value: Option<&str>) -> PathBuf {
    use prost::Message;
    use tract_onnx::prelude::Framework;
    let mut proto = tract_onnx::onnx().proto_model_for_path(shipped().join(name)).unwrap();
    let full = format!("tapwatch.{key}");
    proto.metadata_props.retain(|p| p.key != full);
    if let Some(v) = value {
        proto
            .metadata_props
            .push(tract_onnx::pb::StringStringEntryProto { key: full, value: v.to_string() });
    }
    let out = dir.join(format!("{key}-{name}"));
    std::fs::write(&out, proto.encode_to_vec()).unwrap();
    out
}

#[test]
fn bad_model_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ae = "autoencoder.onnx";

    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = Model::load(&junk, ModelKind::Autoencoder).unwrap_err();
    assert!(matches!(e, ModelError::Load { .. }), "{e}");

    let missing =
        Model::load(&dir.path().join("nothing.onnx"), ModelKind::Autoencoder).unwrap_err();
    assert!(matches!(missing, ModelError::Load { .. }), "{missing}");

    let e = Model::load(&shipped().join("classifier.onnx"), ModelKind::Autoencoder).unwrap_err();
    assert!(matches!(e, ModelError::WrongKind { .. }), "{e}");
    assert!(
        e.to_string().contains("is a classifier model; this slot takes the autoencoder"),
        "{e}"
    );

    // A feature this extractor does not compute.
    let spec = fixture("autoencoder");
    let mut names = spec.features.clone();
    names[3] = "tcp_retransmissions".into();
    let p = altered(dir.path(), ae, "features", Some(&serde_json::to_string(&names).unwrap()));
    let e = Model::load(&p, ModelKind::Autoencoder).unwrap_err();
    match &e {
        ModelError::Features { unknown, .. } => assert_eq!(unknown, &["tcp_retransmissions"]),
        other => panic!("{other}"),
    }

    // Metadata missing or wrong.
    let p = altered(dir.path(), ae, "threshold", None);
    let e = Model::load(&p, ModelKind::Autoencoder).unwrap_err();
    assert!(matches!(e, ModelError::Metadata { key: "threshold", .. }), "{e}");
    let p = altered(dir.path(), ae, "mean", Some("[1.0, 2.0]"));
    let e = Model::load(&p, ModelKind::Autoencoder).unwrap_err();
    assert!(e.to_string().contains("2 values for"), "{e}");
    let p = altered(dir.path(), ae, "transform", Some("zscore"));
    assert!(Model::load(&p, ModelKind::Autoencoder).is_err());
    let p = altered(dir.path(), "classifier.onnx", "classes", Some(r#"["benign","teleport"]"#));
    let e = Model::load(&p, ModelKind::Classifier).unwrap_err();
    assert!(e.to_string().contains("`teleport` is not an anomaly kind"), "{e}");
    // A graph output that no node makes (tract would panic on it; found by fuzzing).
    {
        use prost::Message;
        use tract_onnx::prelude::Framework;
        let mut proto = tract_onnx::onnx().proto_model_for_path(shipped().join(ae)).unwrap();
        proto.graph.as_mut().unwrap().output[0].name = "nowhere".into();
        let p = dir.path().join("dangling.onnx");
        std::fs::write(&p, proto.encode_to_vec()).unwrap();
        let e = Model::load(&p, ModelKind::Autoencoder).unwrap_err();
        assert!(e.to_string().contains("graph output `nowhere` is made by no node"), "{e}");
    }
    // Two classes for a seven-way output: the test row shows the shape is wrong.
    let p = altered(dir.path(), "classifier.onnx", "classes", Some(r#"["benign","port_scan"]"#));
    let e = Model::load(&p, ModelKind::Classifier).unwrap_err();
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");
}

#[test]
fn a_changed_file_is_loaded_again_and_a_bad_one_refused() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("autoencoder.onnx");
    std::fs::copy(shipped().join("autoencoder.onnx"), &path).unwrap();
    let paths: tapwatch_edge::inference::ModelPaths =
        std::sync::Arc::new(std::sync::Mutex::new([path.display().to_string(), String::new()]));
    let counters = std::sync::Arc::new(tapwatch_edge::inference::ReloadCounters::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (c, p) = (counters.clone(), paths.clone());
    let every = Duration::from_secs(1);
    let watcher =
        std::thread::spawn(move || tapwatch_edge::inference::watch(every, p, tx, stop_rx, c));
    let loaded = |rx: &crossbeam_channel::Receiver<tapwatch_edge::inference::Swap>| match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a model")
    {
        tapwatch_edge::inference::Swap::Load(m) => m,
        other => panic!("{other:?}"),
    };

    // Unchanged: nothing happens.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(rx.try_recv().is_err());

    // A model with an unknown feature: refused, counted, nothing handed over.
    let bad = altered(dir.path(), "autoencoder.onnx", "features", Some(r#"["nope"]"#));
    std::fs::rename(&bad, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.refused.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
    assert!(rx.try_recv().is_err());

    // A good one again (a new version): handed over.
    let good = altered(dir.path(), "autoencoder.onnx", "version", Some("test.2"));
    std::fs::rename(&good, &path).unwrap();
    let m = loaded(&rx);
    assert_eq!(m.version, "test.2");
    assert_eq!(counters.loaded.load(Ordering::Relaxed), 1);

    // The slot moves to another file (the hub's model, loaded by the configuration's
    // runtime): the watcher follows it without loading it, and a change to the old file is
    // not its business any more.
    let other = dir.path().join("hub.onnx");
    std::fs::copy(shipped().join("autoencoder.onnx"), &other).unwrap();
    paths.lock().unwrap()[0] = other.display().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let newer = altered(dir.path(), "autoencoder.onnx", "version", Some("test.3"));
    std::fs::rename(&newer, &path).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(rx.try_recv().is_err());
    // Its new file changes: loaded.
    let newest = altered(dir.path(), "autoencoder.onnx", "version", Some("test.4"));
    std::fs::rename(&newest, &other).unwrap();
    assert_eq!(loaded(&rx).version, "test.4");
    drop(stop);
    watcher.join().unwrap();
}

/// `analyze --models --db`: the scan in tests/data is named with the model's reasons, and each
/// model's analysis (rows scored, score statistics, latency) is stored for its interval.
#[test]
fn analyze_with_models_stores_analyses_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/nmap_syn_scan.pcap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapwatch-edge"))
        .args(["analyze", "--emit", "flows,anomalies", "--models"])
        .arg(shipped())
        .arg("--db")
        .arg(&db)
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = common::records(&out);
    let flows = records.iter().filter(|r| r["record"] == "flow").count() as i64;
    let anomalies: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["record"] == "anomaly").collect();
    assert!(anomalies.iter().any(|a| a["kind"] == "port_scan"), "the scan is named: {anomalies:?}");
    for a in &anomalies {
        assert!(!a["reasons"].as_array().unwrap().is_empty(), "every anomaly says why: {a}");
    }

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT model, SUM(rows), MIN(score_min), MAX(score_max), MAX(threshold) FROM analyses GROUP BY model ORDER BY model")
        .unwrap();
    let rows: Vec<(String, i64, f64, f64, f64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "autoencoder");
    assert_eq!(rows[1].0, "classifier");
    for (model, scored, min, max, threshold) in &rows {
        assert_eq!(*scored, flows, "{model} scored every flow");
        assert!(min <= max && *threshold > 0.0, "{model}: {min} {max} {threshold}");
    }
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM anomalies WHERE detector != 'window'", [], |r| r.get(0))
        .unwrap();
    let from_models = anomalies.iter().filter(|a| a["detector"] != "window").count() as i64;
    assert_eq!(stored, from_models);
}
