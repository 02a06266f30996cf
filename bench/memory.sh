#!/usr/bin/env bash
# Peak RSS of the edge pipeline holding N concurrent flows (default 100,000), with the SQLite store,
# its flow table sized for them (flows.max_flows = N), and the memory per flow two ways:
#   a flow          (peak - peak of a one-flow run) / N: everything the run grew, the bounded
#                   parts that fill with traffic (the store's queue of flow rows, SQLite's page
#                   cache, the evidence ring, the host tables) shared out over the N flows;
#   a further flow  (peak - peak with N/2 flows) / (N/2), both tables sized for N: what one more
#                   flow (from one more host, unless HOSTS is given) costs once those are full.
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
half=$((n / 2))
half_hosts=$(( hosts < half ? hosts : half ))
python3 "$here/bench/gen_flows.py" "$n" "$out/flows-$n.pcap" "$hosts"
python3 "$here/bench/gen_flows.py" "$half" "$out/flows-half-$n.pcap" "$half_hosts"
printf '[device]\nid = "bench"\n[flows]\nmax_flows = %s\n' "$n" > "$out/memory.toml"
run() { # peak RSS in KiB of analyze over $1
  rm -f "$out/memory.db"*
  /usr/bin/time -f "%M" -o "$out/rss.txt" "$edge" analyze --emit stats --config "$out/memory.toml" \
    --db "$out/memory.db" "$1" > "$out/memory-stats.json"
  tail -n 1 "$out/rss.txt"
}
python3 "$here/bench/gen_flows.py" 1 "$out/flows-1.pcap" 1
base_kb=$(run "$out/flows-1.pcap")
half_kb=$(run "$out/flows-half-$n.pcap")
rss_kb=$(run "$out/flows-$n.pcap")
python3 - "$out/memory-stats.json" "$rss_kb" "$n" "$hosts" "$base_kb" "$half_kb" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rss, base, n = int(sys.argv[2]) / 1024, int(sys.argv[5]) / 1024, int(sys.argv[3])
half, h = int(sys.argv[6]) / 1024, int(sys.argv[3]) // 2
ended = s["flows_ended"]
print(f"flows created {s['flows']}, ended at the end of input {ended['flush']}, evicted {ended['evicted']}")
print(f"peak RSS with {n:,} concurrent flows from {int(sys.argv[4]):,} hosts: {rss:.1f} MiB "
      f"(one flow: {base:.1f} MiB; {h:,} flows: {half:.1f} MiB); {(rss - base) * 1024 / n:.2f} KiB "
      f"a flow (target <= 0.3), {(rss - half) * 1024 / (n - h):.2f} KiB a further flow")
PY
