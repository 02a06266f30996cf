"""Train, export and quantize the edge's two models from a flow table (models/dataset.py).

Usage: python3 models/train.py --flows flows.csv --out models/shipped [--epochs N]

- `autoencoder`: trained on benign flows only; the anomaly score of a flow is the mean squared
  reconstruction error of its normalised features, and the per-feature error says which features
  drove it. The threshold is set on held-out benign captures (the calibration split) at the
  `--ae-fpr` quantile, measured with the quantized model itself.
- `classifier`: the attack kind (or benign) of a flow, with class weights that balance the kinds.

Splits are by capture, never by flow (see `split()`): lab rounds 1 and 2 and 70% of the benign
captures train; benign captures of a further 10% calibrate the threshold; lab round 3 and the
remaining 20% of the benign captures are the held-out test set; `unseen` captures are never used
here. Both models go to ONNX (opset 17, tf2onnx), then to int8 QDQ (onnxruntime's static
quantization of the MatMul weights and inputs; Softmax stays float, as tract needs, and so do
the bias Adds and Relus: tract runs each QuantizeLinear element by element, and a pair around
every Add and Relu cost more than the matrix products). Each file
carries in its ONNX metadata (keys `tapwatch.*`): name, version, kind, the feature names it reads
(in order), the transform and normalisation the edge applies before it, the class names, the
threshold, and the minimum confidence. `fixtures/<name>.json` keeps 64 held-out rows (raw, and
normalised as float32) with onnxruntime's outputs for them, for the parity test against tract.
"""

import argparse
import hashlib
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "2026.11.1"
# Features the models do not read: the destination port is an identity, not a behaviour (a
# model that learns "port 8080" does not carry over to another network).
EXCLUDED = {"dst_port"}
TRANSFORM = "signed_log1p"


def feature_names() -> list[str]:
    spec = json.loads((HERE / "features.json").read_text())
    return [f["name"] for f in spec["features"] if f["name"] not in EXCLUDED]


def bucket(capture: str) -> int:
    """A stable number 0..99 from a capture's name."""
    return int(hashlib.sha256(capture.encode()).hexdigest(), 16) % 100


def split(df: pd.DataFrame, hold_out: str | None = None) -> pd.Series:
    """train / calibrate / test / unseen, per capture. With `hold_out` (a set: one repository of
    public captures, as models/loro.py makes them), that set is the test split and every other
    set trains, but for 15% of its benign captures, which calibrate."""
    attack = set(df.loc[df["label"] != "benign", ["set", "capture"]].itertuples(index=False))

    def one(set_name: str, capture: str) -> str:
        if hold_out is not None:
            if set_name == hold_out:
                return "test"
            if (set_name, capture) in attack:
                return "train"
            return "calibrate" if bucket(f"{set_name}/{capture}") >= 85 else "train"
        if set_name == "unseen":
            return "unseen"
        if set_name == "benign":
            b = bucket(capture)
            return "train" if b < 65 else "calibrate" if b < 80 else "test"
        # Lab rounds: round3 (and later rounds) is held out.
        return "train" if set_name in ("round1", "round2") else "test"

    keys = df[["set", "capture"]].drop_duplicates()
    which = {(s, c): one(s, c) for s, c in keys.itertuples(index=False)}
    return pd.Series([which[(s, c)] for s, c in zip(df["set"], df["capture"])], index=df.index)


def transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def normalise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((transform(x) - mean) / scale).astype(np.float32)


def to_onnx(model, path: pathlib.Path, n: int, output: str) -> None:
    import tensorflow as tf
    import tf2onnx

    model.output_names = [output]
    spec = (tf.TensorSpec((None, n), tf.float32, name="features"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    import onnx

    onnx.save(proto, str(path))


class Rows:
    """Calibration rows for onnxruntime's static quantization."""

    def __init__(self, x: np.ndarray):
        self.rows = iter([{"features": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.rows, None)


def quantize(fp32: pathlib.Path, out: pathlib.Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_suffix(".pre.onnx")
    # No graph optimisation first: MatMul and its bias Add stay apart (fused into a Gemm, the
    # quantizer would also quantize the Gemm's output).
    quant_pre_process(str(fp32), str(pre), skip_optimization=True)
    quantize_static(
        str(pre), str(out), Rows(calib), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    pre.unlink()


def set_metadata(path: pathlib.Path, meta: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = f"tapwatch.{k}", v
    m.producer_name = "tapwatch-models"
    m.model_version = int(VERSION.replace(".", ""))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def session(path: pathlib.Path):
    """An onnxruntime session that computes as the ONNX operators say, as tract does: with its
    graph optimisations on, onnxruntime fuses QDQ around a MatMul into an integer kernel whose
    rounding differs by a quantization step now and then."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    return session(path).run(None, {"features": x})[0]


def ae_scores(recon: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((recon - x) ** 2).mean(axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--ae-fpr", type=float, default=0.005,
                    help="the share of calibration benign flows the autoencoder may flag")
    ap.add_argument("--min-class-flows", type=int, default=8,
                    help="a kind with fewer training flows is not one of the classifier's classes")
    ap.add_argument("--min-confidence", type=float, default=0.8,
                    help="the classifier names a kind at this probability or more")
    ap.add_argument("--hold-out", help="a set (repository) held out as the test split")
    args = ap.parse_args()

    import keras

    keras.utils.set_random_seed(7)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fixtures").mkdir(exist_ok=True)
    names = feature_names()
    df = pd.read_csv(args.flows, low_memory=False)
    df["split"] = split(df, args.hold_out)
    x_all = df[[f"f_{n}" for n in names]].to_numpy(np.float64)
    labels = df["label"].to_numpy()
    train = (df["split"] == "train").to_numpy()
    calib = (df["split"] == "calibrate").to_numpy()
    test = (df["split"] == "test").to_numpy()
    benign = labels == "benign"
    # The classifier names the kinds a flow shows, with enough training flows to learn; the
    # rest (a flood from one address in one flow, ARP, DHCP) are the window detectors' to find.
    kinds, counts = np.unique(labels[train & ~benign], return_counts=True)
    classes = ["benign"] + sorted(k for k, c in zip(kinds, counts) if c >= args.min_class_flows)
    print(f"train {train.sum()} rows, calibrate {calib.sum()}, test {test.sum()}; classes {classes}",
          file=sys.stderr)

    # One normalisation for both models, from the training rows.
    t = transform(x_all[train])
    mean, scale = t.mean(axis=0), t.std(axis=0)
    scale[scale < 1e-6] = 1.0
    x = normalise(x_all, mean, scale)
    common = {
        "version": VERSION,
        "features": json.dumps(names),
        "transform": TRANSFORM,
        "mean": json.dumps([round(float(v), 7) for v in mean]),
        "scale": json.dumps([round(float(v), 7) for v in scale]),
    }
    rng = np.random.default_rng(7)

    # Autoencoder on benign training flows.
    xb = x[train & benign]
    ae = keras.Sequential([
        keras.Input((len(names),), name="features"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(len(names)),
    ])
    ae.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    ae.fit(xb, xb, epochs=args.epochs, batch_size=128, verbose=0, shuffle=True,
           validation_split=0.1)
    fp32 = out / "autoencoder.fp32.onnx"
    to_onnx(ae, fp32, len(names), "reconstruction")
    q = out / "autoencoder.onnx"
    quantize(fp32, q, xb[rng.choice(len(xb), min(500, len(xb)), replace=False)])
    cal = x[calib & benign]
    threshold = float(np.quantile(ae_scores(run(q, cal), cal), 1.0 - args.ae_fpr))
    set_metadata(q, {**common, "name": "autoencoder", "kind": "autoencoder",
                     "threshold": f"{threshold:.6g}", "classes": "[]",
                     "min_confidence": "0"})

    # Classifier on the training flows of its classes, balanced by kind.
    known = np.isin(labels, classes)
    y = np.array([classes.index(v) if v in classes else 0 for v in labels])
    tr = train & known
    counts = np.bincount(y[tr], minlength=len(classes))
    weights = {i: len(y[tr]) / (len(classes) * max(c, 1)) for i, c in enumerate(counts)}
    clf = keras.Sequential([
        keras.Input((len(names),), name="features"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(len(classes), activation="softmax"),
    ])
    clf.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    clf.fit(x[tr], y[tr], epochs=args.epochs, batch_size=128, verbose=0, shuffle=True,
            class_weight=weights)
    fp32c = out / "classifier.fp32.onnx"
    to_onnx(clf, fp32c, len(names), "probabilities")
    qc = out / "classifier.onnx"
    pick = rng.choice(np.flatnonzero(tr), min(1000, int(tr.sum())), replace=False)
    quantize(fp32c, qc, x[pick])
    set_metadata(qc, {**common, "name": "classifier", "kind": "classifier", "threshold": "0",
                      "classes": json.dumps(classes),
                      "min_confidence": f"{args.min_confidence}"})
    fp32.unlink()
    fp32c.unlink()

    # Fixtures: 64 raw held-out rows, every label represented, with onnxruntime's outputs.
    idx = []
    test_idx = np.flatnonzero(test)
    for label in classes:
        of = test_idx[labels[test_idx] == label]
        idx += list(rng.choice(of, min(6, len(of)), replace=False)) if len(of) else []
    rest = np.setdiff1d(test_idx, idx)
    idx += list(rng.choice(rest, max(0, min(64 - len(idx), len(rest))), replace=False))
    raw = x_all[idx]
    normalised = normalise(raw, mean, scale)
    for name, path in (("autoencoder", q), ("classifier", qc)):
        fixture = {"model": f"{name}.onnx", "features": names, "raw": raw.tolist(),
                   "normalised": normalised.astype(float).tolist(),
                   "outputs": run(path, normalised).astype(float).tolist()}
        (out / "fixtures" / f"{name}.json").write_text(json.dumps(fixture) + "\n")
    (out / "split.json").write_text(json.dumps(
        {s: sorted({f"{a}/{b}" for a, b in df.loc[df["split"] == s, ["set", "capture"]]
                    .itertuples(index=False)})
         for s in ("train", "calibrate", "test", "unseen")}, indent=1) + "\n")
    print(f"autoencoder threshold {threshold:.5g}; classes {classes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
