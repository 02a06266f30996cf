#!/usr/bin/env bash
# Everything the models are made from, again, in one command (as root: the lab needs network
# namespaces): the lab's captures (three rounds of models/lab/lab.sh), the flow table
# (models/dataset.py, features from tapwatch-edge itself), training, ONNX export and int8
# quantization (models/train.py into models/shipped), the parity check against onnxruntime
# (models/parity.py) and the evaluation (models/evaluate.py into models/EVALUATION.md).
#
# Usage: sudo models/build.sh [WORK_DIR]   (default /var/cache/tapwatch-models; ~250 MB; ~15 min)
#   VENV: the Python environment (default /var/cache/tapwatch-venv; made from
#   models/requirements.txt when missing). LAB=skip reuses the captures already in WORK_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=${1:-/var/cache/tapwatch-models}
venv=${VENV:-/var/cache/tapwatch-venv}
mkdir -p "$work"
step() { printf '\n==> %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  step "python environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
py="$venv/bin/python"

step "tapwatch-edge (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build -q --release -p tapwatch-edge --manifest-path "$root/Cargo.toml"
edge="$CARGO_TARGET_DIR/release/tapwatch-edge"

if [ "${LAB:-}" != skip ]; then
  for r in 1 2 3; do
    step "lab round $r"
    rm -rf "$work/round$r"
    LAB_ROUND=$r bash "$here/lab/lab.sh" "$work/round$r"
  done
fi
labels=("$work"/round{1,2,3}/labels.csv "$here/data/benign/labels.csv" "$here/data/unseen/labels.csv")

step "flow table"
"$py" "$here/dataset.py" --edge "$edge" --out "$work/flows.csv" "${labels[@]}"

step "training, export, quantization"
"$py" "$here/train.py" --flows "$work/flows.csv" --out "$here/shipped"

step "parity with onnxruntime"
"$py" "$here/parity.py" "$here/shipped"

step "evaluation"
"$py" "$here/evaluate.py" --flows "$work/flows.csv" --models "$here/shipped" --edge "$edge" \
  --labels "${labels[@]}" --out "$here/EVALUATION.md"
