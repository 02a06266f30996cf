#!/usr/bin/env bash
# Hub ingest rate and lag: a fleet of edges (hub/examples/ingest_load.rs) publishes flow batches
# and anomaly episodes through the Mosquitto on this machine; a release tapwatch-hub commits them
# into a fresh PostgreSQL database. Throughput is read from ingest_log (received_at: when the hub
# took the message, inside its transaction) and the lag from sent_at (when the edge made it).
#
# Usage: bench/ingest.sh [DEVICES [FLOWS_PER_DEVICE [ANOMALIES_PER_DEVICE]]]
#   defaults: 4 devices, 100000 flows and 10000 anomalies each. Three runs: flows alone and
#   anomalies alone as fast as the broker takes them (throughput), then a paced mix at
#   a quarter of that (lag, p50 and p95, from the edge's ts to the hub's transaction).
#   TAPWATCH_BIN=DIR runs DIR/tapwatch-hub and DIR/ingest_load instead of building them.
# Needs PostgreSQL on 127.0.0.1:5432 (trust) and the mosquitto binary: the bench runs a broker of
# its own with max_queued_messages 0 (Mosquitto's default of 1000 queued messages per client drops
# QoS 1 messages for a subscriber that falls behind, after the publisher had its PUBACK).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
devices=${1:-4}
flows=${2:-100000}
anomalies=${3:-10000}
out=${BENCH_OUT:-$here/bench-out}
mkdir -p "$out"
if [ -n "${TAPWATCH_BIN:-}" ]; then
  # Binaries built elsewhere (another commit's hub beside this one's, say): DIR holds
  # tapwatch-hub and ingest_load.
  hub=$TAPWATCH_BIN/tapwatch-hub load=$TAPWATCH_BIN/ingest_load
else
  target=${CARGO_TARGET_DIR:-$here/target}
  (cd "$here" && cargo build -q --release -p tapwatch-hub --bin tapwatch-hub --example ingest_load)
  hub=$target/release/tapwatch-hub load=$target/release/examples/ingest_load
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$out/mosquitto"
cat > "$out/mosquitto/bench.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 0
CONF
mosquitto -c "$out/mosquitto/bench.conf" 2> "$out/mosquitto/log" &
broker_pid=$!
trap 'kill $broker_pid 2>/dev/null || true' EXIT
sleep 0.5

run() { # name flows anomalies [rate]
  local name=$1 f=$2 a=$3 rate=${4:-}
  local db=tapwatch_bench_$$ prefix="bench$$/"
  psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  cat > "$out/hub-bench.toml" <<TOML
[mqtt]
broker = "127.0.0.1:$port"
client_id = "bench-hub-$$"
topic_prefix = "$prefix"
[postgres]
url = "host=127.0.0.1 user=postgres dbname=$db"
[ingest]
auto_register_devices = true
[retention]
max_age_days = 36500
TOML
  "$hub" run --config "$out/hub-bench.toml" 2> "$out/hub-bench.log" &
  local hub_pid=$!
  sleep 1
  "$load" "127.0.0.1:$port" "$prefix" "$devices" "$f" "$a" $rate 2>&1 | sed "s/^/  load: /"
  local want_flows=$((devices * f)) want_anom=$((devices * a))
  for _ in $(seq 1 600); do
    n=$(psql -X -q -t -A -h 127.0.0.1 -U postgres -d $db -c \
      "SELECT (SELECT count(*) FROM traffic_features) + (SELECT count(*) FROM anomalies)")
    [ "$n" -ge $((want_flows + want_anom)) ] && break
    sleep 0.5
  done
  echo "$name: $devices edges, $want_flows flow records, $want_anom anomalies"
  psql -X -q -t -A -F ' ' -h 127.0.0.1 -U postgres -d $db <<SQL
SELECT 'flows in postgres', count(*) FROM traffic_features;
SELECT 'anomalies in postgres', count(*) FROM anomalies;
SELECT 'dead letters', count(*) FROM dead_letters;
SELECT 'ingest time s', round(extract(epoch FROM max(received_at) - min(received_at))::numeric, 2) FROM ingest_log;
SELECT 'flow records/s', round(sum(CASE WHEN stream = 'flows' THEN 32 ELSE 0 END)
        / nullif(extract(epoch FROM max(received_at) - min(received_at)), 0)) FROM ingest_log;
SELECT 'anomalies/s', round(count(*) FILTER (WHERE stream = 'anomalies')
        / nullif(extract(epoch FROM max(received_at) - min(received_at)), 0)) FROM ingest_log;
SELECT 'lag ms p50 p95 max',
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - sent_at)) * 1000)::numeric, 1),
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - sent_at)) * 1000)::numeric, 1),
       round((max(extract(epoch FROM received_at - sent_at)) * 1000)::numeric, 1)
FROM ingest_log;
SQL
  kill "$hub_pid"; wait "$hub_pid" || true
  psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}

run "flows" "$flows" 0
run "anomalies" 0 "$anomalies"
# Paced: 100 flow batches (3,200 flows) a second per device with anomalies in proportion.
run "paced" $((flows / 5)) $((anomalies / 5)) 100
