#!/usr/bin/env bash
# Peak RSS of the edge pipeline holding N concurrent flows (default 100,000), with the SQLite store,
# its flow table sized for them (flows.max_flows = N), and the memory per flow over an empty run.
# Usage: bench/memory.sh [N [HOSTS]]   (HOSTS: distinct sources, default N: the worst case)
#   bench/memory.sh 1000000 4096       a busy link's million flows
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-100000}
hosts=${2:-$n}
out=${BENCH_OUT:-$here/bench-out}
mkdir -p "$out"
edge=${TAPWATCH_EDGE:-$here/target/release/tapwatch-edge}
[ -x "$edge" ] || (cd "$here" && cargo build --release -p tapwatch-edge)
python3 "$here/bench/gen_flows.py" "$n" "$out/flows-$n.pcap" "$hosts"
printf '[device]\nid = "bench"\n[flows]\nmax_flows = %s\n' "$n" > "$out/memory.toml"
run() { # peak RSS in KiB of analyze over $1
  rm -f "$out/memory.db"*
  /usr/bin/time -f "%M" -o "$out/rss.txt" "$edge" analyze --emit stats --config "$out/memory.toml" \
    --db "$out/memory.db" "$1" > "$out/memory-stats.json"
  tail -n 1 "$out/rss.txt"
}
python3 "$here/bench/gen_flows.py" 1 "$out/flows-1.pcap" 1
base_kb=$(run "$out/flows-1.pcap")
rss_kb=$(run "$out/flows-$n.pcap")
python3 - "$out/memory-stats.json" "$rss_kb" "$n" "$hosts" "$base_kb" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rss, base, n = int(sys.argv[2]) / 1024, int(sys.argv[5]) / 1024, int(sys.argv[3])
ended = s["flows_ended"]
print(f"flows created {s['flows']}, ended at the end of input {ended['flush']}, evicted {ended['evicted']}")
print(f"peak RSS with {n:,} concurrent flows from {int(sys.argv[4]):,} hosts: {rss:.1f} MiB "
      f"(one flow: {base:.1f} MiB); {(rss - base) * 1024 / n:.2f} KiB a flow (target <= 0.3)")
PY
