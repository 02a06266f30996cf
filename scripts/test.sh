#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, the no_std and ARM builds, the firmware's
# tests under qemu-aarch64, every workspace test, and the MCU example under qemu-system-arm.
# Run from anywhere; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "set-up"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all --check

step "clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "the appliance's systemd units are hardened (systemd-analyze security: exposure 2.5 or lower each)"
bash image/check-units.sh

step "firmware builds for a Cortex-M4F with no default features (no_std, no alloc)"
cargo build -p tapwatch-firmware --no-default-features --target thumbv7em-none-eabihf
cargo build -p tapwatch-firmware --no-default-features --features serde --target thumbv7em-none-eabihf

step "tapwatch-edge for aarch64, and the firmware's tests under qemu-aarch64"
cargo build --release -p tapwatch-edge --target aarch64-unknown-linux-gnu
cargo test -p tapwatch-firmware --target aarch64-unknown-linux-gnu

step "the shipped models' fixtures are onnxruntime's outputs (the Rust test checks tract against them)"
ort_venv=${TAPWATCH_ORT_VENV:-/var/cache/tapwatch-ort-venv}
if [ ! -x "$ort_venv/bin/python" ] || ! "$ort_venv/bin/python" -c "import onnxruntime" 2> /dev/null; then
  python3 -m venv "$ort_venv"
  "$ort_venv/bin/pip" install -q onnxruntime==1.32.0 numpy==2.4.6
fi
"$ort_venv/bin/python" models/parity.py

step "workspace tests"
cargo test --workspace --all-features

step "the core on a Cortex-M4F (qemu-system-arm -M mps2-an386): the same messages as on this machine and as tapwatch-edge analyze"
bash scripts/mcu.sh "${CARGO_TARGET_DIR:-$PWD/target}/debug/tapwatch-edge"

step "chaos, short: 10 kills of edge, Mosquitto, hub and PostgreSQL in turn, then 10 s each of a full broker disk, a read-only database, the edge's clock stepped and a lossy link, with live traffic; nothing missing or doubled"
if [ "$(id -u)" = 0 ] && [ -z "${TAPWATCH_SKIP_LIVE:-}" ]; then
  CHAOS_SHARE=hubs CHAOS_PAUSE=2 CHAOS_EXTRA_S=10 TAPWATCH_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug" bash bench/chaos.sh 10
else
  echo "skipped: needs root for namespaces and capture (TAPWATCH_SKIP_LIVE is set or not root)"
fi

step "schemathesis against the hub's OpenAPI document (no 5xx, every response as documented)"
ST_EXAMPLES=50 bash scripts/schemathesis.sh

step "the dashboard in Debian's Chromium (playwright-core): screenshots in bench-out/browser"
bash scripts/browser-test.sh
