"""Labelled flow table from captures, with the features tapwatch-edge itself computes.

Usage: python3 models/dataset.py --edge PATH/tapwatch-edge --out flows.csv LABELS.csv...

Each LABELS.csv (as models/lab/lab.sh writes) lists `capture,label,source`; capture paths are
relative to the CSV's folder. Every capture is run through `tapwatch-edge analyze --emit flows`
(the same extractor and features as the edge, never a second one). A flow of an attack capture is
labelled with the attack when the labelled source took part in it (as initiator or responder),
`benign` otherwise; every flow of a benign capture is `benign`. The output has one row per flow:
capture, label, the flow's endpoints and times, and the features in models/features.json order
(as `f_<name>`).
Splits must be made by capture (the `capture` column), never by flow.
"""

import argparse
import csv
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def feature_names() -> list[str]:
    spec = json.loads((HERE / "features.json").read_text())
    return [f["name"] for f in spec["features"]]


def flows(edge: str, capture: pathlib.Path):
    """The flow records of one capture, as tapwatch-edge writes them."""
    p = subprocess.run(
        [edge, "analyze", "--emit", "flows", str(capture)],
        check=False,
        capture_output=True,
        text=True,
    )
    if p.returncode not in (0, 65):  # 65: a damaged capture, read as far as it goes
        raise SystemExit(f"{capture}: tapwatch-edge failed ({p.returncode}): {p.stderr.strip()}")
    for line in p.stdout.splitlines():
        r = json.loads(line)
        if r.get("record") == "flow":
            yield r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", required=True, help="the tapwatch-edge binary")
    ap.add_argument("--out", required=True, help="the CSV to write")
    ap.add_argument("labels", nargs="+", help="labels.csv files (capture,label,source)")
    args = ap.parse_args()
    names = feature_names()
    counts: dict[str, int] = {}
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["capture", "label", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                    "start_us", "end_us"] + [f"f_{n}" for n in names])
        for labels in args.labels:
            base = pathlib.Path(labels).resolve().parent
            for capture, label, source in csv.reader(open(labels)):
                for r in flows(args.edge, base / capture):
                    involved = source in (r["src_ip"], r["dst_ip"])
                    row_label = label if label != "benign" and involved else "benign"
                    feats = r["features"]
                    missing = [n for n in names if n not in feats]
                    if missing:
                        raise SystemExit(f"{capture}: features missing from the edge: {missing}")
                    w.writerow([capture, row_label, r["src_ip"], r["src_port"], r["dst_ip"],
                                r["dst_port"], r["protocol"], r["start_us"], r["end_us"]]
                               + [feats[n] for n in names])
                    counts[row_label] = counts.get(row_label, 0) + 1
    for label, n in sorted(counts.items()):
        print(f"{label:16} {n:8} flows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
