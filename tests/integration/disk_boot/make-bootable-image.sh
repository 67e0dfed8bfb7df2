#!/usr/bin/env bash
# Builds a tiny image that boots from disk on its own: a FAT "superfloppy"
# with SYSLINUX as its bootloader, the runtime's kernel, and an initramfs
# whose /init (a shell script; the runtime's busybox and virtio modules come
# along) prints every "#berth-test" line of its cloud-init seed (the second
# disk, label cidata) to the console. If the user-data says
# "#berth-test stay", it keeps running; otherwise it powers off.
#   make-bootable-image.sh RUNTIME_DIR OUT.qcow2
set -euo pipefail
RUNTIME="$1"; OUT="$2"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/ov"
cat > "$WORK/ov/init" <<'INIT'
#!/bin/sh
export PATH=/bin
busybox mkdir -p /proc /sys /dev
busybox mount -t proc proc /proc; busybox mount -t sysfs sys /sys; busybox mount -t devtmpfs dev /dev
for m in virtio_pci_modern_dev virtio_pci_legacy_dev virtio_ring virtio virtio_pci virtio_blk; do
  busybox insmod /lib/modules/$m.ko 2>/dev/null
done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; busybox sleep 0.5; done
echo "disk-boot: own init running"
UD="$(busybox dd if=/dev/vdb bs=64k 2>/dev/null | busybox strings | busybox grep '^#berth-test ')"
echo "$UD" | while read -r line; do echo "disk-boot: user-data line: $line"; done
case "$UD" in
  *"#berth-test stay"*) echo "disk-boot: staying up"; while true; do busybox sleep 1; done ;;
esac
echo "disk-boot: powering off"
busybox poweroff -f
INIT
chmod +x "$WORK/ov/init"
(cd "$WORK/ov" && find . | cpio -o -H newc 2>/dev/null | gzip) > "$WORK/extra.gz"
# Concatenated initramfs archives: the later /init replaces the agent.
cat "$RUNTIME/initramfs.cpio.gz" "$WORK/extra.gz" > "$WORK/initrd"
truncate -s 48M "$WORK/disk.img"
mkfs.vfat -n BOOT "$WORK/disk.img" >/dev/null
syslinux --install "$WORK/disk.img"
printf 'DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd console=ttyS0 quiet panic=-1\n' > "$WORK/syslinux.cfg"
mcopy -i "$WORK/disk.img" "$RUNTIME/vmlinuz" ::vmlinuz
mcopy -i "$WORK/disk.img" "$WORK/initrd" ::initrd
mcopy -i "$WORK/disk.img" "$WORK/syslinux.cfg" ::syslinux.cfg
qemu-img convert -O qcow2 "$WORK/disk.img" "$OUT"
