#!/usr/bin/env bash
# The Debian packages of the appliance and the hub, for amd64 and arm64, into image/out/:
#   tapwatch-edge_<version>-1_<arch>.deb   the daemon, /etc/tapwatch/edge.toml (a conffile: an
#                                          edited one is kept on upgrade), its systemd unit,
#                                          the shipped models in /usr/share/tapwatch/models
#   tapwatch-hub_<version>-1_<arch>.deb    the hub, /etc/tapwatch/hub.toml, its unit, the
#                                          dashboard in /usr/share/tapwatch/web
# Each makes its system user (tapwatch, tapwatch-hub) and starts or restarts its service only
# if `config check` passes (image/debian/*/postinst).
#
# Usage: image/build.sh [ARCH...]   (default: amd64 arm64)
# Needs cargo-deb (installed here with `cargo install --locked cargo-deb` if missing), npm for
# the dashboard, and for arm64 the cross toolchain .ci/run installs (gcc-aarch64-linux-gnu,
# libpcap-dev:arm64). Release builds go to CARGO_TARGET_DIR (default target/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=$root/image/out
mkdir -p "$out"
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)
command -v cargo-deb > /dev/null || cargo install --locked --quiet cargo-deb
if [ ! -f hub/web/dist/index.html ]; then
  (cd hub/web && npm ci --no-audit --no-fund --silent && npm run build --silent)
fi
for arch in "${archs[@]}"; do
  case $arch in
    amd64) target=() ;;
    arm64) target=(--target aarch64-unknown-linux-gnu) ;;
    *) echo "build: unknown architecture $arch (amd64 or arm64)" >&2; exit 64 ;;
  esac
  for pkg in tapwatch-edge tapwatch-hub; do
    # Stripped: the release profile keeps line tables for perf, 140 MB the tap need not carry.
    cargo deb -p "$pkg" "${target[@]}" --strip --output "$out" --quiet
  done
done
ls -l "$out"/*.deb
