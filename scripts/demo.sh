#!/usr/bin/env bash
# The demo, as root on a Debian machine: hub (embedded broker, PostgreSQL), an edge daemon
# capturing live on a bridge of three network namespaces (a server, a client playing benign
# traffic, and an attacker that scans and floods after a while), and the dashboard. It prints the
# URL and the login; Ctrl-C stops everything it started and removes the namespaces.
#
#   sudo scripts/demo.sh            # runs until Ctrl-C
#   DEMO_SECONDS=120 scripts/demo.sh  # or stops by itself (for a timed run)
#   DEMO_PORT=8080 (the dashboard's port), DEMO_ATTACK_AFTER=30 (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it makes network namespaces and captures)" >&2; exit 1; }
t0=$(date +%s.%N)
elapsed() { printf '%.1f s' "$(echo "$(date +%s.%N) - $t0" | bc)"; }

bash scripts/setup.sh
cargo build --release -q -p tapwatch-edge -p tapwatch-hub
target=${CARGO_TARGET_DIR:-target}
edge=$target/release/tapwatch-edge
hub=$target/release/tapwatch-hub
out=$root/bench-out/demo
rm -rf "$out"
mkdir -p "$out/www"
echo "demo: built ($(elapsed))"

pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start
psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tapwatch_demo WITH (FORCE)" \
  -c "CREATE DATABASE tapwatch_demo"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
edges_port=$(port) hub_port=$(port) edge_http=$(port)
web_port=${DEMO_PORT:-8080}
if (exec 3<> "/dev/tcp/127.0.0.1/$web_port") 2> /dev/null; then web_port=$(port); fi
user=admin password=tapwatch-demo
srv=10.89.0.10 cli=10.89.0.20 atk=10.89.0.66

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for ns in twd-srv twd-cli twd-atk; do
    ip netns pids "$ns" 2> /dev/null | xargs -r kill 2> /dev/null || true
  done
  sleep 0.5
  for ns in twd-srv twd-cli twd-atk; do
    ip netns pids "$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
    ip netns del "$ns" 2> /dev/null || true
  done
  ip link del twdemo0 2> /dev/null || true
  wait 2> /dev/null || true
  echo "demo: stopped; logs in $out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The network: a bridge (the mirror port the edge watches) and three hosts.
source scripts/bridge-hosts.sh # (the working folder is the repository)
bridge_hosts twdemo0 twd srv:$srv cli:$cli atk:$atk
inside() { local ns=$1; shift; ip netns exec "twd-$ns" "$@"; }
head -c $((2 << 20)) /dev/urandom > "$out/www/file.bin"
echo "<h1>demo</h1>" > "$out/www/index.html"
inside srv sh -c "cd '$out/www' && exec python3 -m http.server 80 --bind $srv" > /dev/null 2>&1 &
pids+=($!)
inside srv dnsmasq -k --no-resolv --no-hosts --bind-interfaces --listen-address="$srv" \
  --address=/demo.test/$srv --pid-file= --user=root > /dev/null 2>&1 &
pids+=($!)

cat > "$out/hub.toml" << TOML
[broker]
embedded = true
listen = "127.0.0.1:$edges_port"
listen_v5 = "127.0.0.1:$hub_port"
[postgres]
url = "host=127.0.0.1 user=postgres dbname=tapwatch_demo"
[ingest]
auto_register_devices = true
batch_ms = 20
[http]
listen = "127.0.0.1:$web_port"
web_root = "$root/hub/web/dist"
TOML
cat > "$out/edge.toml" << TOML
[device]
id = "demo-tap"
[[interface]]
name = "twdemo0"
[store]
path = "$out/edge.db"
[stats]
interval_s = 5
[http]
listen = "127.0.0.1:$edge_http"
[sync]
enabled = true
broker = "127.0.0.1:$edges_port"
username = "demo-tap"
password_file = "$out/edge-mqtt-password"
metrics_interval_s = 5
[detect.models]
autoencoder = "$root/models/shipped/autoencoder.onnx"
classifier = "$root/models/shipped/classifier.onnx"
TOML

# The edge's credential on the hub's broker (every edge needs one).
"$hub" device add --config "$out/hub.toml" --password-file "$out/edge-mqtt-password" demo-tap > /dev/null
TAPWATCH_ADMIN_USER=$user TAPWATCH_ADMIN_PASSWORD=$password "$hub" run --config "$out/hub.toml" 2> "$out/hub.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "mqtt: subscribed" "$out/hub.log" && break; sleep 0.1; done
grep -q "mqtt: subscribed" "$out/hub.log" || { cat "$out/hub.log"; exit 1; }
"$edge" run --config "$out/edge.toml" 2> "$out/edge.log" &
pids+=($!)
echo "demo: hub and edge running ($(elapsed))"
echo
echo "  Dashboard: http://127.0.0.1:$web_port/   user $user, password $password"
echo "  Edge metrics: http://127.0.0.1:$edge_http/metrics"
echo "  Ctrl-C stops the demo."
echo

# Benign traffic from the client, all the time, at a person's pace: a page and its download on
# one connection, a DNS lookup, a ping now and then.
inside cli bash -c "
  while true; do
    dig +short +tries=1 +time=1 @$srv www.demo.test > /dev/null
    curl -s -o /dev/null -o /dev/null http://$srv/ http://$srv/file.bin
    [ \$((RANDOM % 4)) = 0 ] && ping -c 3 -i 0.5 -W 1 $srv > /dev/null
    sleep \$((2 + RANDOM % 5))
  done" > /dev/null 2>&1 &
pids+=($!)
# After a while, the attacker: a SYN scan, then a SYN flood; again every few minutes.
attack_after=${DEMO_ATTACK_AFTER:-30}
inside atk bash -c "
  sleep $attack_after
  while true; do
    nmap -n -sS -T4 -p 1-2000 $srv > /dev/null 2>&1
    sleep 20
    timeout 10 hping3 -q -S -p 80 -i u500 $srv > /dev/null 2>&1
    sleep 240
  done" > /dev/null 2>&1 &
pids+=($!)
echo "demo: benign traffic started; the attack starts in ${attack_after} s ($(elapsed))"

# Say when the hub has the first traffic and the first anomaly.
(
  seen_stats=0 seen_anomaly=0
  while [ $seen_anomaly = 0 ]; do
    sleep 1
    if [ $seen_stats = 0 ] && [ "$(psql -X -h 127.0.0.1 -U postgres -d tapwatch_demo -tAc 'SELECT count(*) FROM traffic_stats' 2> /dev/null || echo 0)" != 0 ]; then
      seen_stats=1
      echo "demo: the hub has the first traffic statistics ($(elapsed))"
    fi
    a=$(psql -X -h 127.0.0.1 -U postgres -d tapwatch_demo -tAc "SELECT kind || ' from ' || host(src_ip) FROM anomalies ORDER BY id LIMIT 1" 2> /dev/null || true)
    if [ -n "$a" ]; then
      seen_anomaly=1
      echo "demo: the hub has the first anomaly: $a ($(elapsed))"
    fi
  done
) &
pids+=($!)

if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  while true; do sleep 3600; done
fi
