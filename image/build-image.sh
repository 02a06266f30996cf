#!/usr/bin/env bash
# The appliance image for arm64 taps: a Debian 12 root (debootstrap, its second stage under
# qemu-user) with systemd, Debian's arm64 kernel, the tapwatch-edge package of image/out
# installed and enabled, systemd-networkd (eth0 management by DHCP, eth1 the mirror port, up
# with no address) and first-boot provisioning (tapwatch-provision.service: device id, mirror
# port, hub broker and credentials from the kernel command line or /boot/tapwatch.conf). Packed
# as an ext4 file system image, with the kernel and initrd beside it for a boot loader or
# `qemu-system-aarch64 -kernel` (image/boot-test.sh).
#
# Usage: sudo image/build-image.sh   (image/build.sh arm64 first)
# Out: image/out/tapwatch-arm64.ext4, tapwatch-arm64.vmlinuz, tapwatch-arm64.initrd
# The base root is cached as a tarball in TAPWATCH_ROOT_CACHE (default /var/cache/tapwatch-image).
# Needs debootstrap, qemu-user with binfmt (qemu-aarch64 enabled), e2fsprogs; root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
fail() { echo "build-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot)"
deb=$({ ls -t "$out"/tapwatch-edge_*_arm64.deb 2> /dev/null || true; } | head -n 1)
[ -n "$deb" ] || fail "no tapwatch-edge for arm64 in $out (image/build.sh arm64)"
cache=${TAPWATCH_ROOT_CACHE:-/var/cache/tapwatch-image}/bookworm-arm64-base.tar
root=$(mktemp -d /tmp/tapwatch-arm64.XXXXXX)
cleanup() {
  for m in proc sys dev; do umount "$root/$m" 2> /dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
if [ -s "$cache" ]; then
  tar -xf "$cache" -C "$root"
else
  grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || fail "qemu-aarch64 is not registered and enabled with binfmt_misc (apt-get install qemu-user-static binfmt-support; update-binfmts --enable qemu-aarch64)"
  debootstrap --arch=arm64 --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,linux-image-arm64,adduser,libpcap0.8,iproute2,kmod,ca-certificates,netbase \
    bookworm "$root" http://deb.debian.org/debian > /dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb
  mkdir -p "$(dirname "$cache")"
  tar -cf "$cache" -C "$root" .
fi
for m in proc sys dev; do mount --bind "/$m" "$root/$m"; done
in_root() { chroot "$root" "$@"; }

# The package, as apt would install it (its postinst makes the user; no systemd runs here, so
# the service is enabled below).
cp "$deb" "$root/tmp/edge.deb"
in_root dpkg -i /tmp/edge.deb > /dev/null
rm "$root/tmp/edge.deb"
install -D -m 0755 "$here/rootfs/provision" "$root/usr/lib/tapwatch/provision"
install -m 0644 "$here/rootfs/tapwatch-provision.service" "$root/lib/systemd/system/"
install -m 0644 "$here/rootfs/10-management.network" "$here/rootfs/20-capture.network" \
  "$root/etc/systemd/network/"
in_root systemctl enable systemd-networkd.service tapwatch-provision.service tapwatch-edge.service \
  > /dev/null 2>&1
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' > "$root/etc/fstab"
echo tapwatch > "$root/etc/hostname"
# Each tap makes its own machine id at first boot.
: > "$root/etc/machine-id"
for m in proc sys dev; do umount "$root/$m"; done

cp -L "$root/vmlinuz" "$out/tapwatch-arm64.vmlinuz"
cp -L "$root/initrd.img" "$out/tapwatch-arm64.initrd"
rm -f "$out/tapwatch-arm64.ext4"
size=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 256 ))
mkfs.ext4 -q -L tapwatch-root -d "$root" "$out/tapwatch-arm64.ext4" "${size}M"
echo "build-image: $out/tapwatch-arm64.ext4 (${size} MiB, $(du -m "$out/tapwatch-arm64.ext4" | cut -f1) MiB used), kernel and initrd beside it"
