#!/usr/bin/env bash
# The packages of image/out (image/build.sh) checked as an operator relies on them: each holds
# its binary (of its architecture), its unit, its configuration as a conffile, and the edge its
# models; the amd64 ones installed into a minimal Debian 12 root (debootstrap) find every
# library they link, make their system users, own their configuration root:<user> 0640, accept
# it with `config check`, keep an edited configuration when installed again, and a purge
# removes the state. (No systemd runs in the root: the units are checked by check-units.sh and
# started in the image's boot test.)
#
# Usage: sudo image/check-packages.sh   (needs debootstrap and network to deb.debian.org; the
# root is cached as a tarball in TAPWATCH_ROOT_CACHE, default /var/cache/tapwatch-image)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
fail() { echo "check-packages: $*" >&2; exit 1; }
newest() { { ls -t "$out"/"$1"_*_"$2".deb 2> /dev/null || true; } | head -n 1; }

for arch in amd64 arm64; do
  for pkg in tapwatch-edge tapwatch-hub; do
    deb=$(newest "$pkg" "$arch")
    [ -n "$deb" ] || { echo "check-packages: no $pkg for $arch in $out (image/build.sh $arch)"; continue; }
    conf=/etc/tapwatch/${pkg#tapwatch-}.toml
    list=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
    for f in "./usr/bin/$pkg" ".$conf" "./lib/systemd/system/$pkg.service"; do
      grep -qx "$f" <<< "$list" || fail "$deb lacks $f"
    done
    [ "$pkg" = tapwatch-hub ] || grep -q '^./usr/share/tapwatch/models/classifier.onnx$' <<< "$list" \
      || fail "$deb lacks the shipped models"
    [ "$pkg" = tapwatch-edge ] || grep -q '^./usr/share/tapwatch/web/index.html$' <<< "$list" \
      || fail "$deb lacks the dashboard"
    [ "$(dpkg-deb -I "$deb" conffiles)" = "$conf" ] || fail "$deb: $conf is not its conffile"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: not $arch"
    machine=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/bin/$pkg" | file -b -)
    case $arch in
      amd64) grep -q "x86-64" <<< "$machine" ;;
      arm64) grep -q "ARM aarch64" <<< "$machine" ;;
    esac || fail "$deb: its binary is $machine"
    grep -q ", stripped" <<< "$machine" || fail "$deb: its binary is not stripped"
    echo "check-packages: $(basename "$deb"): $(du -k "$deb" | cut -f1) KiB, contents and control as they should be"
  done
done

edge=$(newest tapwatch-edge amd64) hub=$(newest tapwatch-hub amd64)
[ -n "$edge" ] && [ -n "$hub" ] || fail "the install test needs the amd64 packages (image/build.sh amd64)"
[ "$(id -u)" = 0 ] || fail "the install test needs root (a chroot)"
cache=${TAPWATCH_ROOT_CACHE:-/var/cache/tapwatch-image}/bookworm-amd64-minbase.tar
rootfs=$(mktemp -d /tmp/tapwatch-root.XXXXXX)
cleanup() { umount "$rootfs/proc" 2> /dev/null || true; rm -rf "$rootfs"; }
trap cleanup EXIT
if [ -s "$cache" ]; then
  tar -xf "$cache" -C "$rootfs"
else
  command -v debootstrap > /dev/null || fail "debootstrap is missing (apt-get install debootstrap)"
  debootstrap --variant=minbase --include=adduser,libpcap0.8,file bookworm "$rootfs" \
    http://deb.debian.org/debian > /dev/null
  mkdir -p "$(dirname "$cache")"
  tar -cf "$cache" -C "$rootfs" .
fi
mount -t proc proc "$rootfs/proc"
in_root() { chroot "$rootfs" "$@"; }
cp "$edge" "$hub" "$rootfs/tmp/"
in_root dpkg -i "/tmp/$(basename "$edge")" "/tmp/$(basename "$hub")" > /dev/null
for pkg in tapwatch-edge tapwatch-hub; do
  missing=$(in_root ldd "/usr/bin/$pkg" | grep "not found" || true)
  [ -z "$missing" ] || fail "$pkg links what its Depends do not bring: $missing"
  user=${pkg/tapwatch-edge/tapwatch}
  uid=$(in_root getent passwd "$user" | cut -d: -f3)
  [ -n "$uid" ] && [ "$uid" -lt 1000 ] || fail "no system user $user"
  conf=/etc/tapwatch/${pkg#tapwatch-}.toml
  [ "$(in_root stat -c '%U:%G %a' "$conf")" = "root:$user 640" ] || fail "$conf: $(in_root stat -c '%U:%G %a' "$conf")"
  in_root "$pkg" config check "$conf" > /dev/null || fail "$pkg config check refuses the default $conf"
done
# An edited configuration survives the package installed again (an upgrade's path).
sed -i 's/^id = "tap-01"/id = "tap-edited"/' "$rootfs/etc/tapwatch/edge.toml"
in_root dpkg -i --force-confold "/tmp/$(basename "$edge")" > /dev/null
grep -q '^id = "tap-edited"' "$rootfs/etc/tapwatch/edge.toml" || fail "an upgrade replaced the edited edge.toml"
mkdir -p "$rootfs/var/lib/tapwatch" && touch "$rootfs/var/lib/tapwatch/edge.db"
in_root dpkg --purge tapwatch-edge > /dev/null
[ ! -e "$rootfs/var/lib/tapwatch" ] && [ ! -e "$rootfs/etc/tapwatch/edge.toml" ] \
  || fail "a purge left the edge's state or configuration"
echo "check-packages: installed into Debian 12 (libraries found, users made, configuration root:<user> 0640 and accepted, kept when edited, purged)"
