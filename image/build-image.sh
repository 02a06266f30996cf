#!/usr/bin/env bash
# The appliance image for arm64 taps: a disk image to write to the tap's disk or SD card.
#
#   GPT, 1 MiB aligned:
#     1  TAPWATCH   64 MiB   EFI system partition (FAT32): EFI/BOOT/BOOTAA64.EFI, GRUB built
#                            standalone (grub-mkstandalone), which finds the root by its label
#                            and reads /boot/grub/grub.cfg there; and the tap's provisioning
#                            file, tapwatch.conf, written from any computer before first boot
#     2  tapwatch-root       ext4, the Debian 12 root (partition type: Linux root arm64), grown
#                            to the end of the disk at first boot
#
# The root: debootstrap (its second stage under qemu-user) with systemd, Debian's arm64 kernel
# (booted through its /vmlinuz and /initrd.img links, which the kernel's packages keep pointing
# at the newest), the tapwatch-edge package of image/out installed and enabled,
# systemd-networkd (eth0 management by DHCP, eth1 the mirror port, up with no address) and
# first-boot provisioning (tapwatch-provision.service: device id, mirror port, hub broker and
# credentials from tapwatch.conf on the EFI partition or the kernel command line).
#
# Usage: sudo image/build-image.sh   (image/build.sh arm64 first)
# Out: image/out/tapwatch-arm64.img (raw disk image; boots on UEFI, e.g. `qemu-system-aarch64
# -M virt -bios QEMU_EFI.fd`: image/boot-test.sh)
# The base root is cached as a tarball in TAPWATCH_ROOT_CACHE (default /var/cache/tapwatch-image),
# keyed by its package list.
# Needs debootstrap, qemu-user with binfmt (qemu-aarch64 enabled), e2fsprogs, dosfstools,
# mtools, fdisk (sfdisk); root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
fail() { echo "build-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot)"
for tool in debootstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do
  command -v "$tool" > /dev/null || fail "needs $tool (apt-get install debootstrap e2fsprogs dosfstools mtools fdisk)"
done
deb=$({ ls -t "$out"/tapwatch-edge_*_arm64.deb 2> /dev/null || true; } | head -n 1)
[ -n "$deb" ] || fail "no tapwatch-edge for arm64 in $out (image/build.sh arm64)"
packages=systemd,systemd-sysv,udev,dbus,linux-image-arm64,adduser,libpcap0.8,iproute2,kmod,ca-certificates,netbase,e2fsprogs,dosfstools,fdisk,grub-efi-arm64-bin,grub-common
cache=${TAPWATCH_ROOT_CACHE:-/var/cache/tapwatch-image}/bookworm-arm64-$(printf '%s' "$packages" | sha256sum | cut -c1-12).tar
root=$(mktemp -d /tmp/tapwatch-arm64.XXXXXX)
work=$(mktemp -d /tmp/tapwatch-disk.XXXXXX)
cleanup() {
  for m in proc sys dev; do umount "$root/$m" 2> /dev/null || true; done
  rm -rf "$root" "$work"
}
trap cleanup EXIT
if [ -s "$cache" ]; then
  tar -xf "$cache" -C "$root"
else
  grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || fail "qemu-aarch64 is not registered and enabled with binfmt_misc (apt-get install qemu-user-static binfmt-support; update-binfmts --enable qemu-aarch64)"
  debootstrap --arch=arm64 --variant=minbase --include="$packages" \
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
install -D -m 0755 "$here/rootfs/grow-root" "$root/usr/lib/tapwatch/grow-root"
install -m 0644 "$here/rootfs/tapwatch-provision.service" "$here/rootfs/tapwatch-grow-root.service" \
  "$root/lib/systemd/system/"
install -m 0644 "$here/rootfs/10-management.network" "$here/rootfs/20-capture.network" \
  "$root/etc/systemd/network/"
in_root systemctl enable systemd-networkd.service tapwatch-grow-root.service \
  tapwatch-provision.service tapwatch-edge.service > /dev/null 2>&1
mkdir -p "$root/boot/efi"
cat > "$root/etc/fstab" << 'EOF'
LABEL=tapwatch-root  /          ext4  defaults,errors=remount-ro                      0 1
# The EFI partition: the boot loader and the tap's provisioning file (tapwatch.conf).
LABEL=TAPWATCH       /boot/efi  vfat  umask=0077,nofail,x-systemd.device-timeout=90s  0 2
EOF
echo tapwatch > "$root/etc/hostname"
# Each tap makes its own machine id at first boot.
: > "$root/etc/machine-id"

# The boot loader: GRUB for arm64 UEFI, standalone (its modules inside), with a first
# configuration that finds the root by label and hands over to the root's /boot/grub/grub.cfg,
# which a tap's owner may edit (kernel arguments) without rebuilding the loader.
cat > "$root/tmp/early.cfg" << 'EOF'
if search --no-floppy --label tapwatch-root --set=root; then
  set prefix=($root)/boot/grub
  configfile ($root)/boot/grub/grub.cfg
else
  echo "Tapwatch: no partition labelled tapwatch-root on this machine's disks"
fi
EOF
install -D -m 0644 "$here/rootfs/grub.cfg" "$root/boot/grub/grub.cfg"
in_root grub-mkstandalone -O arm64-efi -o /tmp/BOOTAA64.EFI \
  --modules="part_gpt ext2 fat search search_label configfile linux normal echo test" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=/tmp/early.cfg"
for m in proc sys dev; do umount "$root/$m"; done

# The partitions, made as files and laid into the disk image (no loop device needed).
esp_mib=64
mkfs.vfat -F 32 -n TAPWATCH -C "$work/esp.img" $((esp_mib * 1024)) > /dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$root/tmp/BOOTAA64.EFI" ::/EFI/BOOT/BOOTAA64.EFI
mcopy -i "$work/esp.img" "$here/rootfs/tapwatch.conf.example" ::/tapwatch.conf.example
rm -f "$root"/tmp/BOOTAA64.EFI "$root"/tmp/early.cfg
root_mib=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 256 ))
mkfs.ext4 -q -L tapwatch-root -d "$root" "$work/root.ext4" "${root_mib}M"
img=$out/tapwatch-arm64.img
rm -f "$img" "$out/tapwatch-arm64.ext4" "$out/tapwatch-arm64.vmlinuz" "$out/tapwatch-arm64.initrd"
# 1 MiB for the GPT, the partitions, 1 MiB for the backup GPT.
truncate -s $(( (1 + esp_mib + root_mib + 1) * 1024 * 1024 )) "$img"
sfdisk --quiet "$img" << EOF
label: gpt
unit: sectors
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="TAPWATCH"
start=$(( (1 + esp_mib) * 2048 )), size=$((root_mib * 2048)), type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, name="tapwatch-root"
EOF
dd if="$work/esp.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
echo "build-image: $img ($(( $(stat -c %s "$img") >> 20 )) MiB: EFI ${esp_mib} MiB, root ${root_mib} MiB; $(du -m "$img" | cut -f1) MiB used)"
