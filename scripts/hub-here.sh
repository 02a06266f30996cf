# Sourced by bench/lab-live.sh and image/boot-test.sh: a hub of its own on this machine, with a
# fresh PostgreSQL database (PostgreSQL started if it is down) and its embedded broker.
#
#   hub_here HUB_BIN DIR DB [TOML]
# drops and makes database DB, writes DIR/hub.toml (the broker on loopback ports of its own, the
# API on another; TOML is appended), starts HUB_BIN with its log in DIR/hub.log and waits until
# it has subscribed. Sets HUB_PID and HUB_EDGES_PORT (the port edges connect to); returns 1 with
# the log on stderr if the hub did not come up.
hub_here() {
  local bin=$1 dir=$2 db=$3 extra=${4:-} port edges v5 web
  pg_isready -q -h 127.0.0.1 \
    || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start
  psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
    -c "CREATE DATABASE $db" 2> /dev/null
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  edges=$(port) v5=$(port) web=$(port)
  mkdir -p "$dir"
  cat > "$dir/hub.toml" << TOML
[broker]
embedded = true
listen = "127.0.0.1:$edges"
listen_v5 = "127.0.0.1:$v5"
[postgres]
url = "host=127.0.0.1 user=postgres dbname=$db"
[http]
listen = "127.0.0.1:$web"
$extra
TOML
  TAPWATCH_ADMIN_USER=admin TAPWATCH_ADMIN_PASSWORD=hub-here-admin "$bin" run \
    --config "$dir/hub.toml" 2> "$dir/hub.log" &
  HUB_PID=$!
  HUB_EDGES_PORT=$edges
  for _ in $(seq 100); do grep -q "mqtt: subscribed" "$dir/hub.log" && return 0; sleep 0.1; done
  cat "$dir/hub.log" >&2
  return 1
}
