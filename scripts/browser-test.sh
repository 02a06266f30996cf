#!/usr/bin/env bash
# The dashboard's browser tests: a hub of its own (database of its own, port 0, the local
# Mosquitto under a topic prefix of its own) serving hub/web/dist, seeded through its real ingest
# with two hours of an edge's messages; then hub/web/tests/browser.mjs drives Debian's Chromium
# through it. Screenshots (and the downloaded pcap) are kept in $ARTEFACTS
# (default bench-out/browser).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
hub="$target/debug/tapwatch-hub"
[ -x "$hub" ] || cargo build -q -p tapwatch-hub
[ -f hub/web/dist/index.html ] || (cd hub/web && npm run --silent build)
export ARTEFACTS=${ARTEFACTS:-$PWD/bench-out/browser}
rm -rf "$ARTEFACTS"
mkdir -p "$ARTEFACTS"

work=$(mktemp -d)
db="tapwatch_browser_$$"
prefix="browser-$$/"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2> /dev/null && wait "$pid" 2> /dev/null
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  cp "$work/hub.log" "$ARTEFACTS/hub.log" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/hub.toml" << EOF2
[postgres]
url = "host=127.0.0.1 user=postgres dbname=$db"
[mqtt]
client_id = "tapwatch-browser-$$"
share_group = "browser-$$"
topic_prefix = "$prefix"
[ingest]
auto_register_devices = true
batch_ms = 20
[http]
listen = "127.0.0.1:0"
web_root = "$PWD/hub/web/dist"
EOF2
TAPWATCH_ADMIN_USER=admin TAPWATCH_ADMIN_PASSWORD=browser-test-password \
  "$hub" run --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
pid=$!
url=
for _ in $(seq 100); do
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/hub.log" | head -n 1)
  grep -q "mqtt: subscribed" "$work/hub.log" && [ -n "$url" ] && break
  sleep 0.1
done
grep -q "mqtt: subscribed" "$work/hub.log" || { cat "$work/hub.log"; echo "the hub did not start" >&2; exit 1; }

device=tap-browser
publish() { # stream, then the JSON lines on stdin
  mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t "${prefix}tapwatch/v1/$device/$1" -l
}
for stream in status stats metrics analyses flows anomalies evidence; do
  python3 hub/web/tests/seed.py seed "$device" "$stream" | publish "$stream"
done
# Wait until the ingest has committed what was sent.
for _ in $(seq 100); do
  n=$(psql -h 127.0.0.1 -U postgres -d "$db" -tAc "SELECT count(*) FROM anomaly_evidence")
  [ "$n" = 1 ] && break
  sleep 0.1
done
seed="$PWD/hub/web/tests/seed.py"
pub="mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -l -t ${prefix}tapwatch/v1/$device"
inject="python3 $seed inject $device anomalies 42 | $pub/anomalies && python3 $seed inject $device evidence 42 | $pub/evidence"
(cd hub/web && node tests/browser.mjs "$url" admin browser-test-password "$inject")
echo "screenshots: $ARTEFACTS"
