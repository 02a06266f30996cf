# Sourced by scripts/demo.sh and models/lab/lab.sh: a bridge (the capture point, like a mirror
# port) with one network namespace per host on it.
#
#   bridge_hosts BRIDGE PREFIX NAME:ADDRESS...
# makes bridge BRIDGE and, for each NAME, namespace PREFIX-NAME whose eth0 (ADDRESS/24, up, with
# lo up) is the peer of PREFIX-NAME-h on the bridge.
bridge_hosts() {
  local bridge=$1 prefix=$2 pair name addr
  shift 2
  ip link add "$bridge" type bridge
  ip link set "$bridge" up
  for pair in "$@"; do
    name=${pair%%:*} addr=${pair#*:}
    ip netns add "$prefix-$name"
    ip link add "$prefix-$name-h" type veth peer name eth0 netns "$prefix-$name"
    ip link set "$prefix-$name-h" master "$bridge" up
    ip netns exec "$prefix-$name" ip addr add "$addr/24" dev eth0
    ip netns exec "$prefix-$name" ip link set eth0 up
    ip netns exec "$prefix-$name" ip link set lo up
  done
}
