#!/usr/bin/env bash
# The demo, for now (the live dashboard comes with the hub's API): the edge analyses the captures
# this repository ships (one of them an nmap scan), keeps them in its SQLite store, and sends
# flows, statistics and the anomaly to a hub over MQTT; the hub (with its embedded broker) commits
# them to PostgreSQL, which is then queried. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p tapwatch-edge -p tapwatch-hub
out=bench-out/demo
rm -rf "$out"
mkdir -p "$out"
edge=./target/release/tapwatch-edge
hub=./target/release/tapwatch-hub
pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start
psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tapwatch_demo WITH (FORCE)" \
  -c "CREATE DATABASE tapwatch_demo"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
edges_port=$(port) hub_port=$(port)

cat > "$out/hub.toml" <<TOML
[broker]
embedded = true
listen = "127.0.0.1:$edges_port"
listen_v5 = "127.0.0.1:$hub_port"
[postgres]
url = "host=127.0.0.1 user=postgres dbname=tapwatch_demo"
[ingest]
auto_register_devices = true
[retention]
max_age_days = 36500
[http]
listen = "127.0.0.1:0"
TOML
cat > "$out/edge.toml" <<TOML
[device]
id = "demo-tap"
[store]
path = "$out/edge.db"
[sync]
enabled = true
broker = "127.0.0.1:$edges_port"
TOML

"$hub" run --config "$out/hub.toml" 2> "$out/hub.log" &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "mqtt: subscribed" "$out/hub.log" && break; sleep 0.1; done

echo "== edge: analysing tests/data into its store"
"$edge" analyze --config "$out/edge.toml" --db "$out/edge.db" --emit flows,anomalies,stats \
  --models models/shipped tests/data/*.pcap tests/data/*.pcapng > "$out/records.jsonl"
grep '"record":"anomaly"' "$out/records.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    a = json.loads(line)
    why = ", ".join("%s = %g" % (r["feature"], r["value"]) for r in a["reasons"])
    print("  anomaly: %s from %s by the %s (score %.3g, threshold %.3g; %s)"
          % (a["kind"], a["src_ip"], a["detector"], a["score"], a["threshold"], why))
'
echo "== edge: sending its outbox to the hub"
"$edge" sync --config "$out/edge.toml"
sleep 1
echo "== hub: what PostgreSQL holds"
psql -X -h 127.0.0.1 -U postgres -d tapwatch_demo <<'SQL'
SELECT id AS device, state, last_seen FROM devices;
SELECT count(*) AS flows, count(DISTINCT src_ip) AS sources, sum(array_length(features, 1)) / count(*) AS features_per_flow FROM traffic_features;
SELECT kind, host(src_ip) AS source, severity, score, threshold, reasons->0->>'feature' AS reason FROM anomalies;
SELECT bucket, packets, bytes, tcp_packets, udp_packets, icmp_packets FROM traffic_stats_1h ORDER BY bucket LIMIT 5;
SQL
echo "hub log: $out/hub.log; edge store: $out/edge.db; records: $out/records.jsonl"
