#!/usr/bin/env bash
# Live capture at fixed packet rates: tcpreplay replays a capture from inside a network namespace
# over a veth pair, tapwatch-edge captures the other end, and /metrics gives the kernel, capture
# queue, interface and store queue drops at each rate. Needs root, iproute2 and tcpreplay.
#
# The daemon as deployed: the store, the shipped models (MODELS, default models/shipped; MODELS=
# for none) and sync to the broker at BROKER (default 127.0.0.1:1883, a topic prefix of its own;
# BROKER= for none). Per rate it prints the CPU seconds the daemon spent per million packets.
#
# Usage: bench/live.sh [PCAP [SECONDS]]   (default: 100,000 small UDP flows from bench/gen_flows.py)
# Rates: RATES="100000 200000 300000 500000" (the default).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_OUT:-$here/bench-out}
mkdir -p "$out"
edge=${TAPWATCH_EDGE:-$here/target/release/tapwatch-edge}
[ -x "$edge" ] || (cd "$here" && cargo build --release -p tapwatch-edge)
pcap=${1:-$out/flows-100000.pcap}
secs=${2:-5}
rates=${RATES:-100000 200000 300000 500000}
models=${MODELS-$here/models/shipped}
broker=${BROKER-127.0.0.1:1883}
[ -s "$pcap" ] || python3 "$here/bench/gen_flows.py" 100000 "$pcap" 4096

ns=twbench$$
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2> /dev/null && wait "$pid" 2> /dev/null || true
  ip link del twb0$$ 2> /dev/null || true
  ip netns del "$ns" 2> /dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip link add twb0$$ type veth peer name twb1$$
ip link set twb1$$ netns "$ns"
ip link set twb0$$ up
ip netns exec "$ns" ip link set twb1$$ up
# No IPv6 chatter from the veth itself during the runs.
sysctl -qw "net.ipv6.conf.twb0$$.disable_ipv6=1" || true

rm -f "$out"/live.db*
cat > "$out/live.toml" <<TOML
[device]
id = "bench"
[[interface]]
name = "twb0$$"
buffer_mb = 64
immediate = ${IMMEDIATE:-false}
[store]
path = "$out/live.db"
max_size_mb = 512
max_age_hours = 24
evidence_ring_packets = 10000
batch_rows = 2000
flush_interval_ms = 1000
[http]
listen = "127.0.0.1:0"
TOML
if [ -n "$models" ]; then
  printf '[detect.models]\nautoencoder = "%s"\nclassifier = "%s"\n' \
    "$models/autoencoder.onnx" "$models/classifier.onnx" >> "$out/live.toml"
fi
if [ -n "$broker" ]; then
  printf '[sync]\nenabled = true\nbroker = "%s"\ntopic_prefix = "bench%s/"\n' "$broker" "$$" >> "$out/live.toml"
fi
echo "models: ${models:-none}; sync: ${broker:-none}"
"$edge" run --config "$out/live.toml" 2> "$out/live.log" &
pid=$!
for _ in $(seq 50); do grep -q "listening on" "$out/live.log" && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$out/live.log" | head -n 1)
[ -n "$base" ] || { echo "bench: the daemon did not start:" >&2; cat "$out/live.log" >&2; exit 1; }
metric() {
  curl -s "$base/metrics" > "$out/metrics.txt"
  awk -v m="$1" 'index($0, m) == 1 { v = $NF } END { print (v == "" ? 0 : v) }' "$out/metrics.txt"
}

# CPU seconds (user and system) the daemon has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$pid/stat"; }
printf '%-10s %12s %12s %14s %12s %12s %12s %14s\n' "target" "sent pps" "captured" "kernel drops" \
  "queue drops" "if drops" "store drops" "CPU s / Mpkt"
for rate in $rates; do
  c0=$(metric tapwatch_capture_packets_total); k0=$(metric tapwatch_capture_kernel_drops_total)
  q0=$(metric tapwatch_queue_drops_total); i0=$(metric tapwatch_capture_interface_drops_total)
  s0=$(metric tapwatch_store_queue_drops_total)
  u0=$(cpu)
  ip netns exec "$ns" tcpreplay -q -i "twb1$$" --pps="$rate" --limit=$((rate * secs)) --loop=0 "$pcap" \
    > "$out/tcpreplay.txt" 2>&1
  sent=$(awk '/Rated:/ { for (i = 1; i <= NF; i++) if ($i ~ /pps/) v = $(i-1) } END { print v }' "$out/tcpreplay.txt")
  sleep 2 # let the capture drain and the kernel counters update
  c1=$(metric tapwatch_capture_packets_total); k1=$(metric tapwatch_capture_kernel_drops_total)
  q1=$(metric tapwatch_queue_drops_total); i1=$(metric tapwatch_capture_interface_drops_total)
  s1=$(metric tapwatch_store_queue_drops_total)
  u1=$(cpu)
  captured=$(echo "$c1 - $c0" | bc)
  per=$(echo "if ($captured > 0) ($u1 - $u0) * 1000000 / $captured else 0" | bc -l)
  printf '%-10s %12s %12.0f %14.0f %12.0f %12.0f %12.0f %14.2f\n' "$rate" "${sent:-?}" "$captured" \
    "$(echo "$k1 - $k0" | bc)" "$(echo "$q1 - $q0" | bc)" "$(echo "$i1 - $i0" | bc)" \
    "$(echo "$s1 - $s0" | bc)" "$per"
done
