#!/usr/bin/env bash
# Boot the appliance's disk image (image/build-image.sh) as a tap boots it: qemu-system-aarch64
# -M virt (software emulation of a Cortex-A57) with UEFI firmware (Debian's qemu-efi-aarch64),
# which starts GRUB from the EFI partition, which starts Debian's arm64 kernel; with two NICs: eth0 for management (qemu's
# user network, where this machine is 10.0.2.2) and eth1 on a bridge of this machine that acts
# as a mirror (it floods every frame: ageing 0), with an attacker and a victim in network
# namespaces on the same bridge. A hub runs on this machine (PostgreSQL, its embedded broker);
# the device is registered there and its broker password written, as an operator would, into
# tapwatch.conf on a copy of the image's EFI partition (mtools), with the disk 1 GiB larger than
# the image, as a card is. First boot grows the root to the disk and provisions from that file,
# which it then rids of the password (checked at the end). The test waits for the edge to capture on
# eth1 (systemd's READY) and for the hub to see the device online, runs an nmap SYN scan from
# the attacker, and waits for the scan's flows and its port_scan anomaly in the hub's database.
# Timings go to stdout; the serial console to image/out/boot-test.log.
#
# Usage: sudo image/boot-test.sh   (needs qemu-system-arm (qemu-system-aarch64), qemu-efi-aarch64,
# mtools, nmap, iproute2, PostgreSQL at 127.0.0.1; TAPWATCH_HUB: the hub binary, default
# target/release/tapwatch-hub)
# BOOT_TIMEOUT (default 900 s): boot to capture under emulation.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
img=$out/tapwatch-arm64.img
firmware=/usr/share/qemu-efi-aarch64/QEMU_EFI.fd
fail() { echo "boot-test: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (a bridge, a tap device, namespaces)"
[ -s "$img" ] || fail "no image in $out (image/build-image.sh)"
[ -s "$firmware" ] || fail "no UEFI firmware at $firmware (apt-get install qemu-efi-aarch64)"
timeout_s=${BOOT_TIMEOUT:-900}
log=$out/boot-test.log
n=$$
br=twbr$n tap=twtap$n att=tw$n-att vic=tw$n-vic
work=$(mktemp -d /tmp/tapwatch-boot.XXXXXX)
hub=${TAPWATCH_HUB:-$here/../target/release/tapwatch-hub}
[ -x "$hub" ] || (cd "$here/.." && cargo build --release -q -p tapwatch-hub)
cleanup() {
  [ -n "${qemu:-}" ] && kill "$qemu" 2> /dev/null && wait "$qemu" 2> /dev/null || true
  [ -n "${hubpid:-}" ] && kill "$hubpid" 2> /dev/null && wait "$hubpid" 2> /dev/null || true
  rm -rf "$work"
  ip link del "$br" 2> /dev/null || true
  ip link del "$tap" 2> /dev/null || true
  ip netns del "$att" 2> /dev/null || true
  ip netns del "$vic" 2> /dev/null || true
}
trap cleanup EXIT
# The mirror: a bridge that floods every frame to every port (no MAC learning), with the
# attacker and the victim on it (scripts/bridge-hosts.sh) and the tap's capture NIC.
# shellcheck source=../scripts/bridge-hosts.sh
. "$here/../scripts/bridge-hosts.sh"
bridge_hosts "$br" "tw$n" att:10.77.0.1 vic:10.77.0.2
ip link set "$br" type bridge ageing_time 0
ip tuntap add dev "$tap" mode tap
ip link set "$tap" master "$br" up
attacker=10.77.0.1 victim=10.77.0.2

# The hub, with its embedded broker on this machine's loopback (the tap reaches it as 10.0.2.2).
db=tapwatch_boottest
sql() { psql -X -q -t -A -h 127.0.0.1 -U postgres -d "$db" -c "$1" 2> /dev/null || true; }
# shellcheck source=../scripts/hub-here.sh
. "$here/../scripts/hub-here.sh"
hub_here "$hub" "$out/boot-test-hub" "$db" || fail "the hub did not start: $out/boot-test-hub/hub.log"
hubpid=$HUB_PID edges_port=$HUB_EDGES_PORT
"$hub" device add --config "$out/boot-test-hub/hub.toml" --password-file "$work/password" \
  qemu-tap-1 > /dev/null 2>> "$out/boot-test-hub/hub.log"
password=$(cat "$work/password")

# The tap's disk: the image, 1 GiB larger, with tapwatch.conf on its EFI partition (which starts
# 1 MiB in).
disk=$work/disk.img
cp --sparse=always "$img" "$disk"
truncate -s +1G "$disk"
printf 'device=qemu-tap-1\r\ncapture=eth1\r\nbroker=10.0.2.2:%s\r\nuser=qemu-tap-1\r\npassword=%s\r\n' \
  "$edges_port" "$password" > "$work/tapwatch.conf"
mcopy -i "$disk@@1M" "$work/tapwatch.conf" ::/tapwatch.conf

: > "$log"
start=$(date +%s.%N)
qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 2 -m 1024 \
  -display none -monitor none -serial "file:$log" \
  -bios "$firmware" \
  -drive "if=virtio,format=raw,file=$disk" \
  -netdev user,id=mgmt -device virtio-net-pci,netdev=mgmt,mac=52:54:00:77:00:01 \
  -netdev "tap,id=cap,ifname=$tap,script=no,downscript=no" \
  -device virtio-net-pci,netdev=cap,mac=52:54:00:77:00:02 &
qemu=$!

# Seconds since the start when a line matching $1 shows in the console, or fail after $2 s.
wait_for() {
  local deadline=$(( $(date +%s) + $2 ))
  while ! grep -qE "$1" "$log"; do
    kill -0 "$qemu" 2> /dev/null || fail "qemu exited; the console is in $log"
    [ "$(date +%s)" -lt "$deadline" ] || fail "no '$1' within $2 s; the console is in $log"
    sleep 2
  done
  echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.1f'
}
kernel=$(wait_for "Booting Linux on physical CPU" "$timeout_s")
echo "boot-test: the firmware and GRUB started the kernel after $kernel s"
grown=$(wait_for "grow-root: .* to [0-9]+ MiB" "$timeout_s")
echo "boot-test: $(grep -aoE "grow-root: .* MiB" "$log" | head -n 1 | sed 's/^grow-root: //;s/^/root grown: /') after $grown s"
provisioned=$(wait_for "provision: this tap is qemu-tap-1.*boot/efi/tapwatch.conf" "$timeout_s")
echo "boot-test: provisioned as qemu-tap-1 from tapwatch.conf on the EFI partition after $provisioned s"
ready=$(wait_for "capturing.*eth1|interface=eth1.*capturing" "$timeout_s")
echo "boot-test: tapwatch-edge capturing on eth1 after $ready s (boot to capture, software emulation)"
grep -q "Started.*tapwatch-edge" "$log" && echo "boot-test: systemd saw it ready (Type=notify)"
# Seconds since the start when the query $1 returns a row, or fail after $2 s.
wait_db() {
  local deadline=$(( $(date +%s) + $2 ))
  while [ -z "$(sql "$1")" ]; do
    kill -0 "$qemu" 2> /dev/null || fail "qemu exited; the console is in $log"
    [ "$(date +%s)" -lt "$deadline" ] || fail "nothing for '$1' within $2 s; the console is in $log, the hub's log in $out/boot-test-hub/hub.log"
    sleep 1
  done
  echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.1f'
}
online=$(wait_db "SELECT 1 FROM devices WHERE id = 'qemu-tap-1' AND state = 'online'" 120)
echo "boot-test: the hub sees qemu-tap-1 online after $online s"
scan_start=$(date +%s.%N)
ip netns exec "$att" nmap -n -sS -Pn -T4 -p 1-1000 "$victim" > /dev/null
named=$(wait_for "anomaly.*kind=PortScan.*src=$attacker" 120)
echo "boot-test: the tap named the nmap scan from $attacker port_scan $(echo "$(date +%s.%N) - $scan_start" | bc -l | xargs printf '%.1f') s after it started"
wait_db "SELECT 1 FROM anomalies WHERE device = 'qemu-tap-1' AND kind = 'port_scan' AND host(src_ip) = '$attacker'" 60 > /dev/null
echo "boot-test: the port_scan anomaly is in the hub's database $(echo "$(date +%s.%N) - $scan_start" | bc -l | xargs printf '%.1f') s after the scan started"
wait_db "SELECT 1 FROM traffic_features WHERE device = 'qemu-tap-1' AND host(src_ip) = '$attacker' HAVING count(*) >= 100" 90 > /dev/null
echo "boot-test: the hub has $(sql "SELECT count(*) FROM traffic_features WHERE device = 'qemu-tap-1'") flows from qemu-tap-1, $(sql "SELECT count(*) FROM traffic_features WHERE device = 'qemu-tap-1' AND host(src_ip) = '$attacker'") of them the scanner's"
# Off, as a tap is unplugged; then the EFI partition holds tapwatch.conf without the password.
kill "$qemu" && wait "$qemu" 2> /dev/null || true
qemu=
left=$(mtype -i "$disk@@1M" ::/tapwatch.conf | tr -d '\r' | sed -n 's/^password=//p')
[ -z "$left" ] || fail "the password is still in tapwatch.conf on the EFI partition"
echo "boot-test: the password is gone from tapwatch.conf on the EFI partition"
