"""Labelled flow table from captures, with the features tapwatch-edge itself computes.

Usage: python3 models/dataset.py --edge PATH/tapwatch-edge --out flows.csv [--max-per-capture N]
       LABELS.csv...

Each LABELS.csv (as models/lab/lab.sh writes) lists `capture,label,source`; capture paths are
relative to the CSV's folder. Every capture is run through `tapwatch-edge analyze --emit flows`
(the same extractor and features as the edge, never a second one). A flow of an attack capture is
labelled with the attack when the labelled source initiated it (for reflection, whose source is
the victim: when the victim is either end), or always when the source is `*` (a capture that
holds only the attack); `benign` otherwise. A public capture whose attacker's address nobody
wrote down says `@attacker` (the host that began the most flows in it, as a scanner, a flooder
or a guesser does) or `@victim` (the host the most flows went to; its flows either way are the
attack's, as a reflection's);
every flow of a benign capture is `benign`. A flood makes hundreds of thousands of flows that
differ only in their ports, so at most N flows of each label are kept per capture (a uniform
sample, the same on every run; the `weight` column says how many flows each kept one stands for).
The output has one row per flow: the set (the LABELS.csv's folder name), capture, label, weight,
the flow's endpoints and times, and the features in models/features.json order (as `f_<name>`).
Splits must be made by capture (the `capture` column), never by flow.
"""

import argparse
import collections
import csv
import json
import pathlib
import random
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


def top_host(edge: str, capture: pathlib.Path, end: str) -> str:
    """The address at `end` (src_ip or dst_ip) of the most flows of a capture."""
    n = collections.Counter(r[end] for r in flows(edge, capture))
    return n.most_common(1)[0][0] if n else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", required=True, help="the tapwatch-edge binary")
    ap.add_argument("--out", required=True, help="the CSV to write")
    ap.add_argument("--max-per-capture", type=int, default=3000,
                    help="flows kept per capture and label (a uniform sample)")
    ap.add_argument("labels", nargs="+", help="labels.csv files (capture,label,source)")
    args = ap.parse_args()
    names = feature_names()
    counts: dict[str, int] = {}
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "capture", "label", "weight", "src_ip", "src_port", "dst_ip",
                    "dst_port", "protocol", "start_us", "end_us"] + [f"f_{n}" for n in names])
        for labels in args.labels:
            base = pathlib.Path(labels).resolve().parent
            for capture, label, source in csv.reader(open(labels)):
                # Reservoir sample per label, seeded by the capture's name: the same every run.
                rng = random.Random(f"{base.name}/{capture}")
                kept: dict[str, list] = {}
                seen: dict[str, int] = {}
                victim = label == "reflection" or source == "@victim"
                if source in ("@attacker", "@victim"):
                    end = "src_ip" if source == "@attacker" else "dst_ip"
                    source = top_host(args.edge, base / capture, end)
                for r in flows(args.edge, base / capture):
                    # The attacker's own flows; what others send back on flows of their own
                    # (an ICMP error, say) is their normal reaction, benign. A reflection's
                    # source is its victim, at either end.
                    involved = (source == "*" or r["src_ip"] == source
                                or (victim and r["dst_ip"] == source))
                    row_label = label if label != "benign" and involved else "benign"
                    feats = r["features"]
                    missing = [n for n in names if n not in feats]
                    if missing:
                        raise SystemExit(f"{capture}: features missing from the edge: {missing}")
                    row = [r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["protocol"],
                           r["start_us"], r["end_us"]] + [feats[n] for n in names]
                    n = seen.get(row_label, 0)
                    seen[row_label] = n + 1
                    bucket = kept.setdefault(row_label, [])
                    if n < args.max_per_capture:
                        bucket.append(row)
                    else:
                        j = rng.randrange(n + 1)
                        if j < args.max_per_capture:
                            bucket[j] = row
                for row_label, rows in kept.items():
                    weight = seen[row_label] / len(rows)
                    for row in rows:
                        w.writerow([base.name, capture, row_label, f"{weight:.3f}"] + row)
                    counts[row_label] = counts.get(row_label, 0) + seen[row_label]
    for label, n in sorted(counts.items()):
        print(f"{label:16} {n:8} flows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
