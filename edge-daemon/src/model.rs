//! The models on the edge: ONNX files (int8 QDQ, made by `models/train.py`) run with tract, a
//! batch of flows at a time.
//!
//! A model file says in its metadata (keys `tapwatch.*`) what it is: its name, version and kind
//! (`autoencoder` or `classifier`), the features it reads in order (names from
//! `models/features.json`, a subset of what the extractor computes), the transform and
//! normalisation applied before it (`signed_log1p`, then `(x - mean) / scale`), its class names,
//! its threshold and the classifier's minimum confidence. [`Model::load`] checks all of it and
//! runs one row through the model before it is accepted: a file that is not a model, lacks a key,
//! names a feature the extractor does not compute or gives outputs of the wrong shape is refused
//! with an error that says which and why.

use firmware::features::{FeatureVector, NAMES, N_FEATURES};
use firmware::proto::AnomalyKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// What a model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Reconstructs its input; the score is the mean squared error of the normalised features.
    Autoencoder,
    /// Class probabilities (Softmax in the graph, left in float by the quantizer).
    Classifier,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Autoencoder => "autoencoder",
            ModelKind::Classifier => "classifier",
        }
    }
}

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot load the ONNX model: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: metadata `tapwatch.{key}`: {problem}")]
    Metadata { path: PathBuf, key: &'static str, problem: String },
    #[error("{path}: this file is a {found} model; this slot takes the {expected}")]
    WrongKind { path: PathBuf, expected: &'static str, found: &'static str },
    #[error("{path}: features the extractor does not compute: {unknown:?}")]
    Features { path: PathBuf, unknown: Vec<String> },
    #[error("{path}: output has {found} values per row, expected {expected}")]
    Shape { path: PathBuf, found: usize, expected: usize },
    #[error("{path}: inference failed: {reason}")]
    Run { path: PathBuf, reason: String },
}

type Plan = Arc<TypedRunnableModel>;

/// Batches of this many rows (the default `detect.models.batch`) run on a plan made for that
/// size, which tract optimises further than the plan for any size (`cargo bench --bench
/// inference`, both models at batch 64: 3.40 us a flow on the plan for any size, 3.07 on this).
pub const FIXED_BATCH: usize = 64;

/// What tract's translation takes for granted of a graph, checked first (a file that breaks it
/// would make tract panic, found by the `model_load` fuzz target): a graph, every output named
/// by a node, an input or an initializer, and a size a model of ours could have.
fn check_graph(proto: &tract_onnx::pb::ModelProto) -> Result<(), String> {
    let g = proto.graph.as_ref().ok_or("no graph")?;
    if g.node.len() > 10_000 || g.initializer.len() > 10_000 {
        return Err(format!(
            "{} nodes and {} initializers: too many",
            g.node.len(),
            g.initializer.len()
        ));
    }
    let mut known: std::collections::HashSet<&str> =
        g.input.iter().map(|i| i.name.as_str()).collect();
    known.extend(g.initializer.iter().map(|t| t.name.as_str()));
    known.extend(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    for o in &g.output {
        if !known.contains(o.name.as_str()) {
            return Err(format!("graph output `{}` is made by no node", o.name));
        }
    }
    if g.output.is_empty() {
        return Err("the graph has no output".into());
    }
    Ok(())
}

/// The transform every model's normalisation starts from: sign(x) * ln(1 + |x|).
///
/// `ln(1 + |x|)` rather than `ln_1p`: three times faster, and the same to within 1e-7 (where
/// they differ, |x| < 1e-4, both are about |x|; features are counts, sizes, rates and times).
pub fn transform(v: &FeatureVector) -> FeatureVector {
    let mut t = *v;
    for x in &mut t {
        *x = (1.0 + x.abs()).ln().copysign(*x);
    }
    t
}

/// A loaded, checked model.
#[derive(Debug)]
pub struct Model {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub kind: ModelKind,
    /// The features it reads, in its input order, and where each is in the extractor's vector.
    pub features: Vec<&'static str>,
    index: Vec<usize>,
    mean: Vec<f32>,
    scale: Vec<f32>,
    /// Class names, and the kind each names (`None`: benign).
    pub classes: Vec<String>,
    pub class_kinds: Vec<Option<AnomalyKind>>,
    pub threshold: f32,
    pub min_confidence: f32,
    /// Values per output row.
    pub outputs: usize,
    plan: Plan,
    /// The plan for batches of exactly [`FIXED_BATCH`] rows.
    fixed_plan: Plan,
    /// When the file was last modified, as loaded (for reloads).
    pub modified: Option<std::time::SystemTime>,
}

fn meta(model: &InferenceModel, path: &Path, key: &'static str) -> Result<String, ModelError> {
    let full = format!("onnx.metadata_props.tapwatch.{key}");
    let t = model.properties.get(&full).ok_or_else(|| ModelError::Metadata {
        path: path.into(),
        key,
        problem: "missing (not a Tapwatch model, or made by an older models/train.py)".into(),
    })?;
    t.try_as_plain_ram().and_then(|v| v.to_scalar::<String>().cloned()).map_err(|e| {
        ModelError::Metadata { path: path.into(), key, problem: format!("not a string: {e}") }
    })
}

fn meta_json<T: serde::de::DeserializeOwned>(
    model: &InferenceModel,
    path: &Path,
    key: &'static str,
) -> Result<T, ModelError> {
    let s = meta(model, path, key)?;
    serde_json::from_str(&s).map_err(|e| ModelError::Metadata {
        path: path.into(),
        key,
        problem: format!("{e}: {}", s.chars().take(80).collect::<String>()),
    })
}

impl Model {
    /// Load and check a model file; `expected` is the slot it is for.
    pub fn load(path: &Path, expected: ModelKind) -> Result<Model, ModelError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::Load { path: path.into(), reason: e.to_string() })?;
        let mut m = Model::from_bytes(&bytes, path, expected)?;
        m.modified = modified;
        Ok(m)
    }

    /// Load and check a model from the bytes of its file (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path, expected: ModelKind) -> Result<Model, ModelError> {
        let load_err = |e: &dyn std::fmt::Display| ModelError::Load {
            path: path.into(),
            reason: e.to_string(),
        };
        let modified = None;
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| load_err(&format!("{e:#}")))?;
        check_graph(&proto).map_err(|e| load_err(&e))?;
        let model = onnx.model_for_proto_model(&proto).map_err(|e| load_err(&format!("{e:#}")))?;
        let kind = match meta(&model, path, "kind")?.as_str() {
            "autoencoder" => ModelKind::Autoencoder,
            "classifier" => ModelKind::Classifier,
            other => {
                return Err(ModelError::Metadata {
                    path: path.into(),
                    key: "kind",
                    problem: format!("`{other}` is neither autoencoder nor classifier"),
                })
            }
        };
        if kind != expected {
            return Err(ModelError::WrongKind {
                path: path.into(),
                expected: expected.as_str(),
                found: kind.as_str(),
            });
        }
        let names: Vec<String> = meta_json(&model, path, "features")?;
        let mut features = Vec::with_capacity(names.len());
        let mut index = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for n in &names {
            match NAMES.iter().position(|k| k == n) {
                Some(i) => {
                    features.push(NAMES[i]);
                    index.push(i);
                }
                None => unknown.push(n.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(ModelError::Features { path: path.into(), unknown });
        }
        if features.is_empty() {
            return Err(ModelError::Metadata {
                path: path.into(),
                key: "features",
                problem: "empty".into(),
            });
        }
        let transform = meta(&model, path, "transform")?;
        if transform != "signed_log1p" {
            return Err(ModelError::Metadata {
                path: path.into(),
                key: "transform",
                problem: format!("`{transform}` is not known (signed_log1p is)"),
            });
        }
        let mean: Vec<f32> = meta_json(&model, path, "mean")?;
        let scale: Vec<f32> = meta_json(&model, path, "scale")?;
        for (key, v) in [("mean", &mean), ("scale", &scale)] {
            if v.len() != features.len() {
                return Err(ModelError::Metadata {
                    path: path.into(),
                    key,
                    problem: format!("{} values for {} features", v.len(), features.len()),
                });
            }
            if v.iter().any(|x| !x.is_finite()) || (key == "scale" && v.contains(&0.0)) {
                return Err(ModelError::Metadata {
                    path: path.into(),
                    key,
                    problem: "values must be finite (and scales not zero)".into(),
                });
            }
        }
        let classes: Vec<String> = meta_json(&model, path, "classes")?;
        let mut class_kinds = Vec::with_capacity(classes.len());
        for c in &classes {
            if c == "benign" {
                class_kinds.push(None);
                continue;
            }
            let k: AnomalyKind = serde_json::from_value(serde_json::Value::String(c.clone()))
                .map_err(|_| ModelError::Metadata {
                    path: path.into(),
                    key: "classes",
                    problem: format!("`{c}` is not an anomaly kind"),
                })?;
            class_kinds.push(Some(k));
        }
        let number = |key: &'static str| -> Result<f32, ModelError> {
            let s = meta(&model, path, key)?;
            s.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| ModelError::Metadata {
                path: path.into(),
                key,
                problem: format!("`{s}` is not a number"),
            })
        };
        let threshold = number("threshold")?;
        let min_confidence = number("min_confidence")?;
        let name = meta(&model, path, "name")?;
        let version = meta(&model, path, "version")?;
        let outputs = match kind {
            ModelKind::Autoencoder => features.len(),
            ModelKind::Classifier => {
                if classes.len() < 2 {
                    return Err(ModelError::Metadata {
                        path: path.into(),
                        key: "classes",
                        problem: "a classifier needs at least two classes".into(),
                    });
                }
                classes.len()
            }
        };
        if kind == ModelKind::Autoencoder && threshold <= 0.0 {
            return Err(ModelError::Metadata {
                path: path.into(),
                key: "threshold",
                problem: "an autoencoder's threshold must be above 0".into(),
            });
        }
        // Batch size is a symbol: one plan serves every batch.
        let n = model.sym("N");
        let fact =
            InferenceFact::dt_shape(f32::datum_type(), [n.to_dim(), features.len().to_dim()]);
        let fixed_plan = model
            .clone()
            .with_input_fact(
                0,
                InferenceFact::dt_shape(
                    f32::datum_type(),
                    [FIXED_BATCH.to_dim(), features.len().to_dim()],
                ),
            )
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| load_err(&format!("{e:#}")))?;
        let plan = model
            .with_input_fact(0, fact)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| load_err(&format!("{e:#}")))?;
        let m = Model {
            path: path.into(),
            name,
            version,
            kind,
            features,
            index,
            mean,
            scale,
            classes,
            class_kinds,
            threshold,
            min_confidence,
            outputs,
            plan,
            fixed_plan,
            modified,
        };
        // One row through it: the output must have the promised shape and be finite.
        let out = m.run(&[[0.0; N_FEATURES]])?;
        if out.len() != m.outputs {
            return Err(ModelError::Shape {
                path: path.into(),
                found: out.len(),
                expected: m.outputs,
            });
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Run { path: path.into(), reason: "non-finite output".into() });
        }
        Ok(m)
    }

    /// The model's normalised input for one flow (what it reads, as it reads it), appended
    /// to `out`.
    pub fn normalise(&self, v: &FeatureVector, out: &mut Vec<f32>) {
        self.normalise_transformed(&transform(v), out)
    }

    /// As [`normalise`](Self::normalise), from a vector already through [`transform`] (the
    /// models share it, so it is computed once per flow).
    pub fn normalise_transformed(&self, t: &FeatureVector, out: &mut Vec<f32>) {
        out.extend(
            self.index.iter().zip(&self.mean).zip(&self.scale).map(|((&i, m), s)| (t[i] - m) / s),
        );
    }

    /// Where the model's `j`th input is in the extractor's vector.
    pub fn feature_index(&self, j: usize) -> usize {
        self.index[j]
    }

    /// Run the model on raw feature vectors: `outputs` values per row, rows in order.
    pub fn run(&self, rows: &[FeatureVector]) -> Result<Vec<f32>, ModelError> {
        let mut input = Vec::with_capacity(rows.len() * self.features.len());
        for r in rows {
            self.normalise(r, &mut input);
        }
        self.run_normalised(input, rows.len())
    }

    /// Run the model on rows already normalised (`features.len()` values each).
    pub fn run_normalised(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, ModelError> {
        let run_err = |e: &dyn std::fmt::Display| ModelError::Run {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let t = tract_ndarray::Array2::from_shape_vec((rows, self.features.len()), input)
            .map_err(|e| run_err(&e))?
            .into_tensor();
        let plan = if rows == FIXED_BATCH { &self.fixed_plan } else { &self.plan };
        let out = plan.run(tvec!(t.into())).map_err(|e| run_err(&format!("{e:#}")))?;
        let view = out[0]
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(|e| run_err(&format!("{e:#}")))?;
        let found = view.len() / rows.max(1);
        if found != self.outputs || view.len() != rows * self.outputs {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                found,
                expected: self.outputs,
            });
        }
        Ok(view)
    }
}
