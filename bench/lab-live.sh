#!/usr/bin/env bash
# The lab played live, as deployed: models/lab/lab.sh's real tools on its bridge, a live edge
# (the shipped models, the store and sync on) capturing there, and the hub (embedded broker,
# PostgreSQL) it syncs to. Two phases:
#
# 1. Each attack step with an edge of its own, started before the step (a device per step, so
#    one step's episode never hides the next's): the time from the step's command starting to
#    its anomaly (the labelled kind from the labelled source) being in the hub's database, read
#    by a poller every 50 ms.
# 2. BENIGN_S seconds (default 600) of the lab's benign steps again and again (web page loads
#    and downloads, DNS, SSH sessions, scp and FTP transfers, pings) with one edge: every
#    anomaly the hub gets from it is a false alarm.
#
# Usage: sudo bench/lab-live.sh [OUT_DIR]   (default bench-out/lab-live; ~15 min)
#   TAPWATCH_BIN: the folder with tapwatch-edge and tapwatch-hub (default target/release,
#   built here when missing). LAB_ROUND (default 5): the round lab.sh plays (the shipped models
#   trained on rounds 1 and 2). STEPS: the attack steps (default all of lab.sh's).
# Prints one line per attack step (step, kind, source, latency or "missed", other anomalies)
# and the benign phase's count; writes the same to OUT_DIR/results.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ "$(id -u)" = 0 ] || { echo "lab-live: run as root (namespaces and capture)" >&2; exit 1; }
out=${1:-$root/bench-out/lab-live}
bin=${TAPWATCH_BIN:-${CARGO_TARGET_DIR:-$root/target}/release}
if [ ! -x "$bin/tapwatch-edge" ] || [ ! -x "$bin/tapwatch-hub" ]; then
  cargo build --release -q -p tapwatch-edge -p tapwatch-hub
fi
benign_s=${BENIGN_S:-600}
round=${LAB_ROUND:-5}
steps=(${STEPS:-scan_syn scan_connect scan_udp scan_fin scan_null scan_xmas sweep syn_flood
  udp_flood icmp_flood reflection brute_ssh brute_ftp brute_http http_flood dns_tunnel arp_spoof
  dhcp_starvation})
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

db=tapwatch_lablive

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  [ ! -s "$out/edge.pid" ] || kill "$(cat "$out/edge.pid")" 2> /dev/null || true
  wait 2> /dev/null || true
}
trap cleanup EXIT
# shellcheck source=../scripts/hub-here.sh
. "$root/scripts/hub-here.sh"
hub_here "$bin/tapwatch-hub" "$out" "$db" "$(printf '[ingest]\nbatch_ms = 20')" || exit 1
pids+=("$HUB_PID")
edges_port=$HUB_EDGES_PORT

# The poller: each anomaly row, once, with the wall-clock time it was first seen in the database.
( declare -A seen
  while true; do
    now=$(date +%s.%N)
    while IFS='|' read -r id device kind src; do
      [ -n "$id" ] && [ -z "${seen[$id]:-}" ] || continue
      seen[$id]=1
      printf '%s\t%s\t%s\t%s\n' "$now" "$device" "$kind" "$src" >> "$out/arrivals.tsv"
    done < <(psql -X -A -t -h 127.0.0.1 -U postgres -d "$db" \
      -c "SELECT id, device, kind, host(src_ip) FROM anomalies" 2> /dev/null)
    sleep 0.05
  done ) &
pids+=($!)
: > "$out/arrivals.tsv"

# The hook lab.sh runs around each step: an edge of its own per attack step (device
# lab-STEP), one edge for the whole benign phase (device lab-benign).
cat > "$out/hook.sh" << HOOK
#!/usr/bin/env bash
set -euo pipefail
what=\$1 step=\$2 label=\$3
device=lab-\$step
[ "\$label" = benign ] && device=lab-benign
if [ "\$what" = after ]; then
  [ "\$label" = benign ] && exit 0
  sleep 3 # the episode's first message is sent at once; give a late one time to arrive
  kill "\$(cat '$out/edge.pid')" 2> /dev/null || true
  while kill -0 "\$(cat '$out/edge.pid')" 2> /dev/null; do sleep 0.1; done
  : > '$out/edge.pid'
  exit 0
fi
[ -s '$out/edge.pid' ] && exit 0 # the benign phase's edge runs on
"$bin/tapwatch-hub" device add --config '$out/hub.toml' --password-file "$out/\$device.password" \
  "\$device" > /dev/null
cat > "$out/\$device.toml" << TOML
[device]
id = "\$device"
[[interface]]
name = "twlab0"
[store]
path = "$out/\$device.db"
[sync]
enabled = true
broker = "127.0.0.1:$edges_port"
username = "\$device"
password_file = "$out/\$device.password"
[detect.models]
autoencoder = "$root/models/shipped/autoencoder.onnx"
classifier = "$root/models/shipped/classifier.onnx"
TOML
"$bin/tapwatch-edge" run --config "$out/\$device.toml" 2> "$out/\$device.log" &
echo \$! > '$out/edge.pid'
for _ in \$(seq 100); do
  grep -q "capturing" "$out/\$device.log" && grep -q "sync: connected" "$out/\$device.log" && exit 0
  sleep 0.1
done
echo "lab-live: the edge for \$step did not start" >&2
cat "$out/\$device.log" >&2
exit 1
HOOK
chmod +x "$out/hook.sh"
: > "$out/edge.pid"

echo "lab-live: attack steps (round $round)" >&2
LAB_HOOK=$out/hook.sh LAB_ROUND=$round bash models/lab/lab.sh "$out/attacks" "${steps[@]}" \
  2> "$out/lab-attacks.log"
benign_steps=()
for _ in $(seq 400); do benign_steps+=(web dns ssh scp ftp bulk ping); done
echo "lab-live: benign steps for $benign_s s" >&2
start=$(date +%s)
( sleep "$benign_s"; pkill -f "lab.sh $out/benign" || true ) &
pids+=($!)
LAB_HOOK=$out/hook.sh LAB_ROUND=$round bash models/lab/lab.sh "$out/benign" "${benign_steps[@]}" \
  2> "$out/lab-benign.log" || true
played=$(($(date +%s) - start))
sleep 3

# Results: per attack step, the first arrival from its device of its kind and source.
python3 - "$out" "$played" << 'PY'
import sys, collections
out, played = sys.argv[1], int(sys.argv[2])
arrivals = [l.rstrip("\n").split("\t") for l in open(f"{out}/arrivals.tsv") if l.strip()]
by_device = collections.defaultdict(list)
for t, device, kind, src in arrivals:
    by_device[device].append((float(t), kind, src))
lines, lat = [], []
for l in open(f"{out}/attacks/steps.tsv"):
    step, label, source, start = l.rstrip("\n").split("\t")
    got = by_device.get(f"lab-{step}", [])
    hit = [t for t, k, s in got if k == label and (source in ("*", s))]
    other = sorted({f"{k} {s}" for t, k, s in got if not (k == label and source in ("*", s))})
    if hit:
        lat.append(min(hit) - float(start))
    res = f"{min(hit) - float(start):.2f} s" if hit else "missed"
    lines.append(f"{step}\t{label}\t{source}\t{res}\t{', '.join(other) or '-'}")
benign = by_device.get("lab-benign", [])
lines.append(f"benign\t{played} s of web, DNS, SSH, scp, FTP, bulk, ping\t-\t"
             f"{len(benign)} anomalies\t{', '.join(sorted({f'{k} {s}' for _, k, s in benign})) or '-'}")
if lat:
    lat.sort()
    lines.append(f"latency\tattack steps caught {len(lat)} of {len(lines) - 1}\t-\t"
                 f"median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s\t-")
open(f"{out}/results.tsv", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
