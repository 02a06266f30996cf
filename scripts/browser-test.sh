#!/usr/bin/env bash
# The dashboard's browser tests: a hub of its own (database of its own, port 0, the local
# Mosquitto under a topic prefix of its own) serving hub/web/dist, seeded through its real ingest
# with two hours of an edge's messages; then hub/web/tests/browser.mjs drives Debian's Chromium
# through it. Screenshots (and the downloaded pcap) are kept in $ARTEFACTS
# (default bench-out/browser).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f hub/web/dist/index.html ] || (cd hub/web && npm run --silent build)
export ARTEFACTS=${ARTEFACTS:-$PWD/bench-out/browser}
rm -rf "$ARTEFACTS"
mkdir -p "$ARTEFACTS"
export HUB_LOG_TO=$ARTEFACTS/hub.log
. scripts/test-hub.sh
test_hub_start browser browser-test-password "web_root = \"$PWD/hub/web/dist\"" \
  "$(printf '[ingest]\nauto_register_devices = true\nbatch_ms = 20')"
url=$HUB_URL db=$HUB_DB prefix=$HUB_PREFIX

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
answer="python3 $seed applied $device REV HASH | $pub/config/applied"
# An update bundle to upload, signed with a key of this run (the hub is given none: it checks
# the format and the hashes).
edge=${TAPWATCH_EDGE:-${CARGO_TARGET_DIR:-$PWD/target}/debug/tapwatch-edge}
[ -x "$edge" ] || cargo build -q -p tapwatch-edge
"$edge" update keygen --out "$ARTEFACTS/release.key" > /dev/null 2>&1
printf '#!/bin/sh\nexit 0\n' > "$ARTEFACTS/program"
"$edge" update pack --key "$ARTEFACTS/release.key" --version 0.2.0-browser --arch aarch64 \
  --out "$ARTEFACTS/update.twu" "$ARTEFACTS/program" 2> /dev/null
export UPDATE_BUNDLE=$ARTEFACTS/update.twu
(cd hub/web && node tests/browser.mjs "$url" admin browser-test-password "$inject" "$answer")
echo "screenshots: $ARTEFACTS"
