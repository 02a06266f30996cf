#!/usr/bin/env bash
# The dashboard's speed over a day of a busy hub: first paint of the overview on localhost
# (target: 1 s), the charts drawn with 24 hours at 1-minute buckets, and frame intervals while
# zooming (smooth: near 16.7 ms). Uses bench/api.sh's database (made first if missing).
#
#   bench/dashboard.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
db=${BENCH_DB:-tapwatch_api_bench}
if ! psql -h 127.0.0.1 -U postgres -d "$db" -qc "SELECT 1 FROM traffic_stats LIMIT 1" > /dev/null 2>&1; then
  bash bench/api.sh
fi
cargo build --release -q -p tapwatch-hub
target=${CARGO_TARGET_DIR:-target}
[ -f hub/web/dist/index.html ] || (cd hub/web && npm run --silent build)
work=$(mktemp -d)
cat > "$work/hub.toml" << TOML
[postgres]
url = "host=127.0.0.1 user=postgres dbname=$db"
[mqtt]
client_id = "tapwatch-dashboard-bench-$$"
topic_prefix = "dashboard-bench-$$/"
[http]
listen = "127.0.0.1:0"
web_root = "$PWD/hub/web/dist"
TOML
echo "dashboard-bench-password" | "$target/release/tapwatch-hub" user add --config "$work/hub.toml" \
  --role viewer dashboard-bench > /dev/null 2>&1 || true
"$target/release/tapwatch-hub" run --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
pid=$!
trap 'kill $pid 2> /dev/null; rm -rf "$work"' EXIT
url=
for _ in $(seq 100); do
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/hub.log" | head -n 1)
  [ -n "$url" ] && break
  sleep 0.1
done
(cd hub/web && node tests/bench.mjs "$url" dashboard-bench dashboard-bench-password "${1:-5}")
