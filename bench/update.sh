#!/usr/bin/env bash
# Updates of the edge program, issue 19's bench: the program as the package ships it (release,
# stripped), packed into a signed bundle, installed into a slot, and started on trial on `lo`
# with the local Mosquitto until its launcher keeps it. UPDATE_ROUNDS rounds (default 5); prints
# the bundle's size and, for each step, the median and the largest seconds, and writes
# bench/results/update-DATE-COMMIT.txt.
#
#   sudo TAPWATCH_BIN=/var/cache/tapwatch-rel/release bench/update.sh
#
# pack: `update pack` (hash, sign, tar). install: `update install` (signature, unpack, hash,
# fsync, the new program's `config check`, the slot renamed, the state written). trial: from
# `run` to the state saying the slot is active (the launcher starts the new program as its
# child; it is ready, captures on lo and connects; the launcher commits).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${UPDATE_ROUNDS:-5}
bin=${TAPWATCH_BIN:-${CARGO_TARGET_DIR:-target}/release}/tapwatch-edge
[ -x "$bin" ] || { echo "update: no $bin (cargo build --release -p tapwatch-edge)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "update: needs root (capture on lo)" >&2; exit 1; }
work=$(mktemp -d /tmp/tapwatch-update-bench.XXXXXX)
trap 'pkill -f "$work/edge.toml" 2> /dev/null || true; rm -rf "$work"' EXIT
strip -o "$work/tapwatch-edge" "$bin"
public=$("$bin" update keygen --out "$work/release.key" 2> /dev/null)
cat > "$work/edge.toml" << EOF
[device]
id = "update-bench-$$"
[[interface]]
name = "lo"
[store]
path = "$work/state/edge.db"
[http]
listen = "127.0.0.1:0"
[sync]
enabled = true
broker = "127.0.0.1:1883"
topic_prefix = "update-bench-$$/"
[update]
public_key = "$public"
EOF
now() { date +%s.%N; }
pack=() install=() trial=()
for i in $(seq "$rounds"); do
  t0=$(now)
  "$bin" update pack --key "$work/release.key" --version "9.$i.0" --out "$work/b.twu" \
    "$work/tapwatch-edge" 2> /dev/null
  t1=$(now)
  "$bin" update install -c "$work/edge.toml" "$work/b.twu" 2> /dev/null
  t2=$(now)
  "$bin" run -c "$work/edge.toml" 2> "$work/run.log" &
  pid=$!
  until grep -q "\"active_version\": \"9.$i.0\"" "$work/state/update/state.json" 2> /dev/null; do
    kill -0 "$pid" 2> /dev/null || { cat "$work/run.log" >&2; exit 1; }
    sleep 0.02
  done
  t3=$(now)
  kill -TERM "$pid"
  wait "$pid" || true
  pack+=("$(awk "BEGIN{print $t1 - $t0}")") install+=("$(awk "BEGIN{print $t2 - $t1}")")
  trial+=("$(awk "BEGIN{print $t3 - $t2}")")
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %.2f s, max %.2f s", a[int((NR+1)/2)], a[NR]}'; }
commit=$(git rev-parse --short HEAD)
out=bench/results/update-$(date +%F)-$commit.txt
{
  echo "update bench, $(date -u +%FT%TZ), commit $commit, $rounds rounds, $(nproc) cores"
  echo "program: $(du -k "$work/tapwatch-edge" | cut -f1) KiB stripped; bundle $(du -k "$work/b.twu" | cut -f1) KiB"
  echo "pack:    $(stats "${pack[@]}")"
  echo "install: $(stats "${install[@]}")"
  echo "trial:   $(stats "${trial[@]}")   (run to the slot kept: ready, capturing on lo, connected)"
} | tee "$out"
