#!/usr/bin/env bash
# The fleet's configuration, issue 18's bench: seconds from saving a change at the hub (the API,
# as an operator does) to each online edge having applied it and said so (its `config/applied`
# answer committed at the hub), with FLEET_EDGES `tapwatch-edge run` daemons on this machine
# (each capturing on a veth interface of its own, with no traffic, syncing through the local Mosquitto), the
# hub and PostgreSQL. FLEET_ROUNDS changes, one after the other; prints p50, p95 and the
# largest over every (edge, change) and writes bench/results/fleet-DATE-COMMIT.txt.
#
#   sudo bench/fleet.sh                     # 40 edges, 10 changes
#   FLEET_EDGES=10 FLEET_ROUNDS=3 bench/fleet.sh
#
# Then FLEET_MODEL_ROUNDS (default 4) changes that each give every edge the shipped classifier
# (uploaded through the API) or take it away again: the seconds now include fetching the model
# and its fixture from the hub (or taking the kept copy), loading it with tract and running the
# fixture's 64 rows. Use a release build of the edge for these (TAPWATCH_BIN).
#
# TAPWATCH_BIN names the folder of the tapwatch-edge binary (default: the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${FLEET_EDGES:-40}
rounds=${FLEET_ROUNDS:-10}
model_rounds=${FLEET_MODEL_ROUNDS:-4}
target=${CARGO_TARGET_DIR:-target}
bin=${TAPWATCH_BIN:-$target/debug}
[ -x "$bin/tapwatch-edge" ] || cargo build -q -p tapwatch-edge
[ -x "$target/debug/tapwatch-hub" ] || cargo build -q -p tapwatch-hub

. scripts/test-hub.sh
password=fleet-bench-password
test_hub_start fleet "$password" "" "$(printf '[ingest]\nauto_register_devices = true\nbatch_ms = 20')"
edges=()
cleanup() {
  for p in "${edges[@]}"; do kill "$p" 2> /dev/null || true; done
  wait "${edges[@]}" 2> /dev/null || true
  for i in $(seq "$n"); do ip link del "twfd$$-$i" 2> /dev/null || true; done
  test_hub_stop
}
trap cleanup EXIT

sql() { psql -X -q -t -A -h 127.0.0.1 -U postgres -d "$HUB_DB" -c "$1"; }
for i in $(seq "$n"); do
  ifc="twfd$$-$i"
  ip link add "$ifc" type veth peer name "twfe$$-$i"
  ip link set "$ifc" up
  dir=$HUB_WORK/edge-$i
  mkdir -p "$dir"
  cat > "$dir/edge.toml" << TOML
[device]
id = "fleet-$i"
[[interface]]
name = "$ifc"
buffer_mb = 1
queue_packets = 1024
[flows]
max_flows = 1000
[store]
path = "$dir/edge.db"
evidence_ring_packets = 100
[http]
listen = "127.0.0.1:0"
[sync]
enabled = true
broker = "127.0.0.1:1883"
topic_prefix = "$HUB_PREFIX"
metrics_interval_s = 60
TOML
  "$bin/tapwatch-edge" run --config "$dir/edge.toml" 2> "$dir/log" &
  edges+=($!)
done

in_sync() { sql "SELECT count(*) FROM device_config WHERE desired_hash <> '' AND applied_hash = desired_hash"; }
wait_all() {
  for _ in $(seq 1200); do
    [ "$(in_sync)" = "$n" ] && return 0
    sleep 0.05
  done
  echo "only $(in_sync) of $n edges in sync" >&2
  return 1
}
echo "starting $n edges"
wait_all

jar=$HUB_WORK/jar
csrf=$(curl -sf -c "$jar" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$password\"}" "$HUB_URL/api/v1/auth/login" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])')
lat=$HUB_WORK/latencies
model_lat=$HUB_WORK/model-latencies
: > "$lat"
: > "$model_lat"
# Save a global document; when every edge applied it, each edge's seconds from the save to its
# answer committed at the hub go to $2.
change() {
  curl -sf -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' -XPUT \
    -d "{\"document\":$1,\"comment\":\"bench\"}" "$HUB_URL/api/v1/fleet/config/global" > /dev/null
  wait_all
  sql "SELECT extract(epoch FROM min(l.received_at) - r.created_at) FROM ingest_log l,
       (SELECT created_at FROM config_revisions ORDER BY id DESC LIMIT 1) r
       WHERE l.stream = 'config/applied' AND l.received_at >= r.created_at
       GROUP BY l.device, r.created_at" >> "$2"
}
for r in $(seq "$rounds"); do
  change "{\"detect\":{\"quiet_s\":$((30 + r))}}" "$lat"
done
if [ "$model_rounds" -gt 0 ]; then
  sha=$(curl -sf -b "$jar" -H "x-csrf-token: $csrf" -F model=@models/shipped/classifier.onnx \
    -F fixture=@models/shipped/fixtures/classifier.json "$HUB_URL/api/v1/models" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])')
  for r in $(seq "$model_rounds"); do
    if [ $((r % 2)) = 1 ]; then
      change "{\"models\":{\"classifier\":\"$sha\"},\"detect\":{\"quiet_s\":$((60 + r))}}" "$model_lat"
    else
      change "{\"detect\":{\"quiet_s\":$((60 + r))}}" "$model_lat"
    fi
  done
  running=$(for p in $HUB_WORK/edge-*/log; do grep -c "model loaded" "$p" || true; done | awk '$1 > 0' | wc -l)
  echo "edges that loaded the hub's model: $running of $n" >&2
fi

commit=$(git rev-parse --short HEAD)
out=bench/results/fleet-$(date +%F)-$commit.txt
python3 - "$lat" "$n" "$rounds" "$commit" "$model_lat" "$model_rounds" << 'PY' | tee "$out"
import statistics, sys
n, rounds, commit, model_rounds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[6]
def line(path):
    xs = sorted(float(x) for x in open(path) if x.strip())
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return f"  p50 {p(0.5):.2f}  p95 {p(0.95):.2f}  max {xs[-1]:.2f}  mean {statistics.mean(xs):.2f}  over {len(xs)} (edge, change)"
print(f"fleet configuration: {n} edges (tapwatch-edge run, a veth interface each), {rounds} changes saved through the API, commit {commit}")
print("seconds from saving to each edge's answer committed at the hub:")
print(line(sys.argv[1]))
if int(model_rounds) > 0:
    print(f"{model_rounds} changes giving every edge the shipped classifier (fetched, checked, its fixture run) or taking it away:")
    print(line(sys.argv[5]))
PY
