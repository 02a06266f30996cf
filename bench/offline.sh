#!/usr/bin/env bash
# The offline pipeline in the configurations people run, on the same files in one run, beside
# tcpdump (read and write, no dissection), tshark (dissection) and NFStream (flows with their
# statistical features, no DPI), with the ratios against the targets of issue 17.
#
# Usage: bench/offline.sh [DATA_DIR [REPEAT]]
#   DATA_DIR  folder of captures (default ../shared/data); every readable Ethernet pcap/pcapng
#             below it is merged with mergecap into one pcap file, in time order.
#   REPEAT    copies of the merged capture end to end (default 5), each shifted 10 days so no
#             flow spans two, to make the run long enough to time.
# Two captures: that merged one (real traffic of many kinds), and a flow-heavy one of 500,000
# one-packet UDP flows from 4,096 hosts (bench/gen_flows.py: the flow table's worst case).
#
# Ours: median of RUNS runs (default 3); the peers, slower by tens of times, one run each.
# Writes the table to stdout and to bench/results/offline-<date>-<commit>.txt (BENCH_RESULTS
# for another folder): commit it, so that a regression shows in review.
# Needs tcpdump, tshark, mergecap, editcap, capinfos (Debian: tcpdump, tshark,
# wireshark-common), and NFStream in $NFSTREAM_PYTHON (default /opt/nfstream/bin/python; made
# with `python3 -m venv /opt/nfstream && /opt/nfstream/bin/pip install nfstream`; left out of
# the table if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$here/../shared/data}
repeat=${2:-5}
runs=${RUNS:-3}
out=${BENCH_OUT:-$here/bench-out}
results=${BENCH_RESULTS:-$here/bench/results}
mkdir -p "$out" "$results"
edge=${TAPWATCH_EDGE:-$here/target/release/tapwatch-edge}
[ -x "$edge" ] || (cd "$here" && cargo build --release -p tapwatch-edge)
models=${TAPWATCH_MODELS:-$here/models/shipped}
nfpy=${NFSTREAM_PYTHON:-/opt/nfstream/bin/python}

merged=$out/merged-$repeat.pcap
if [ ! -s "$merged" ]; then
  list=$out/ethernet-captures.txt
  find "$data" -type f \( -name '*.pcap' -o -name '*.pcapng' -o -name '*.cap' \) -print0 \
    | xargs -0 capinfos -T -E -r 2> /dev/null | awk -F"\t" '$2 == "ether" { print $1 }' > "$list" || true
  # mergecap stops at a file cut short in a packet; leave those out (capinfos fails on them).
  good=$out/readable-captures.txt
  : > "$good"
  while IFS= read -r f; do capinfos -c "$f" > /dev/null 2>&1 && printf '%s\n' "$f" >> "$good"; done < "$list"
  echo "merging $(wc -l < "$good") Ethernet captures from $data" >&2
  tr '\n' '\0' < "$good" | xargs -0 mergecap -F pcap -s 65535 -w "$out/once.pcap"
  parts=()
  for i in $(seq 0 $((repeat - 1))); do
    editcap -t $((i * 864000)) "$out/once.pcap" "$out/part$i.pcap"
    parts+=("$out/part$i.pcap")
  done
  mergecap -a -F pcap -w "$merged" "${parts[@]}"
  rm -f "${parts[@]}" "$out/once.pcap"
fi
heavy=$out/flows-500000.pcap
[ -s "$heavy" ] || python3 "$here/bench/gen_flows.py" 500000 "$heavy" 4096

# Wall seconds of one run of the command (its output thrown away).
once() {
  local s e
  s=$(date +%s.%N)
  "$@" > /dev/null 2>&1 || { echo "bench: failed: $*" >&2; exit 1; }
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}
# Median wall seconds of $runs runs.
median() {
  local ts=()
  for _ in $(seq "$runs"); do ts+=("$(once "$@")"); done
  printf '%s\n' "${ts[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
db=$out/offline.db
with_db() { rm -f "$db" "$db"-*; "$@" --db "$db" "$file"; }
nfstream() {
  "$nfpy" - "$1" <<'PY'
import sys
from nfstream import NFStreamer
n = sum(1 for _ in NFStreamer(source=sys.argv[1], statistical_analysis=True, n_dissections=0, n_meters=1))
print(n)
PY
}

stamp="$(date -u +%Y-%m-%d) $(cd "$here" && git rev-parse --short HEAD 2> /dev/null || echo unknown)"
report=$results/offline-${stamp// /-}.txt
{
  echo "# bench/offline.sh, $stamp, $(nproc) cores, $(uname -m); median of $runs runs (peers: 1)"
  for file in "$merged" "$heavy"; do
    cat "$file" > /dev/null # the page cache
    packets=$(capinfos -c -M -T -r "$file" | awk -F'\t' '{ print $2 }')
    echo
    echo "## $(basename "$file"): $packets packets, $(du -h "$file" | cut -f1)"
    t_stats=$(median "$edge" analyze --emit stats "$file")
    t_db=$(median with_db "$edge" analyze --emit stats)
    t_models=$(median "$edge" analyze --emit stats --models "$models" "$file")
    t_both=$(median with_db "$edge" analyze --emit stats --models "$models")
    t_flows=$(median "$edge" analyze --emit flows --models "$models" "$file")
    t_tcpdump=$(median tcpdump -r "$file" -w /dev/null)
    t_tshark=$(once tshark -r "$file" -T fields -e frame.number)
    t_nf=
    if [ -x "$nfpy" ] && "$nfpy" -c 'import nfstream' 2> /dev/null; then t_nf=$(once nfstream "$file"); fi
    row() { printf '%-44s %8.2f s %8.2f Mpps  %s\n' "$1" "$2" "$(echo "$packets / $2 / 1000000" | bc -l)" "${3:-}"; }
    ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
    row "analyze --emit stats" "$t_stats" "$(ratio "$t_tcpdump" "$t_stats") of tcpdump (target >= 0.7)"
    row "analyze --emit stats --db" "$t_db"
    row "analyze --emit stats --models" "$t_models"
    row "analyze --emit stats --models --db (daemon)" "$t_both" \
      "$(ratio "$t_tshark" "$t_both") x tshark (target >= 30; 1 Mpps)"
    if [ -n "$t_nf" ]; then
      row "analyze --emit flows --models" "$t_flows" "$(ratio "$t_nf" "$t_flows") x NFStream (target >= 15)"
    else
      row "analyze --emit flows --models" "$t_flows" "(NFStream not installed)"
    fi
    row "tcpdump -r -w /dev/null" "$t_tcpdump"
    row "tshark -T fields -e frame.number" "$t_tshark"
    [ -z "$t_nf" ] || row "NFStream (statistical, no DPI, 1 meter)" "$t_nf"
  done
} | tee "$report"
echo "written: $report" >&2
