#!/usr/bin/env bash
# The core on a microcontroller (mcu/): the example built for a Cortex-M4F and run under
# qemu-system-arm on Arm's MPS2 AN386 board, over the captures it holds in flash (a public nmap
# SYN scan and a benign SSH session). Its messages must be byte for byte those of the same code
# built for this machine, and the flows and anomalies `tapwatch-edge analyze` finds in the same
# captures. Prints the RAM it used (static, stack high-water mark).
#
# Usage: scripts/mcu.sh [TAPWATCH_EDGE]   (default: $CARGO_TARGET_DIR/debug/tapwatch-edge)
# Needs qemu-system-arm (Debian: qemu-system-arm) and the thumbv7em-none-eabihf target.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
edge=${1:-$target/debug/tapwatch-edge}
out=${MCU_OUT:-$here/bench-out/mcu}
mkdir -p "$out"
cd "$here/mcu"
# Its own target folder: its profile and linker script are not the workspace's.
export CARGO_TARGET_DIR=$target/mcu
cargo fmt --check
cargo clippy --release -- -D warnings
cargo clippy --release --target x86_64-unknown-linux-gnu -- -D warnings
cargo build --release
cargo build --release --target x86_64-unknown-linux-gnu
# On the MCU (semihosting's stdout and stderr), and on this machine.
timeout 300 cargo run -q --release > "$out/mcu.txt" 2> "$out/mcu.err" || { cat "$out/mcu.err" >&2; exit 1; }
grep -v '^ *\(Finished\|Running\)' "$out/mcu.err" >&2 || true
cargo run -q --release --target x86_64-unknown-linux-gnu > "$out/host.txt" 2> "$out/host.err"
if ! cmp -s "$out/mcu.txt" "$out/host.txt"; then
  echo "mcu: the Cortex-M4F's messages differ from the host build's:" >&2
  diff <(cut -c1-200 "$out/mcu.txt") <(cut -c1-200 "$out/host.txt") | head -20 >&2
  exit 1
fi
echo "mcu: $(wc -l < "$out/mcu.txt") messages, the same on the Cortex-M4F and on $(uname -m)"
python3 compare.py "$out/mcu.txt" "$edge" "$here/models/features.json" port_scan@192.168.1.10 \
  nmap_tcp_syn_scan="$here/tests/data/attacks/nmap_tcp_syn_scan.pcap" \
  ssh_session="$here/tests/data/benign/ssh_session.pcap"
