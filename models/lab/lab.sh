#!/usr/bin/env bash
# Labelled traffic from real tools, between network namespaces made here: one capture per step,
# and labels.csv saying what made each (step, label, the source a detector should name: the
# attacker's address; for ARP spoofing the address it claims; for DHCP starvation 0.0.0.0).
#
# Usage: sudo models/lab/lab.sh OUT_DIR [STEP...]
#   Steps (default: all): web ping scan_syn scan_connect scan_udp scan_fin scan_null scan_xmas
#   sweep syn_flood udp_flood icmp_flood arp_spoof dhcp_starvation
#
# Topology: a bridge twlab0 in the root namespace (the capture point, like a mirror port) with
# three namespaces on it: twl-srv 10.88.0.10 (HTTP on 8080; router to 10.89.0.0/24, where no host
# answers), twl-cli 10.88.0.20 (benign client), twl-atk 10.88.0.66 (attacker). Traffic stays in
# these namespaces. Floods last 4 seconds. Needs root, iproute2, tcpdump, nmap, hping3, curl,
# ping and python3. Everything made is removed on exit.
set -euo pipefail
out=${1:?usage: lab.sh OUT_DIR [STEP...]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(web ping scan_syn scan_connect scan_udp scan_fin scan_null scan_xmas
  sweep syn_flood udp_flood icmp_flood arp_spoof dhcp_starvation)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
srv=10.88.0.10 cli=10.88.0.20 atk=10.88.0.66

cleanup() {
  pkill -f "tcpdump -i twlab0" 2>/dev/null || true
  for ns in twl-srv twl-cli twl-atk; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del twlab0 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip link add twlab0 type bridge
ip link set twlab0 up
for pair in srv:$srv cli:$cli atk:$atk; do
  name=${pair%%:*} addr=${pair#*:}
  ip netns add "twl-$name"
  ip link add "twl-$name-h" type veth peer name eth0 netns "twl-$name"
  ip link set "twl-$name-h" master twlab0 up
  ip netns exec "twl-$name" ip addr add "$addr/24" dev eth0
  ip netns exec "twl-$name" ip link set eth0 up
  ip netns exec "twl-$name" ip link set lo up
done
ip netns exec twl-srv sysctl -qw net.ipv4.ip_forward=1
ip netns exec twl-atk ip route add 10.89.0.0/24 via "$srv"
ip netns exec twl-srv sh -c "cd '$here' && exec python3 -m http.server 8080 --bind $srv" > /dev/null 2>&1 &
# Neighbours learnt before the first capture, so each step starts clean.
ip netns exec twl-cli ping -c 1 -W 1 "$srv" > /dev/null
ip netns exec twl-atk ping -c 1 -W 1 "$srv" > /dev/null
ip netns exec twl-atk ping -c 1 -W 1 "$cli" > /dev/null
for _ in $(seq 50); do
  ip netns exec twl-cli curl -s -o /dev/null "http://$srv:8080/" && break
  sleep 0.1
done

inside() { local ns=$1; shift; ip netns exec "twl-$ns" "$@"; }

record() { # step label attacker command...
  local step=$1 label=$2 attacker=$3
  shift 3
  tcpdump -i twlab0 -s 400 -U -w "$out/$step.pcap" 2> /dev/null &
  local dump=$!
  sleep 1
  "$@" > /dev/null 2>&1 || true
  sleep 1
  kill -INT "$dump"
  wait "$dump" 2> /dev/null || true
  printf '%s.pcap,%s,%s\n' "$step" "$label" "$attacker" >> "$out/labels.csv"
  echo "lab: $step ($label) $(du -h "$out/$step.pcap" | cut -f1)" >&2
}

step() {
  case $1 in
    web) record web benign - inside cli sh -c "for i in \$(seq 40); do curl -s -o /dev/null http://$srv:8080/lab.sh; sleep 0.05; done" ;;
    ping) record ping benign - inside cli ping -c 20 -i 0.2 "$srv" ;;
    scan_syn) record scan_syn port_scan "$atk" inside atk nmap -n -Pn -sS -p 1-200 --max-retries 0 -T4 "$srv" ;;
    scan_connect) record scan_connect port_scan "$atk" inside atk nmap -n -Pn -sT -p 1-200 --max-retries 0 -T4 "$srv" ;;
    scan_udp) record scan_udp port_scan "$atk" inside atk nmap -n -Pn -sU -p 1-120 --max-retries 0 -T5 "$srv" ;;
    scan_fin) record scan_fin port_scan "$atk" inside atk nmap -n -Pn -sF -p 1-200 --max-retries 0 -T4 "$srv" ;;
    scan_null) record scan_null port_scan "$atk" inside atk nmap -n -Pn -sN -p 1-200 --max-retries 0 -T4 "$srv" ;;
    scan_xmas) record scan_xmas port_scan "$atk" inside atk nmap -n -Pn -sX -p 1-200 --max-retries 0 -T4 "$srv" ;;
    sweep) record sweep host_sweep "$atk" inside atk nmap -n -sn -PE --send-ip --max-retries 0 -T5 10.89.0.0/24 ;;
    syn_flood) record syn_flood syn_flood "$atk" inside atk timeout 4 hping3 -q -S --flood -p 8080 "$srv" ;;
    udp_flood) record udp_flood udp_flood "$atk" inside atk timeout 4 hping3 -q --udp --flood -p 9 "$srv" ;;
    icmp_flood) record icmp_flood icmp_flood "$atk" inside atk timeout 4 hping3 -q --icmp --flood "$srv" ;;
    arp_spoof) record arp_spoof arp_spoof "$srv" inside atk python3 "$here/arp_spoof.py" eth0 "$srv" "$cli" 50 ;;
    dhcp_starvation) record dhcp_starvation dhcp_starvation 0.0.0.0 inside atk python3 "$here/dhcp_starve.py" eth0 50 ;;
    *) echo "lab: no step $1" >&2; exit 64 ;;
  esac
}

: > "$out/labels.csv"
for s in "${steps[@]}"; do step "$s"; done
