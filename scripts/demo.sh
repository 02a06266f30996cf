#!/usr/bin/env bash
# The demo, for now: analyse the captures the repository ships and show what the edge sees.
# Flows go to bench-out/demo-flows.jsonl; the summary and a few flows are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p tapwatch-edge
mkdir -p bench-out
./target/release/tapwatch-edge analyze --emit flows,stats tests/data/*.pcap tests/data/*.pcapng \
  > bench-out/demo-flows.jsonl
echo
echo "first flows (src -> dst, protocol, packets, end reason):"
grep '"record":"flow"' bench-out/demo-flows.jsonl | head -n 8 | python3 -c '
import json, sys
for line in sys.stdin:
    f = json.loads(line)
    print(f"  {f[\"src_ip\"]}:{f[\"src_port\"]} -> {f[\"dst_ip\"]}:{f[\"dst_port\"]}  {f[\"protocol\"]:6} {f[\"packets\"]:4} packets  {f[\"end_reason\"]}")
'
echo
echo "all records: bench-out/demo-flows.jsonl"
