#!/usr/bin/env bash
# The appliance's systemd units are hardened: `systemd-analyze security` (offline, on the unit
# files) rates each at an overall exposure of 2.5 or lower, the edge holds only CAP_NET_RAW and
# CAP_NET_ADMIN, and the hub no capability at all; the edge is Type=notify with a watchdog. Prints each unit's score; exits non-zero if
# one is over. Needs systemd-analyze (Debian: systemd) 250 or later.
set -euo pipefail
dir=$(cd "$(dirname "$0")/systemd" && pwd)
fail=0
for unit in "$dir"/*.service; do
  name=$(basename "$unit")
  if ! out=$(cd "$dir" && systemd-analyze security --offline=true --threshold=25 "$name" 2>&1); then
    fail=1
  fi
  printf '%s\n' "$out" | tail -n 1
done
caps() { sed -n "s/^CapabilityBoundingSet=//p" "$dir/$1"; }
[ "$(caps tapwatch-edge.service)" = "CAP_NET_RAW CAP_NET_ADMIN" ] \
  || { echo "tapwatch-edge.service: capabilities must be CAP_NET_RAW CAP_NET_ADMIN only" >&2; fail=1; }
grep -qx "Type=notify" "$dir/tapwatch-edge.service" && grep -q "^WatchdogSec=" "$dir/tapwatch-edge.service" \
  || { echo "tapwatch-edge.service: Type=notify with a WatchdogSec (the daemon speaks sd_notify)" >&2; fail=1; }
[ -z "$(caps tapwatch-hub.service)" ] \
  || { echo "tapwatch-hub.service: the hub holds no capability" >&2; fail=1; }
[ "$fail" = 0 ] || { echo "a unit's exposure is over 2.5, or its capabilities are wrong" >&2; exit 1; }
