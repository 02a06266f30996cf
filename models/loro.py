"""Leave one repository out: the models trained on public captures from every repository but
one, and judged on that one, for each repository of the corpus (models/corpus.tsv).

Usage: VENV/bin/python models/loro.py --edge PATH/tapwatch-edge [--data ../shared/data]
           [--work /var/cache/tapwatch-loro] [--epochs N] [--out models/EVALUATION.md]

1. Every capture of models/corpus.tsv goes through models/dataset.py (the edge's own features),
   one set per repository. Public captures do not say the attacker's address: a flow is the
   attack's when the host that began the most flows in its capture began it (`@attacker`), or,
   for an attack named by its victim, when it went to or came from the host the most flows went
   to (`@victim`); every other flow of the capture is benign. The corpus' `scan` (port scans,
   sweeps, OS fingerprinting) is trained as `port_scan`.
2. For each repository R: models/train.py --hold-out R trains the autoencoder and the classifier
   on every other repository (15% of their benign captures calibrate the autoencoder's
   threshold), exports and quantizes them as it does the shipped ones.
3. R's captures are judged by the edge itself (models/corpus_check.py --repo R --models FOLD):
   attack captures named with the right kind by any detector and by each model alone, benign
   captures with any alert and with a model's. R's benign flows are also run through the
   fold's models directly: the share (by flows, as sampled and weighted) either flags.

The section "## Leave one repository out" of --out is written anew (it is the file's last).
"""

import argparse
import collections
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import evaluate  # noqa: E402

SECTION = "## Leave one repository out"


def labels(corpus: pathlib.Path, data: pathlib.Path, work: pathlib.Path) -> list[pathlib.Path]:
    """One labels.csv per repository, in work/sets/<repository>/; their paths."""
    by_repo = collections.defaultdict(list)
    for line in corpus.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, kind, role, repo = line.split("\t")[:4]
        label = "port_scan" if kind == "scan" else kind
        source = "-" if kind == "benign" else "@victim" if role == "victim" else "@attacker"
        by_repo[repo].append((str((data / path).resolve()), label, source))
    out = []
    for repo, rows in sorted(by_repo.items()):
        d = work / "sets" / repo
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "labels.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        out.append(d / "labels.csv")
    return out


def judged(edge: str, data: pathlib.Path, repo: str, models: pathlib.Path | None) -> dict:
    """models/corpus_check.py on one repository's captures, its figures."""
    cmd = [sys.executable, str(HERE / "corpus_check.py")]
    cmd += ["--models", str(models)] if models else []
    cmd += ["--repo", repo, str(data), edge]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = {"detectors": {}}
    for line in out.splitlines():
        if m := re.match(r"attack captures named with the right kind: (\d+)/(\d+)", line):
            r["right"], r["attacks"] = int(m[1]), int(m[2])
        elif m := re.match(r"benign captures with any alert: (\d+)/(\d+)", line):
            r["benign_alerts"], r["benign"] = int(m[1]), int(m[2])
        elif m := re.match(r"(windows|analyzers|classifier|autoencoder)\t(\d+)\t(\d+)\t(\d+)$", line):
            r["detectors"][m[1]] = tuple(int(v) for v in m.groups()[1:])
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", required=True)
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--work", default="/var/cache/tapwatch-loro")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default=str(HERE / "EVALUATION.md"))
    ap.add_argument("--reuse-flows", action="store_true", help="keep work/flows.csv if there")
    ap.add_argument("--reuse-folds", action="store_true",
                    help="judge the folds' models already in work, without training again")
    ap.add_argument("--report", action="store_true",
                    help="write --out again from the last run's figures (work/rows.json)")
    args = ap.parse_args()
    data, work = pathlib.Path(args.data).resolve(), pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.report:
        write(pathlib.Path(args.out), json.loads((work / "rows.json").read_text()), args.epochs)
        return 0
    sets = labels(HERE / "corpus.tsv", data, work)
    flows = work / "flows.csv"
    if not (args.reuse_flows and flows.exists()):
        subprocess.run([sys.executable, str(HERE / "dataset.py"), "--edge", args.edge,
                        "--out", str(flows)] + [str(s) for s in sets], check=True)
    df = pd.read_csv(flows, low_memory=False)
    rows = []
    for labels_csv in sets:
        repo = labels_csv.parent.name
        fold = work / f"fold-{repo}"
        trained = all((fold / m).exists() for m in ("autoencoder.onnx", "classifier.onnx"))
        if not (args.reuse_folds and trained):
            subprocess.run([sys.executable, str(HERE / "train.py"), "--flows", str(flows),
                            "--out", str(fold), "--hold-out", repo, "--epochs",
                            str(args.epochs)], check=True)
        alone = judged(args.edge, data, repo, None)
        both = judged(args.edge, data, repo, fold)
        held = df[(df["set"] == repo) & (df["label"] == "benign")]
        if len(held):
            v = evaluate.verdicts(held, fold)
            w = held["weight"].to_numpy(float)
            flagged = float(w[v != "benign"].sum() / w.sum())
        else:
            flagged = float("nan")
        rows.append((repo, alone, both, flagged, int(len(held))))
        print(f"{repo}: without models {alone.get('right', 0)}/{alone.get('attacks', 0)}, with "
              f"{both.get('right', 0)}/{both.get('attacks', 0)}; benign captures "
              f"{both.get('benign_alerts', 0)}/{both.get('benign', 0)}; flows {flagged:.2%}",
              file=sys.stderr)
    (work / "rows.json").write_text(json.dumps(rows))
    write(pathlib.Path(args.out), rows, args.epochs)
    return 0


def write(out: pathlib.Path, rows: list, epochs: int) -> None:
    g = lambda r, k: r.get(k, 0)  # noqa: E731
    det = lambda r, d, i: r["detectors"].get(d, (0, 0, 0))[i]  # noqa: E731
    lines = [
        SECTION, "",
        "Made by `models/loro.py` (see its docstring for the labelling; "
        f"{epochs} epochs): for each repository, the autoencoder and the classifier trained on "
        "the public captures of every other repository, and the edge (`analyze --models FOLD`) "
        "run on that repository's. *Right*: attack captures named with the right kind (any "
        "detector); *by classifier*, *by autoencoder*: named right by that model (*alone*: by "
        "it and no other detector). *Benign alerts*: benign captures with any alert, and with "
        "a model's. *Benign flows flagged*: the held-out benign flows either model flags.",
        "",
        "| held-out repository | attack captures | right, no models | right, with models | "
        "by classifier (alone) | by autoencoder (alone) | benign captures | benign alerts, no "
        "models | benign alerts, with models | by a model | benign flows flagged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tot = collections.Counter()
    for repo, alone, both, flagged, n in rows:
        model_benign = max(det(both, "classifier", 2), det(both, "autoencoder", 2))
        lines.append(
            f"| {repo} | {g(both, 'attacks')} | {g(alone, 'right')} | {g(both, 'right')} | "
            f"{det(both, 'classifier', 0)} ({det(both, 'classifier', 1)}) | "
            f"{det(both, 'autoencoder', 0)} ({det(both, 'autoencoder', 1)}) | "
            f"{g(both, 'benign')} | {g(alone, 'benign_alerts')} | {g(both, 'benign_alerts')} | "
            f"{model_benign} | {'—' if n == 0 else f'{flagged:.2%} of {n}'} |")
        for k, v in (("attacks", g(both, "attacks")), ("alone", g(alone, "right")),
                     ("both", g(both, "right")), ("benign", g(both, "benign")),
                     ("ba", g(alone, "benign_alerts")), ("bb", g(both, "benign_alerts")),
                     ("clf", det(both, "classifier", 0)), ("clf1", det(both, "classifier", 1)),
                     ("ae", det(both, "autoencoder", 0)), ("ae1", det(both, "autoencoder", 1)),
                     ("mb", model_benign)):
            tot[k] += v
    lines.append(
        f"| **all** | {tot['attacks']} | {tot['alone']} | {tot['both']} | {tot['clf']} "
        f"({tot['clf1']}) | {tot['ae']} ({tot['ae1']}) | {tot['benign']} | {tot['ba']} | "
        f"{tot['bb']} | {tot['mb']} | |")
    # What each detector names right on its own, over every held-out repository: the windows
    # and the analyzers from the runs without models, the models from the runs with them.
    lines += ["", "| detector | attack captures named right | of them by it alone | benign "
              "captures it raises anything on |", "|---|---:|---:|---:|"]
    for d in ("windows", "analyzers", "classifier", "autoencoder"):
        k = 1 if d in ("windows", "analyzers") else 2
        v = [sum(det(r[k], d, i) for r in rows) for i in range(3)]
        lines.append(f"| {d} | {v[0]} | {v[1]} | {v[2]} |")
    flows = [(f, n) for _, _, _, f, n in rows if n]
    lines += [
        "",
        f"Trained on other people's captures and judged on a repository they never saw, the "
        f"models name {tot['both'] - tot['alone']:+d} attack captures over what the windows "
        f"and the protocol analyzers name alone ({tot['alone']} of {tot['attacks']}; the "
        f"classifier names {tot['clf']}, {tot['clf1']} of them alone; the autoencoder "
        f"{tot['ae']}), and raise alerts on {tot['bb']} of {tot['benign']} benign captures "
        f"against {tot['ba']} without them; held-out benign flows flagged range from "
        f"{min(f for f, _ in flows):.1%} to {max(f for f, _ in flows):.1%} by repository. "
        "A flow's features carry a network's own habits (its links, its stacks, its "
        "applications), and what one repository's benign traffic looks like says little of "
        "another's: the autoencoder's threshold, set on other repositories' benign flows, "
        "does not hold on a new one. So the models stay off in the default configuration "
        "(`[detect.models]` in edge-daemon/edge.example.toml), and detection on a network "
        "nobody trained on is the windows' and the analyzers'. The models are for a site that "
        "trains them on its own traffic (models/train.py on its captures): the autoencoder "
        "as a baseline of that network, the classifier on its own labelled incidents.",
        "",
    ]
    old = out.read_text() if out.exists() else ""
    head = old.split(SECTION)[0].rstrip("\n")
    out.write_text((head + "\n\n" if head else "") + "\n".join(lines) + "\n")
    print(json.dumps(dict(tot)), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
