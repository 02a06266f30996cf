#!/usr/bin/env bash
# Peak RSS of the edge pipeline holding N concurrent flows (default 100,000), with the SQLite store.
# Usage: bench/memory.sh [N [HOSTS]]   (HOSTS: distinct sources, default N: the worst case)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-100000}
hosts=${2:-$n}
out=${BENCH_OUT:-$here/bench-out}
mkdir -p "$out"
edge=${TAPWATCH_EDGE:-$here/target/release/tapwatch-edge}
[ -x "$edge" ] || (cd "$here" && cargo build --release -p tapwatch-edge)
python3 "$here/bench/gen_flows.py" "$n" "$out/flows-$n.pcap" "$hosts"
rm -f "$out/memory.db"*
/usr/bin/time -f "%M" -o "$out/rss.txt" "$edge" analyze --emit stats --db "$out/memory.db" "$out/flows-$n.pcap" > "$out/memory-stats.json"
rss_kb=$(tail -n 1 "$out/rss.txt")
python3 - "$out/memory-stats.json" "$rss_kb" "$n" "$hosts" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rss = int(sys.argv[2]) / 1024
ended = s["flows_ended"]
print(f"flows created {s['flows']}, ended at the end of input {ended['flush']}, evicted {ended['evicted']}")
print(f"peak RSS with {int(sys.argv[3]):,} concurrent flows from {int(sys.argv[4]):,} hosts: {rss:.1f} MiB (target 64 MiB)")
PY
