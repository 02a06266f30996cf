#!/usr/bin/env bash
# Chaos: nothing lost, nothing doubled, while every component is killed in turn (issue 20).
#
# A live tapwatch-edge captures a bridge of three network namespaces (a web server, a client
# fetching pages and sending UDP, and a scanner that runs nmap every 30 s), syncing to the real
# tapwatch-hub through a Mosquitto of the script's own (persistence, autosave_interval 1,
# max_queued_messages 0) into a PostgreSQL cluster of its own. Each cycle SIGKILLs one component
# (edge, broker, hub, PostgreSQL, in turn; with CHAOS_BROKER=embedded the broker is the hub's
# own and the cycle is edge, hub, PostgreSQL), waits 0.5-3 s, and starts it again. At the end the
# traffic stops, the edge drains, and every stream the edge committed to its SQLite outbox (its
# seqs, sync_seq) is compared with PostgreSQL: produced, delivered, missing, doubled, and what
# the edge counted dropped.
#
# After the kill cycles come faults that are not a crash, CHAOS_EXTRA_S seconds each (default 60),
# traffic still flowing: `disk`, the broker's disk full (its persistence directory is a tmpfs of
# its own, filled up; the broker is killed and restarted halfway, so what it could not save is
# gone; Mosquitto only); `db`, PostgreSQL refusing every write (default_transaction_read_only,
# reloaded); `clock`, the edge's wall clock an hour ahead and back (libfaketime; monotonic time
# and the kernel's capture timestamps stay true), with the edge restarted while ahead and after
# the step back; `loss`, 20% of the packets to and from the broker's port dropped both ways
# (nftables numgen, which needs no sch_netem). CHAOS_EXTRAS chooses (default "disk db clock loss";
# empty for none). The run also fails on a dead letter at the hub and if the hub does not show
# the edge online at the end.
#
# Usage (root): bench/chaos.sh [CYCLES]          (default 100; CI runs 10)
#   CHAOS_BROKER=mosquitto|embedded (default mosquitto), CHAOS_SHARE=GROUP (the hub on a shared
#   subscription, which Mosquitto forgets over its restart), CHAOS_PAUSE=SECONDS between cycles
#   (default 4), TAPWATCH_BIN=DIR with tapwatch-edge and tapwatch-hub (default: a release build),
#   CHAOS_EXTRAS, CHAOS_EXTRA_S (above).
# Exits 1 if any stream has a missing or doubled record, a dead letter, or the edge not online.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cycles=${1:-100}
broker_kind=${CHAOS_BROKER:-mosquitto}
pause=${CHAOS_PAUSE:-4}
extras=${CHAOS_EXTRAS-disk db clock loss}
extra_s=${CHAOS_EXTRA_S:-60}
faketime_lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2> /dev/null | head -n 1 || true)
for x in $extras; do
  case $x in
    disk | db | loss) ;;
    clock) [ -n "$faketime_lib" ] || { echo "chaos: the clock fault needs libfaketime (apt-get install faketime)" >&2; exit 1; } ;;
    *) echo "chaos: unknown fault '$x' in CHAOS_EXTRAS (disk, db, clock, loss)" >&2; exit 1 ;;
  esac
done
[[ " $extras " != *" loss "* ]] || command -v nft > /dev/null || { echo "chaos: the loss fault needs nft (apt-get install nftables)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "chaos: run as root (namespaces, capture, a PostgreSQL cluster)" >&2; exit 1; }
if [ -z "${TAPWATCH_BIN:-}" ]; then
  (cd "$here" && cargo build -q --release -p tapwatch-edge -p tapwatch-hub)
  TAPWATCH_BIN=${CARGO_TARGET_DIR:-$here/target}/release
fi
edge_bin=$TAPWATCH_BIN/tapwatch-edge hub_bin=$TAPWATCH_BIN/tapwatch-hub
out=${BENCH_OUT:-$here/bench-out}/chaos
mqdb=$out/mosquitto/db
umount "$mqdb" 2> /dev/null || true
rm -rf "$out"
mkdir -p "$out/www" "$mqdb" "$out/pg"
# The broker's disk, small and its own, so that filling it fills nothing else.
mount -t tmpfs -o size=8m tapwatch-chaos "$mqdb"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mq_port=$(port) v5_port=$(port) pg_port=$(port) edge_http=$(port)
tag=twc$$
srv=10.91.0.10 cli=10.91.0.20 atk=10.91.0.66

pids=()
declare -A pid
cleanup() {
  trap - EXIT INT TERM
  for p in "${pid[@]}" "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
  for ns in srv cli atk; do
    ip netns pids "$tag-$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
    ip netns del "$tag-$ns" 2> /dev/null || true
  done
  ip link del "$tag" 2> /dev/null || true
  nft delete table inet "$tag" 2> /dev/null || true
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$out/pg/data" -m immediate stop > /dev/null 2>&1 || true
  wait 2> /dev/null || true
  umount "$mqdb" 2> /dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL of our own (it gets killed).
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
chown postgres: "$out/pg"
runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres --no-sync -D "$out/pg/data" > /dev/null
pg() { runuser -u postgres -- "$pgbin/pg_ctl" -D "$out/pg/data" -w -l "$out/pg/log" \
  -o "-p $pg_port -k $out/pg -c listen_addresses=127.0.0.1" "$@" > /dev/null; }
pg start
psql_() { psql -X -q -t -A -h 127.0.0.1 -p "$pg_port" -U postgres -d tapwatch "$@"; }
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "CREATE DATABASE tapwatch"

cat > "$out/mosquitto/mosquitto.conf" << CONF
listener $mq_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $mqdb/
autosave_interval 1
max_queued_messages 0
max_inflight_messages 0
user root
CONF

if [ "$broker_kind" = embedded ]; then
  broker_cfg="[broker]
embedded = true
listen = \"127.0.0.1:$mq_port\"
listen_v5 = \"127.0.0.1:$v5_port\""
  mqtt_cfg=""
  components=(edge hub pg)
else
  broker_cfg=""
  mqtt_cfg="broker = \"127.0.0.1:$mq_port\"
client_id = \"chaos-hub\"
share_group = \"${CHAOS_SHARE:-}\""
  components=(edge broker hub pg)
fi
cat > "$out/hub.toml" << TOML
$broker_cfg
[mqtt]
$mqtt_cfg
keepalive_s = 5
[postgres]
url = "host=127.0.0.1 port=$pg_port user=postgres dbname=tapwatch"
[ingest]
auto_register_devices = true
[retention]
max_age_days = 36500
[http]
listen = "127.0.0.1:0"
TOML
cat > "$out/edge.toml" << TOML
[device]
id = "chaos-tap"
[[interface]]
name = "$tag"
[store]
path = "$out/edge.db"
[stats]
interval_s = 5
[flows]
idle_timeout_s = 5
tcp_idle_timeout_s = 10
[http]
listen = "127.0.0.1:$edge_http"
[sync]
enabled = true
broker = "127.0.0.1:$mq_port"
metrics_interval_s = 5
reconnect_min_ms = 100
reconnect_max_ms = 2000
resend_after_s = 5
TOML
if [ "$broker_kind" = embedded ]; then
  "$hub_bin" device add --config "$out/hub.toml" --password-file "$out/edge-pw" chaos-tap > /dev/null
  printf 'username = "chaos-tap"\npassword_file = "%s"\n' "$out/edge-pw" >> "$out/edge.toml"
fi

start() { # component
  case $1 in
    broker) mosquitto -c "$out/mosquitto/mosquitto.conf" 2>> "$out/mosquitto/log" & pid[broker]=$! ;;
    pg) pg start; pid[pg]=$(head -n 1 "$out/pg/data/postmaster.pid") ;;
    hub) "$hub_bin" run --config "$out/hub.toml" 2>> "$out/hub.log" & pid[hub]=$! ;;
    edge)
      if [ -e "$out/faketime" ]; then
        # The wall clock from the file, read at every call: the offset can change under it.
        LD_PRELOAD=$faketime_lib FAKETIME_TIMESTAMP_FILE=$out/faketime FAKETIME_NO_CACHE=1 \
          DONT_FAKE_MONOTONIC=1 "$edge_bin" run --config "$out/edge.toml" 2>> "$out/edge.log" &
      else
        "$edge_bin" run --config "$out/edge.toml" 2>> "$out/edge.log" &
      fi
      pid[edge]=$! ;;
  esac
}
kill9() {
  if [ "$1" = pg ]; then
    # SIGQUIT to every backend at once: the crash PostgreSQL recovers from (SIGKILL to the
    # postmaster alone would leave its backends holding the shared memory).
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$out/pg/data" -m immediate stop > /dev/null 2>&1 || true
  else
    kill -9 "${pid[$1]}" 2> /dev/null || true
    wait "${pid[$1]}" 2> /dev/null || true
  fi
}

# The network, its servers and its traffic.
source "$here/scripts/bridge-hosts.sh"
bridge_hosts "$tag" "$tag" srv:$srv cli:$cli atk:$atk
inside() { local ns=$1; shift; ip netns exec "$tag-$ns" "$@"; }
head -c $((256 << 10)) /dev/urandom > "$out/www/file.bin"
echo "<h1>chaos</h1>" > "$out/www/index.html"
inside srv sh -c "cd '$out/www' && exec python3 -m http.server 80 --bind $srv" > /dev/null 2>&1 &
pids+=($!)

[ "$broker_kind" = embedded ] || start broker
pid[pg]=$(head -n 1 "$out/pg/data/postmaster.pid")
start hub
for _ in $(seq 200); do grep -q "mqtt: subscribed" "$out/hub.log" 2> /dev/null && break; sleep 0.1; done
start edge
for _ in $(seq 100); do grep -q "listening on" "$out/edge.log" 2> /dev/null && break; sleep 0.1; done

# About 200 flows a second: UDP to many ports, and pages.
inside cli python3 -c "
import socket, time, random
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for _ in range(40):
        s.sendto(b'x' * random.randint(20, 400), ('$srv', random.randint(1024, 60000)))
    time.sleep(0.2)" > /dev/null 2>&1 &
pids+=($!)
inside cli bash -c "while true; do curl -s -o /dev/null -o /dev/null http://$srv/ http://$srv/file.bin; sleep 0.3; done" \
  > /dev/null 2>&1 &
pids+=($!)
if command -v nmap > /dev/null; then
  inside atk bash -c "while true; do nmap -n -sS -T4 -p 1-1000 $srv > /dev/null 2>&1; sleep 30; done" \
    > /dev/null 2>&1 &
  pids+=($!)
fi

echo "chaos: $cycles cycles over ${components[*]} (broker: $broker_kind${CHAOS_SHARE:+, shared subscription $CHAOS_SHARE})"
t0=$(date +%s)
for i in $(seq 1 "$cycles"); do
  c=${components[$(((i - 1) % ${#components[@]}))]}
  sleep "$pause"
  kill9 "$c"
  down=$(python3 -c 'import random; print(round(random.uniform(0.5, 3), 2))')
  sleep "$down"
  start "$c"
  printf 'chaos: cycle %d/%d: %s killed, back after %s s\n' "$i" "$cycles" "$c" "$down"
done
echo "chaos: cycles done in $(($(date +%s) - t0)) s"

half=$((extra_s / 2)) quarter=$((extra_s / 4))
for x in $extras; do
  t1=$(date +%s)
  case $x in
    disk)
      if [ "$broker_kind" = embedded ]; then
        echo "chaos: fault disk: skipped (the embedded broker keeps nothing on disk)"
        continue
      fi
      echo "chaos: fault disk: the broker's disk full for $extra_s s, the broker killed halfway"
      dd if=/dev/zero of="$mqdb/fill" bs=64k 2> /dev/null || true
      sleep "$half"
      kill9 broker
      sleep 1
      start broker
      sleep $((extra_s - half))
      rm -f "$mqdb/fill" ;;
    db)
      echo "chaos: fault db: PostgreSQL refuses every write for $extra_s s"
      psql_ -c "ALTER SYSTEM SET default_transaction_read_only = on" -c "SELECT pg_reload_conf()" > /dev/null
      sleep "$extra_s"
      PGOPTIONS="-c default_transaction_read_only=off" psql_ \
        -c "ALTER SYSTEM RESET default_transaction_read_only" -c "SELECT pg_reload_conf()" > /dev/null ;;
    clock)
      echo "chaos: fault clock: the edge's clock an hour ahead, restarted there, back, restarted"
      echo "+0" > "$out/faketime"
      kill9 edge
      start edge
      sleep 2
      echo "+1h" > "$out/faketime"
      sleep "$quarter"
      kill9 edge
      start edge
      sleep "$quarter"
      echo "+0" > "$out/faketime"
      sleep "$quarter"
      kill9 edge
      rm -f "$out/faketime"
      start edge
      sleep "$quarter" ;;
    loss)
      echo "chaos: fault loss: 20% of the packets to and from the broker's port dropped for $extra_s s"
      nft add table inet "$tag"
      nft add chain inet "$tag" input "{ type filter hook input priority -10 ; }"
      nft add rule inet "$tag" input tcp dport "$mq_port" numgen random mod 100 "<" 20 drop
      nft add rule inet "$tag" input tcp sport "$mq_port" numgen random mod 100 "<" 20 drop
      sleep "$extra_s"
      nft delete table inet "$tag" ;;
  esac
  echo "chaos: fault $x over after $(($(date +%s) - t1)) s"
done
# The edge, last restarted after its clock stepped back, shows online (before the drain below,
# which ends with its offline status).
state=
for _ in $(seq 300); do
  state=$(psql_ -c "SELECT state FROM devices WHERE id = 'chaos-tap'" 2> /dev/null || true)
  [ "$state" = online ] && break
  sleep 0.1
done
echo "chaos: stopping the traffic and draining"
for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
for ns in cli atk; do ip netns pids "$tag-$ns" 2> /dev/null | xargs -r kill 2> /dev/null || true; done
# The daemon stops (its flows in progress are recorded), then `tapwatch-edge sync` sends what
# the outbox holds until the hub has confirmed all of it: nothing new is captured meanwhile.
sleep 2
kill -TERM "${pid[edge]}" 2> /dev/null || true
wait "${pid[edge]}" 2> /dev/null || true
if ! timeout 300 "$edge_bin" sync --config "$out/edge.toml" 2>> "$out/edge.log"; then
  echo "chaos: the outbox did not drain in 300 s"
fi
sleep 1
edge_sql() { python3 - "$out/edge.db" "$1" << 'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
for row in c.execute(sys.argv[2]):
    print("|".join(str(v) for v in row))
PY
}

fail=0
printf '\n%-10s %10s %10s %8s %8s\n' stream produced delivered missing doubled
for stream in flows stats metrics analyses anomalies evidence; do
  produced=$(edge_sql "SELECT coalesce((SELECT last FROM sync_seq WHERE stream = '$stream'), 0)")
  delivered=$(psql_ -c "SELECT count(*) FROM ingest_log WHERE device = 'chaos-tap' AND stream = '$stream'")
  case $stream in
    flows)
      # Records, not messages: every flow the edge committed, against PostgreSQL's rows.
      produced=$(edge_sql "SELECT count(*) FROM traffic_features")
      delivered=$(psql_ -c "SELECT count(DISTINCT (start_ts, end_ts, src_ip, src_port, dst_ip, dst_port, protocol)) FROM traffic_features WHERE device = 'chaos-tap'")
      rows=$(psql_ -c "SELECT count(*) FROM traffic_features WHERE device = 'chaos-tap'") ;;
    stats) rows=$(psql_ -c "SELECT count(*) FROM traffic_stats WHERE device = 'chaos-tap'") ;;
    metrics) rows=$(psql_ -c "SELECT count(*) FROM system_metrics WHERE device = 'chaos-tap'") ;;
    analyses) rows=$(psql_ -c "SELECT count(*) FROM analyses WHERE device = 'chaos-tap'") ;;
    *) rows=$delivered ;;
  esac
  missing=$((produced - delivered)) doubled=$((rows - delivered))
  printf '%-10s %10d %10d %8d %8d\n' "$stream" "$produced" "$delivered" "$missing" "$doubled"
  [ "$missing" = 0 ] && [ "$doubled" = 0 ] || fail=1
done
lost=$(psql_ -c "SELECT coalesce(sum(lost), 0) FROM device_streams WHERE device = 'chaos-tap'")
dead=$(psql_ -c "SELECT count(*) FROM dead_letters")
echo "hub: $dead dead letters; the edge showed ${state:-nothing} before the drain"
[ "$state" = online ] || fail=1
[ "$dead" = 0 ] || { fail=1; psql_ -c "SELECT topic, reason, detail FROM dead_letters LIMIT 5"; }
echo "hub: seqs counted lost $lost; edge: $(grep -c 'outbox over' "$out/edge.log" || true) outbox-bound drops, $(edge_sql 'SELECT count(*) FROM outbox') messages left in the outbox"
[ "$fail" = 0 ] && echo "chaos: nothing missing, nothing doubled" || echo "chaos: FAILED (logs in $out)"
exit "$fail"
