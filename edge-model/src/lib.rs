//! The models on the edge: ONNX files (int8 QDQ, made by `models/train.py`) run with tract, a
//! batch of flows at a time. The hub checks a model uploaded to it with this same code before it
//! offers it to edges ([`Model::from_bytes_any`], [`Model::check_fixture`]).
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
use tract_onnx::tract_core::internal::{ElementWiseMiniOp, TypedModelPatch};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8};

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

    /// The kind a name (a slot, or a file's `tapwatch.kind`) names.
    pub fn parse(name: &str) -> Option<ModelKind> {
        [ModelKind::Autoencoder, ModelKind::Classifier].into_iter().find(|k| k.as_str() == name)
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

/// The most rows of a fixture that are run.
pub const MAX_FIXTURE_ROWS: usize = 4096;

/// How far an output may be from the fixture's (onnxruntime's): the shipped models are within
/// 1e-4 in tract (`tests/models.rs` in the edge).
pub const FIXTURE_TOLERANCE: f32 = 1e-3;

/// Rows with the outputs another runtime gave for them (`models/train.py` writes
/// `fixtures/<model>.json` with onnxruntime's): run on a model before it is put to work.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// The model file's name where it was made.
    pub model: String,
    pub features: Vec<String>,
    /// Each row's features as the extractor computes them (the model's order).
    pub raw: Vec<Vec<f64>>,
    /// The same rows normalised (Python's transform and scaling).
    pub normalised: Vec<Vec<f32>>,
    /// The model's outputs for each row.
    pub outputs: Vec<Vec<f32>>,
}

/// `got` within `tolerance` of `want` (false when either is NaN).
fn within(got: f32, want: f32, tolerance: f32) -> bool {
    (got - want).abs() <= tolerance
}

/// SHA-256 of some bytes, as hex (how models and fixtures are named at the hub and kept on
/// the edge).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

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

/// An activation quantized to int8 and straight back (the QDQ format's pair around every
/// activation), as one element-wise op.
///
/// tract runs the pair as two: `QuantizeLinearI8`, a scalar loop with a branchy
/// round-half-to-even per value (a third of both models' time in `cargo bench --bench
/// inference` before this op), then `DequantizeLinearF32`. This computes the same value (bit
/// for bit, for the zero points a quantizer writes: within int8's range) in a loop the compiler
/// vectorises: `((clamp(round(x * inv_scale), lo, hi) + zp - dq_zp) * dq_scale`,
/// clamping before rounding (the bounds are integers, so the order does not change the result),
/// rounding by adding and taking away 1.5 * 2^23 (ties to even, exact for |v| < 2^22; |v| is at
/// most 256 here), and a NaN going to 0 as tract's cast of it does. (Past 2^31, tract's
/// `as i32 + zero_point` overflows, wrapping in a release build; this saturates, as ONNX's
/// QuantizeLinear says. Activations of our models are far from that.)
#[derive(Debug, Clone, PartialEq)]
struct QuantDequantI8 {
    inv_scale: f32,
    lo: f32,
    hi: f32,
    offset: f32,
    scale: f32,
}

impl Eq for QuantDequantI8 {}

impl QuantDequantI8 {
    fn new(q: &QuantizeLinearI8, dq: &DequantizeLinearF32) -> Self {
        let zp = i32::from(q.zero_point);
        QuantDequantI8 {
            inv_scale: q.scale,
            lo: (-128 - zp) as f32,
            hi: (127 - zp) as f32,
            // In f64: a dequantize zero point from a file can be any i32.
            offset: (f64::from(zp) - f64::from(dq.zero_point)) as f32,
            scale: dq.scale,
        }
    }

    #[inline]
    fn apply(&self, x: f32) -> f32 {
        const ROUND: f32 = 12_582_912.0;
        let v = x * self.inv_scale;
        let v = if v.is_nan() { 0.0 } else { v.max(self.lo).min(self.hi) };
        ((v + ROUND - ROUND) + self.offset) * self.scale
    }
}

impl ElementWiseMiniOp for QuantDequantI8 {
    fn name(&self) -> String {
        "QuantDequantI8".into()
    }

    fn eval_in_place(&self, t: &mut Tensor, _: Option<DatumType>) -> TractResult<()> {
        clear_upper_vector_state();
        for x in t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()? {
            *x = self.apply(*x);
        }
        Ok(())
    }
}

/// tract's x86 kernels (AVX2, AVX-512) return with the upper halves of the vector registers
/// dirty and no `vzeroupper`, and the SSE code that runs after them (ours, and tract's own Rust
/// between its kernels) then pays a state transition on every vector instruction: on this
/// machine the quantize loop above ran at 2 ns a value after a tract kernel and 0.2 ns
/// otherwise. Clearing the state is one instruction, run after each tract kernel that may
/// have left it dirty. Elsewhere there is no such state.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn clear_upper_vector_state() {
    #[target_feature(enable = "avx")]
    fn zeroupper() {
        std::arch::x86_64::_mm256_zeroupper();
    }
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: `zeroupper` needs AVX, which the CPU has (checked just above).
        unsafe { zeroupper() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn clear_upper_vector_state() {}

/// Replace every f32 `QuantizeLinearI8` whose only consumer is a `DequantizeLinearF32` by one
/// [`QuantDequantI8`]; how many were replaced. The pairs are found in one pass; a patch
/// reroutes what read the pair's output, so each later pair's input is read when it is fused.
fn fuse_quant_dequant(model: &mut TypedModel) -> TractResult<usize> {
    let mut pairs = Vec::new();
    for node in model.nodes() {
        let Some(q) =
            node.op_as::<ElementWiseOp>().and_then(|e| e.0.downcast_ref::<QuantizeLinearI8>())
        else {
            continue;
        };
        if node.inputs.len() != 1
            || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type()
        {
            continue;
        }
        let Some(dq_node) = model.single_succ(node.id)? else { continue };
        let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else { continue };
        pairs.push((node.id, dq_node.id, QuantDequantI8::new(q, dq)));
    }
    for (q_id, dq_id, op) in &pairs {
        let q = model.node(*q_id);
        let (input, name) = (q.inputs[0], format!("{}.qdq", q.name));
        let mut patch = TypedModelPatch::default();
        let wire = patch.tap_model(model, input)?;
        let out = patch.wire_node(name, ElementWiseOp(Box::new(op.clone()), None), &[wire])?[0];
        patch.shunt_outside(model, OutletId::new(*dq_id, 0), out)?;
        patch.apply(model)?;
    }
    Ok(pairs.len())
}

/// The runnable plans of `model`, which reads `k` values a row: for any batch size, and for
/// batches of exactly [`FIXED_BATCH`]. Typed, decluttered and fused once (each quantize and
/// dequantize pair one op, unless `fuse` is false: the tests compare both), then optimised for
/// each.
fn plans(model: InferenceModel, k: usize, fuse: bool) -> TractResult<(Plan, Plan)> {
    let n = model.sym("N");
    let fact = InferenceFact::dt_shape(f32::datum_type(), [n.to_dim(), k.to_dim()]);
    let mut typed = model.with_input_fact(0, fact)?.into_typed()?.into_decluttered()?;
    if fuse {
        fuse_quant_dequant(&mut typed)?;
    }
    let batch = std::collections::HashMap::from([(n, FIXED_BATCH.to_dim())]);
    let fixed = typed.set_symbols(&batch)?.into_optimized()?.into_runnable()?;
    Ok((typed.into_optimized()?.into_runnable()?, fixed))
}

/// The transform every model's normalisation starts from: sign(x) * ln(1 + |x|).
///
/// `ln(1 + |x|)` rather than `ln_1p`: three times faster, and the same to within 1e-7 (where
/// they differ, |x| < 1e-4, both are about |x|; features are counts, sizes, rates and times).
pub fn transform(v: &FeatureVector) -> FeatureVector {
    let mut t = *v;
    for x in &mut t {
        // Most features of a flow are 0 (no such flags, no such packets), and so is their
        // transform: skipping them saves most of the logarithms.
        if *x != 0.0 {
            *x = (1.0 + x.abs()).ln().copysign(*x);
        }
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
    /// 1 / scale: a multiplication per feature, not a division (a division's latency was a
    /// quarter of the pipeline's per-flow cost in `cargo bench --bench inference`).
    inv_scale: Vec<f32>,
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

    /// Load and check a model from the bytes of its file, whichever kind it says it is.
    pub fn from_bytes_any(bytes: &[u8], path: &Path) -> Result<Model, ModelError> {
        match Model::from_bytes(bytes, path, ModelKind::Autoencoder) {
            Err(ModelError::WrongKind { found: "classifier", .. }) => {
                Model::from_bytes(bytes, path, ModelKind::Classifier)
            }
            r => r,
        }
    }

    /// Run a fixture's rows (`models/train.py` writes one per model, with onnxruntime's outputs)
    /// and compare: the same features in the same order, the edge's normalisation of each raw
    /// row within 1e-4 of Python's, and each output within [`FIXTURE_TOLERANCE`] of
    /// onnxruntime's. The error names the first row and value that differ.
    pub fn check_fixture(&self, f: &Fixture) -> Result<(), String> {
        if f.features != self.features {
            return Err(format!(
                "the fixture is for features {:?}..., the model reads {:?}...",
                f.features.iter().take(4).collect::<Vec<_>>(),
                self.features.iter().take(4).collect::<Vec<_>>()
            ));
        }
        let rows = f.normalised.len();
        if rows == 0 || rows > MAX_FIXTURE_ROWS {
            return Err(format!("the fixture has {rows} rows; 1 to {MAX_FIXTURE_ROWS} are run"));
        }
        if f.raw.len() != rows || f.outputs.len() != rows {
            return Err(format!(
                "the fixture has {} raw rows, {rows} normalised and {} outputs: one of each a row",
                f.raw.len(),
                f.outputs.len()
            ));
        }
        let k = self.features.len();
        let mut input = Vec::with_capacity(rows * k);
        for (i, (raw, want)) in f.raw.iter().zip(&f.normalised).enumerate() {
            if raw.len() != k || want.len() != k {
                return Err(format!(
                    "fixture row {i}: {} raw and {} normalised values, the model reads {k}",
                    raw.len(),
                    want.len()
                ));
            }
            let mut v = [0f32; N_FEATURES];
            for (j, x) in raw.iter().enumerate() {
                v[self.index[j]] = *x as f32;
            }
            let at = input.len();
            self.normalise(&v, &mut input);
            for (j, (g, w)) in input[at..].iter().zip(want).enumerate() {
                if !within(*g, *w, 1e-4 * w.abs().max(1.0)) {
                    return Err(format!(
                        "fixture row {i}, feature {}: normalised to {g} here, {w} in the fixture",
                        self.features[j]
                    ));
                }
            }
        }
        let out = self.run_normalised(input, rows).map_err(|e| e.to_string())?;
        for (i, want) in f.outputs.iter().enumerate() {
            if want.len() != self.outputs {
                return Err(format!(
                    "fixture row {i}: {} outputs, the model gives {}",
                    want.len(),
                    self.outputs
                ));
            }
            let got = &out[i * self.outputs..(i + 1) * self.outputs];
            for (j, (g, w)) in got.iter().zip(want).enumerate() {
                if !within(*g, *w, FIXTURE_TOLERANCE) {
                    return Err(format!(
                        "fixture row {i}, output {j}: {g} here, {w} in the fixture (more than {FIXTURE_TOLERANCE} apart)"
                    ));
                }
            }
        }
        Ok(())
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
        let name = meta(&model, path, "kind")?;
        let kind = ModelKind::parse(&name).ok_or_else(|| ModelError::Metadata {
            path: path.into(),
            key: "kind",
            problem: format!("`{name}` is neither autoencoder nor classifier"),
        })?;
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
        // Batch size is a symbol: one plan serves every batch, another the usual one.
        let (plan, fixed_plan) =
            plans(model, features.len(), true).map_err(|e| load_err(&format!("{e:#}")))?;
        let m = Model {
            path: path.into(),
            name,
            version,
            kind,
            features,
            index,
            inv_scale: scale.iter().map(|s| s.recip()).collect(),
            mean,
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
            self.index
                .iter()
                .zip(&self.mean)
                .zip(&self.inv_scale)
                .map(|((&i, m), r)| (t[i] - m) * r),
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
    ///
    /// More than [`FIXED_BATCH`] rows run [`FIXED_BATCH`] at a time: tract's cost a row grows
    /// with large batches (each shipped model, one run on an idle 2-core machine: 0.5-0.7 us a
    /// row at 64 rows, 1.3-1.7 us at 4096 rows, 0.6 us at 4096 in batches of 64), and
    /// `detect.models.batch` may be as large as 4096.
    pub fn run_normalised(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, ModelError> {
        let k = self.features.len();
        if rows <= FIXED_BATCH || input.len() != rows * k {
            return self.run_batch(input, rows);
        }
        let mut out = Vec::with_capacity(rows * self.outputs);
        for chunk in input.chunks(FIXED_BATCH * k) {
            out.extend(self.run_batch(chunk.to_vec(), chunk.len() / k)?);
        }
        Ok(out)
    }

    /// Run one batch through the plan for its size.
    fn run_batch(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, ModelError> {
        let run_err = |e: &dyn std::fmt::Display| ModelError::Run {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let t = tract_ndarray::Array2::from_shape_vec((rows, self.features.len()), input)
            .map_err(|e| run_err(&e))?
            .into_tensor();
        let plan = if rows == FIXED_BATCH { &self.fixed_plan } else { &self.plan };
        let out = plan.run(tvec!(t.into()));
        clear_upper_vector_state();
        let out = out.map_err(|e| run_err(&format!("{e:#}")))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tract_onnx::tract_core::ops::quant::quantize_linear_f32_i8;

    /// What tract's two ops give for one value.
    fn pair(x: f32, inv_scale: f32, zp: i8, dq_zp: i32, scale: f32) -> f32 {
        (i32::from(quantize_linear_f32_i8(x, inv_scale, i32::from(zp))) - dq_zp) as f32 * scale
    }

    #[test]
    fn test_fused_quant_dequant_is_tracts_pair_bit_for_bit() {
        let mut values: Vec<f32> = vec![0.0, -0.0, f32::NAN, f32::MIN_POSITIVE, 1e-30, 1e6, -1e6];
        // Ties (k + 0.5 at inv_scale 1), both sides of them, and the clamp's edges.
        for k in -300..300 {
            let t = k as f32 + 0.5;
            values.extend([t, t.next_up(), t.next_down(), k as f32]);
        }
        // A spread of ordinary values.
        let mut x = 0.1f32;
        for _ in 0..2000 {
            x = (x * 1.618_034 + 0.377).fract() * 600.0 - 300.0;
            values.push(x);
            values.push(x * 1e-3);
        }
        for (inv_scale, zp, dq_zp, scale) in
            [(1.0, 0i8, 0, 1.0), (37.5, -128, -128, 0.026_666), (0.9, 5, 5, 1.1), (3.0, 7, -3, 0.5)]
        {
            let op = QuantDequantI8::new(
                &QuantizeLinearI8 { scale: inv_scale, zero_point: zp },
                &DequantizeLinearF32 { scale, zero_point: dq_zp },
            );
            for &v in &values {
                let (got, want) = (op.apply(v), pair(v, inv_scale, zp, dq_zp, scale));
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "x = {v:e} (inv_scale {inv_scale}, zp {zp}, dq_zp {dq_zp}): {got} vs {want}"
                );
            }
            // Past 2^31, tract's `as i32 + zero_point` overflows (and wraps in a release
            // build: 3e38 would quantize to -128); here it saturates, as ONNX defines.
            let top = ((127 - dq_zp) as f32) * scale;
            let bottom = ((-128 - dq_zp) as f32) * scale;
            for (v, want) in [
                (f32::MAX, top),
                (f32::INFINITY, top),
                (f32::MIN, bottom),
                (f32::NEG_INFINITY, bottom),
            ] {
                assert_eq!(op.apply(v), want, "x = {v:e}");
            }
        }
    }

    #[test]
    fn test_a_fixture_passes_on_its_model_and_fails_on_a_changed_output_or_another_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        let read = |name: &str| -> Fixture {
            let text = std::fs::read_to_string(dir.join(format!("fixtures/{name}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let bytes = std::fs::read(dir.join("classifier.onnx")).unwrap();
        let clf = Model::from_bytes_any(&bytes, Path::new("classifier.onnx")).unwrap();
        assert_eq!(clf.kind, ModelKind::Classifier);
        let ae_bytes = std::fs::read(dir.join("autoencoder.onnx")).unwrap();
        let ae = Model::from_bytes_any(&ae_bytes, Path::new("autoencoder.onnx")).unwrap();
        assert_eq!(ae.kind, ModelKind::Autoencoder);
        let f = read("classifier");
        clf.check_fixture(&f).unwrap();
        ae.check_fixture(&read("autoencoder")).unwrap();

        let mut changed = f.clone();
        changed.outputs[5][1] += 0.01;
        let e = clf.check_fixture(&changed).unwrap_err();
        assert!(e.contains("fixture row 5, output 1"), "{e}");
        let mut changed = f.clone();
        changed.raw[2][0] += 1000.0;
        assert!(clf.check_fixture(&changed).unwrap_err().contains("fixture row 2"));
        let mut changed = f.clone();
        changed.outputs.pop();
        assert!(clf.check_fixture(&changed).unwrap_err().contains("one of each a row"));
        // The autoencoder's fixture on the classifier.
        assert!(clf.check_fixture(&read("autoencoder")).is_err());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn test_shipped_models_fuse_every_pair_and_give_the_same_outputs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        for (name, kind) in
            [("autoencoder", ModelKind::Autoencoder), ("classifier", ModelKind::Classifier)]
        {
            let path = dir.join(format!("{name}.onnx"));
            let m = Model::load(&path, kind).unwrap();
            let k = m.features.len();
            let onnx = tract_onnx::onnx().model_for_path(&path).unwrap();
            let fact = |n: usize| InferenceFact::dt_shape(f32::datum_type(), [n, k]);
            // The graph as loaded has quantize-dequantize pairs; fused, none are left.
            let mut typed = onnx.clone().with_input_fact(0, fact(8)).unwrap().into_typed().unwrap();
            typed = typed.into_decluttered().unwrap();
            let n = fuse_quant_dequant(&mut typed).unwrap();
            assert!(n >= 2, "{name}: {n} pairs fused");
            let (any, fused) = plans(onnx.clone(), k, true).unwrap();
            for p in [&any, &fused] {
                assert!(
                    !p.model().nodes().iter().any(|n| n.op.name().contains("QuantizeLinear")),
                    "{name}: a quantize op is left"
                );
            }
            let (_, unfused) = plans(onnx, k, false).unwrap();
            // Rows from real features, and rows far outside them (clamped by the quantizer).
            let mut x = 0.3f32;
            let input: Vec<f32> = (0..FIXED_BATCH * k)
                .map(|i| {
                    x = (x * 1.618_034 + 0.377).fract();
                    if i < FIXED_BATCH * k / 2 {
                        x * 6.0 - 3.0
                    } else {
                        x * 2000.0 - 1000.0
                    }
                })
                .collect();
            let run = |p: &Plan| {
                let t = tract_ndarray::Array2::from_shape_vec((FIXED_BATCH, k), input.clone())
                    .unwrap()
                    .into_tensor();
                let out = p.run(tvec!(t.into())).unwrap();
                out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
            };
            let (a, b) = (run(&fused), run(&unfused));
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= 1e-6, "{name} output {i}: fused {x}, unfused {y}");
            }
        }
    }

    #[test]
    fn test_a_batch_larger_than_the_fixed_one_gives_what_its_rows_give_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        for (name, kind) in
            [("autoencoder", ModelKind::Autoencoder), ("classifier", ModelKind::Classifier)]
        {
            let m = Model::load(&dir.join(format!("{name}.onnx")), kind).unwrap();
            let k = m.features.len();
            // Two fixed batches and a part of one.
            let rows = 2 * FIXED_BATCH + 7;
            let mut x = 0.3f32;
            let input: Vec<f32> = (0..rows * k)
                .map(|_| {
                    x = (x * 1.618_034 + 0.377).fract();
                    x * 6.0 - 3.0
                })
                .collect();
            let all = m.run_normalised(input.clone(), rows).unwrap();
            assert_eq!(all.len(), rows * m.outputs);
            for (r, row) in input.chunks(k).enumerate() {
                let alone = m.run_normalised(row.to_vec(), 1).unwrap();
                for (j, (a, b)) in all[r * m.outputs..][..m.outputs].iter().zip(&alone).enumerate()
                {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{name} row {r} output {j}: {a} in the batch, {b} alone"
                    );
                }
            }
            // Values that do not make whole rows are refused, not cut into batches.
            assert!(m.run_normalised(input[..rows * k - 1].to_vec(), rows).is_err());
        }
    }
}
