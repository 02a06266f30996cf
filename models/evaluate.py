"""Evaluate the shipped models and the edge's detection, and write models/EVALUATION.md.

Usage: python3 models/evaluate.py --flows flows.csv --models models/shipped \
           --edge PATH/tapwatch-edge --labels LABELS.csv... --out models/EVALUATION.md

Two views:
- Flows: every held-out flow (the `test` split of models/train.py: lab round 3 and the held-out
  benign captures) through the shipped int8 models in onnxruntime, with the edge's rule: the
  classifier's kind at `min_confidence` or more, else `anomalous_flow` when the autoencoder's
  error is over its threshold, else benign. Per-kind precision, recall and F1, the confusion
  matrix, and the share of each held-out benign capture's flows flagged.
- Captures: every held-out capture, and every capture no model saw (`unseen`), through
  `tapwatch-edge analyze --models DIR --emit anomalies`: the anomalies the edge raises (window
  detectors and models together, as episodes), against the capture's label and source.
"""

import argparse
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train  # noqa: E402  (the split and normalisation are train.py's own)

LORO = "## Leave one repository out"


def load(path: pathlib.Path):
    import onnx

    meta = {p.key.removeprefix("tapwatch."): p.value for p in onnx.load(str(path)).metadata_props}
    return train.session(path), meta


def verdicts(df: pd.DataFrame, models: pathlib.Path) -> np.ndarray:
    ae, ae_meta = load(models / "autoencoder.onnx")
    clf, clf_meta = load(models / "classifier.onnx")
    names = json.loads(ae_meta["features"])
    mean = np.array(json.loads(ae_meta["mean"]))
    scale = np.array(json.loads(ae_meta["scale"]))
    x = train.normalise(df[[f"f_{n}" for n in names]].to_numpy(np.float64), mean, scale)
    recon = ae.run(None, {"features": x})[0]
    score = ((recon - x) ** 2).mean(axis=1)
    probs = clf.run(None, {"features": x})[0]
    classes = json.loads(clf_meta["classes"])
    best = probs.argmax(axis=1)
    p_best = probs.max(axis=1)
    out = np.array(["benign"] * len(df), dtype=object)
    flagged = score > float(ae_meta["threshold"])
    out[flagged] = "anomalous_flow"
    named = (p_best >= float(clf_meta["min_confidence"])) & (best != classes.index("benign"))
    out[named] = np.array(classes, dtype=object)[best[named]]
    return out


def prf(y: np.ndarray, p: np.ndarray, kind: str) -> tuple[float, float, float, int]:
    tp = int(((y == kind) & (p == kind)).sum())
    fp = int(((y != kind) & (p == kind)).sum())
    fn = int(((y == kind) & (p != kind)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1, int((y == kind).sum())


def anomalies(edge: str, models: pathlib.Path, capture: pathlib.Path) -> list[tuple[str, str]]:
    p = subprocess.run([edge, "analyze", "--models", str(models), "--emit", "anomalies",
                        str(capture)], capture_output=True, text=True, check=False)
    if p.returncode not in (0, 65):
        raise SystemExit(f"{capture}: tapwatch-edge failed: {p.stderr.strip()}")
    found = []
    for line in p.stdout.splitlines():
        r = json.loads(line)
        found.append((r["kind"], r["src_ip"]))
    return sorted(set(found))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--labels", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    models = pathlib.Path(args.models)
    df = pd.read_csv(args.flows, low_memory=False)
    df = df.assign(split=train.split(df))
    _, clf_meta = load(models / "classifier.onnx")
    _, ae_meta = load(models / "autoencoder.onnx")
    classes = json.loads(clf_meta["classes"])
    test = df[(df["split"] == "test") & df["label"].isin(classes)].copy()
    test["pred"] = verdicts(test, models)
    y, p = test["label"].to_numpy(), test["pred"].to_numpy()

    lines = ["# Evaluation of the shipped models", "", (
        "The figures on the lab's own split below are a unit test, not the result: on public "
        "captures from repositories a model never saw (*Leave one repository out*, the last "
        "section, by `models/loro.py`), the models add nothing to what the windows and the "
        "protocol analyzers name, and raise alerts on benign captures the others are silent "
        "on; they are off by default."), ""]
    lines += [f"Models: `autoencoder.onnx` and `classifier.onnx`, version {ae_meta['version']} "
              f"(int8 QDQ; autoencoder threshold {float(ae_meta['threshold']):.4g}, classifier "
              f"minimum confidence {clf_meta['min_confidence']}). Written by `models/evaluate.py`; "
              "`models/build.sh` makes everything again from the captures.", ""]
    sizes = df.groupby("split")["capture"].nunique()
    lines += ["Captures per split (by capture, never by flow): " + ", ".join(
        f"{k} {v}" for k, v in sizes.items()) + ". Floods keep a uniform sample of at most 3000 "
        "flows per capture and label (`models/dataset.py`); the counts below are of those rows.",
        ""]

    lines += ["## Flows: held-out test split", "",
              "Kinds the classifier names; the window detectors' kinds (ICMP flood, ARP spoofing, "
              "DHCP starvation: one flow, or none, per attack) are judged at the capture level "
              "below. `anomalous_flow` is the autoencoder alone (no kind named).", "",
              "| kind | flows | precision | recall | F1 |", "|---|---:|---:|---:|---:|"]
    f1s = []
    for k in classes:
        prec, rec, f1, n = prf(y, p, k)
        f1s.append(f1)
        lines.append(f"| {k} | {n} | {prec:.3f} | {rec:.3f} | {f1:.3f} |")
    macro = float(np.mean(f1s))
    benign = y == "benign"
    fp_rate = float((p[benign] != "benign").mean()) if benign.any() else 0.0
    lines += ["", f"**Macro-F1 {macro:.3f}** over {len(classes)} classes. Benign flows flagged "
              f"(any verdict but benign): **{fp_rate:.2%}** of {int(benign.sum())}.", ""]

    cols = classes + ["anomalous_flow"]
    lines += ["Confusion matrix (rows: label, columns: verdict):", "",
              "| label \\ verdict | " + " | ".join(cols) + " |",
              "|---|" + "---:|" * len(cols)]
    for k in classes:
        row = [int(((y == k) & (p == c)).sum()) for c in cols]
        lines.append(f"| {k} | " + " | ".join(str(v) for v in row) + " |")
    lines.append("")

    lines += ["### Benign captures held out: share of flows flagged", "",
              "| capture | flows | flagged |", "|---|---:|---:|"]
    worst = []
    for (s, c), g in test[test["label"] == "benign"].groupby(["set", "capture"]):
        share = float((g["pred"] != "benign").mean())
        worst.append((share, f"{s}/{c}", len(g)))
    for share, name, n in sorted(worst, reverse=True):
        lines.append(f"| {name} | {n} | {share:.1%} |")
    lines.append("")

    lines += ["## Captures: what the edge raises", "",
              "`tapwatch-edge analyze --models models/shipped --emit anomalies CAPTURE`: window "
              "detectors and models together, one anomaly per source and kind (an episode). "
              "Caught: the labelled kind from the labelled source (`*`: any source). Other: any "
              "further anomaly.", ""]
    rows = []
    for labels in args.labels:
        base = pathlib.Path(labels).resolve().parent
        for capture, label, source in csv.reader(open(labels)):
            which = train.split(pd.DataFrame({"set": [base.name], "capture": [capture]})).iloc[0]
            if which not in ("test", "unseen"):
                continue
            found = anomalies(args.edge, models, base / capture)
            expect = [(k, s) for k, s in found if k == label and (source in ("*", s))]
            other = [f"{k} {s}" for k, s in found if (k, s) not in expect]
            ok = "—" if label == "benign" else ("yes" if expect else "**no**")
            rows.append((base.name, capture, label, source, ok, other))
    lines += ["| set | capture | label | source | caught | other anomalies |",
              "|---|---|---|---|---|---|"]
    for s, c, label, source, ok, other in rows:
        lines.append(f"| {s} | {c} | {label} | {source} | {ok} | {', '.join(other) or '—'} |")
    attacks = [r for r in rows if r[2] != "benign"]
    caught = sum(r[4] == "yes" for r in attacks)
    kinds = sorted({r[2] for r in attacks})
    missed_kinds = sorted({r[2] for r in attacks if r[4] != "yes"})
    benign_caps = [r for r in rows if r[2] == "benign"]
    benign_alerts = sum(bool(r[5]) for r in benign_caps)
    lines += ["", f"Attack captures caught: **{caught} of {len(attacks)}** ({len(kinds)} kinds; "
              f"missed in some capture: {', '.join(missed_kinds) or 'none'}). Benign captures "
              f"with any anomaly: **{benign_alerts} of {len(benign_caps)}**.", ""]
    # models/loro.py's section (the file's last) is its own: kept as it was.
    out = pathlib.Path(args.out)
    kept = out.read_text().partition(LORO)[1:] if out.exists() else ("", "")
    out.write_text("\n".join(lines) + "\n" + ("\n" + "".join(kept) if kept[0] else ""))
    print(f"macro-F1 {macro:.3f}, benign flagged {fp_rate:.2%}, captures caught {caught}/"
          f"{len(attacks)}, benign captures alerting {benign_alerts}/{len(benign_caps)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
