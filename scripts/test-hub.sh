# Sourced by the scripts that test against a hub of their own (schemathesis.sh, browser-test.sh):
#
#   test_hub_start NAME ADMIN_PASSWORD [HTTP_LINES] [MORE_TOML]
#
# makes a database of its own, writes a hub.toml (port 0, the local Mosquitto under a topic
# prefix of its own, HTTP_LINES added to [http], MORE_TOML before the rest), starts the debug hub
# with the first admin `admin`, waits until it serves and has subscribed, and sets HUB_URL,
# HUB_DB, HUB_PREFIX and HUB_WORK. An EXIT trap stops it, keeps its log in $HUB_LOG_TO (if set)
# and drops the database.
test_hub_start() {
  local name=$1 password=$2 http=${3:-} more=${4:-}
  local target=${CARGO_TARGET_DIR:-target}
  local hub="$target/debug/tapwatch-hub"
  [ -x "$hub" ] || cargo build -q -p tapwatch-hub
  HUB_WORK=$(mktemp -d)
  HUB_DB="tapwatch_${name}_$$"
  HUB_PREFIX="$name-$$/"
  HUB_PID=
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $HUB_DB"
  trap test_hub_stop EXIT
  printf '%s\n' "$more" \
    "[postgres]" "url = \"host=127.0.0.1 user=postgres dbname=$HUB_DB\"" \
    "[mqtt]" "client_id = \"tapwatch-$name-$$\"" "share_group = \"$name-$$\"" \
    "topic_prefix = \"$HUB_PREFIX\"" \
    "[http]" "listen = \"127.0.0.1:0\"" "$http" > "$HUB_WORK/hub.toml"
  TAPWATCH_ADMIN_USER=admin TAPWATCH_ADMIN_PASSWORD=$password \
    "$hub" run --config "$HUB_WORK/hub.toml" > "$HUB_WORK/hub.log" 2>&1 &
  HUB_PID=$!
  HUB_URL=
  for _ in $(seq 200); do
    HUB_URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$HUB_WORK/hub.log" | head -n 1)
    if [ -n "$HUB_URL" ] && grep -q "mqtt: subscribed" "$HUB_WORK/hub.log"; then
      return 0
    fi
    sleep 0.1
  done
  cat "$HUB_WORK/hub.log"
  echo "the hub did not start" >&2
  return 1
}

test_hub_stop() {
  if [ -n "${HUB_PID:-}" ]; then
    kill "$HUB_PID" 2> /dev/null || true
    wait "$HUB_PID" 2> /dev/null || true
  fi
  if [ -n "${HUB_LOG_TO:-}" ]; then cp "$HUB_WORK/hub.log" "$HUB_LOG_TO" 2> /dev/null || true; fi
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $HUB_DB WITH (FORCE)" || true
  rm -rf "$HUB_WORK"
}
