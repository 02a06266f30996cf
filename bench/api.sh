#!/usr/bin/env bash
# The hub API's speed over a day of a busy hub: 24-hour statistics with 10 million flow rows in
# the database (target: 200 ms), and anomaly list pages (target: 50 ms).
#
#   bench/api.sh [FLOWS] [DEVICES] [ANOMALIES] [RUNS]
#
# Fills the database tapwatch_api_bench once (about 4 GB and some minutes for 10 million flow
# rows; a rerun reuses it; BENCH_FRESH=1 starts over), then prints p50, p95 and worst per request.
set -euo pipefail
cd "$(dirname "$0")/.."
db=${BENCH_DB:-tapwatch_api_bench}
if [ "${BENCH_FRESH:-0}" = 1 ]; then
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
fi
if ! psql -h 127.0.0.1 -U postgres -d "$db" -qc "SELECT 1" > /dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
fi
cargo run --release -q -p tapwatch-hub --example api_bench -- \
  "host=127.0.0.1 user=postgres dbname=$db" "${1:-10000000}" "${2:-4}" "${3:-100000}" "${4:-30}"
