#!/usr/bin/env bash
# Installs what building and testing Tapwatch needs on a Debian 12 machine, as root. Idempotent:
# what is there already is left alone, so a second run takes seconds.
set -euo pipefail

apt_packages=(
  build-essential pkg-config libpcap-dev        # the pcap crate
  tshark tcpdump wireshark-common bc            # tests cross-check tshark; bench/offline.sh
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user   # the ARM appliance build
  qemu-system-arm                               # the MCU example on an emulated Cortex-M4F (scripts/mcu.sh)
  iproute2 curl ca-certificates iputils-ping nmap hping3 tcpreplay python3 python3-venv   # live-capture tests and benches
  hydra openssh-server vsftpd dnsmasq-base iodine bind9-dnsutils   # the lab (models/lab/lab.sh)
  mosquitto mosquitto-clients openssl   # hub tests: brokers of their own (dynamic security), certificates
  faketime nftables                     # bench/chaos.sh: the edge's clock stepped, a lossy link
  chromium                                      # the dashboard's browser tests (playwright-core)
  systemd                                       # image/check-units.sh: systemd-analyze security
  debootstrap file                              # image/check-packages.sh: a Debian 12 root to install into
)
arm64_packages=(libpcap-dev:arm64)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  missing+=(__arm64)
fi
for p in "${arm64_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/setup.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "scripts/setup.sh: installing ${missing[*]}" >&2
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q
  pkgs=()
  for p in "${missing[@]}"; do [ "$p" = __arm64 ] || pkgs+=("$p"); done
  # tshark asks whether non-root users may capture; the default (no) is right for us. The lab's
  # servers (sshd, vsftpd) run only inside its namespaces with their own configuration: the
  # packages must not start system services, so a policy-rc.d refuses that while they install.
  if [ ${#pkgs[@]} -gt 0 ]; then
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      policy=/usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" || { [ -z "$policy" ] || rm -f "$policy"; exit 1; }
    [ -z "$policy" ] || rm -f "$policy"
  fi
fi

if ! command -v cargo > /dev/null; then
  echo "scripts/setup.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
installed=$(rustup target list --installed)
for t in thumbv7em-none-eabihf aarch64-unknown-linux-gnu; do
  grep -qx "$t" <<< "$installed" || rustup target add "$t"
done
components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<< "$components" || rustup component add "$c"
done

# The dashboard (hub/web): its packages as the lock file pins them, and its build, with the
# machine's Node.js (20.19 or later, for Vite 7) and npm.
if ! command -v npm > /dev/null; then
  echo "scripts/setup.sh: npm not found; install Node.js 20.19 or later with npm" >&2
  exit 1
fi
web="$(cd "$(dirname "$0")/.." && pwd)/hub/web"
if [ -f "$web/package-lock.json" ]; then
  if [ ! -d "$web/node_modules" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd "$web" && npm run --silent build > /dev/null)
fi
