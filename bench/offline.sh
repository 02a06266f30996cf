#!/usr/bin/env bash
# Offline read rate of `tapwatch-edge analyze --emit stats` beside tcpdump and tshark.
#
# Usage: bench/offline.sh [DATA_DIR [REPEAT]]
#   DATA_DIR  folder of captures (default ../shared/data); every Ethernet pcap/pcapng below it is
#             merged with mergecap into one pcap file, in time order.
#   REPEAT    how many times the merged capture is concatenated to make the run long enough to time
#             (default 5). Each copy is shifted in time so flows stay consistent.
# Prints packets/s of each reader (best of 3 runs) and the ratios. Needs tcpdump, tshark, mergecap,
# editcap and capinfos (Debian: tcpdump, tshark, wireshark-common).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$here/../shared/data}
repeat=${2:-5}
out=${BENCH_OUT:-$here/bench-out}
mkdir -p "$out"
edge=${TAPWATCH_EDGE:-$here/target/release/tapwatch-edge}
[ -x "$edge" ] || (cd "$here" && cargo build --release -p tapwatch-edge)

merged=$out/merged.pcap
if [ ! -s "$merged" ]; then
  list=$out/ethernet-captures.txt
  find "$data" -type f \( -name '*.pcap' -o -name '*.pcapng' -o -name '*.cap' \) -print0 \
    | xargs -0 capinfos -T -E -r 2>/dev/null | awk -F"\t" '$2 == "ether" { print $1 }' > "$list" || true
  # mergecap stops at a file cut short in a packet; leave those out (capinfos fails on them).
  good=$out/readable-captures.txt
  : > "$good"
  while IFS= read -r f; do capinfos -c "$f" > /dev/null 2>&1 && printf '%s\n' "$f" >> "$good"; done < "$list"
  echo "merging $(wc -l < "$good") Ethernet captures from $data" >&2
  tr '\n' '\0' < "$good" | xargs -0 mergecap -F pcap -s 65535 -w "$out/once.pcap"
  parts=()
  for i in $(seq 0 $((repeat - 1))); do
    # Shift each copy 10 days later than the previous: no flow spans two copies.
    editcap -t $((i * 864000)) "$out/once.pcap" "$out/part$i.pcap"
    parts+=("$out/part$i.pcap")
  done
  mergecap -a -F pcap -w "$merged" "${parts[@]}"
  rm -f "${parts[@]}" "$out/once.pcap"
fi
packets=$(capinfos -c -M -T -r "$merged" | awk -F'\t' '{ print $2 }')
echo "capture: $merged, $packets packets, $(du -h "$merged" | cut -f1)"

best() { # best wall time in seconds of 3 runs of the command
  local b=
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N); "$@" > /dev/null 2>&1; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}
cat "$merged" > /dev/null # warm the page cache
t_edge=$(best "$edge" analyze --emit stats "$merged")
db=$out/offline.db
rm -f "$db"*
t_edge_db=$(best sh -c "rm -f '$db'*; exec '$edge' analyze --emit stats --db '$db' '$merged'")
models=${TAPWATCH_MODELS:-$here/models/shipped}
t_edge_models=$(best "$edge" analyze --emit stats --models "$models" "$merged")
t_tcpdump=$(best tcpdump -r "$merged" -w /dev/null)
t_tshark=$(best tshark -r "$merged" -T fields -e frame.number)
pps() { echo "$packets / $1" | bc -l | xargs printf '%.0f'; }
printf '%-28s %10s s %14s pkt/s\n' "tapwatch-edge analyze" "$t_edge" "$(pps "$t_edge")"
printf '%-28s %10s s %14s pkt/s\n' "  ... with --db (SQLite)" "$t_edge_db" "$(pps "$t_edge_db")"
printf '%-28s %10s s %14s pkt/s\n' "  ... with --models" "$t_edge_models" "$(pps "$t_edge_models")"
printf '%-28s %10s s %14s pkt/s\n' "tcpdump -r -w /dev/null" "$t_tcpdump" "$(pps "$t_tcpdump")"
printf '%-28s %10s s %14s pkt/s\n' "tshark -T fields" "$t_tshark" "$(pps "$t_tshark")"
printf 'ratio to tcpdump: %.2f (target >= 0.5)\n' "$(echo "$t_tcpdump / $t_edge" | bc -l)"
printf 'ratio to tshark:  %.1f (target >= 50)\n' "$(echo "$t_tshark / $t_edge" | bc -l)"
printf 'with detection (models): %.2f Mpps (target >= 1)\n' \
  "$(echo "$packets / $t_edge_models / 1000000" | bc -l)"
printf 'with SQLite: %.2f Mpps (target >= 1), %.2f of tcpdump, %.1f x tshark (target >= 30)\n' \
  "$(echo "$packets / $t_edge_db / 1000000" | bc -l)" "$(echo "$t_tcpdump / $t_edge_db" | bc -l)" \
  "$(echo "$t_tshark / $t_edge_db" | bc -l)"
