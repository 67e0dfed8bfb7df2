#!/usr/bin/env bash
# Builds the berth guest runtime: a kernel (Debian's linux-image-cloud-amd64)
# and an initramfs whose /init is the berth guest agent, plus a minimal
# busybox root filesystem directory for tests and examples.
#
#   scripts/build-runtime.sh AGENT_BINARY OUT_DIR [CACHE_DIR]
#
# Outputs in OUT_DIR (world-readable, QEMU runs as libvirt-qemu):
#   vmlinuz, initramfs.cpio.gz, manifest.json, rootfs-busybox/
# CACHE_DIR (default OUT_DIR/../cache) keeps the downloaded kernel package.
#
# Idempotent: the inputs (agent binary, this script, kernel package and
# version, busybox) are fingerprinted; when OUT_DIR/manifest.json records the
# same fingerprint and the outputs still match their recorded sha256, nothing
# is rebuilt. Environment: BERTH_KERNEL_PACKAGE overrides the kernel package
# (default: what linux-image-cloud-amd64 depends on).
set -euo pipefail
umask 022

usage() {
  echo "usage: $0 AGENT_BINARY OUT_DIR [CACHE_DIR]" >&2
  exit 2
}
[[ $# -ge 2 && $# -le 3 ]] || usage

log() { echo "build-runtime: $*" >&2; }
die() {
  echo "build-runtime: error: $*" >&2
  exit 1
}

abspath() { (cd "$(dirname "$1")" && echo "$(pwd -P)/$(basename "$1")"); }

AGENT="$(abspath "$1")"
mkdir -p "$2"
OUT_DIR="$(cd "$2" && pwd -P)"
CACHE_DIR="${3:-$OUT_DIR/../cache}"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd -P)"
SCRIPT="$(abspath "${BASH_SOURCE[0]}")"
BUSYBOX=/bin/busybox
META_PACKAGE=linux-image-cloud-amd64

# Kernel modules for the initramfs, in load order (the agent has the same
# list). Optional ones may be missing or built in.
REQUIRED_MODULES=(virtio_ring virtio virtio_pci virtio_blk virtio_console)
OPTIONAL_MODULES=(virtio_pci_modern_dev virtio_pci_legacy_dev virtio_rng)
# Guest networking: loaded by the agent only when an execution has a NIC
# (guest/agent/network.cc); af_packet is udhcpc's raw socket.
NET_MODULES=(failover net_failover virtio_net af_packet)

[[ $(id -u) -eq 0 ]] || die "must run as root (mknod of /dev/console in the initramfs)"
[[ -f "$AGENT" && -x "$AGENT" ]] || die "agent binary '$AGENT' is missing or not executable"
if readelf -l "$AGENT" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  die "agent binary '$AGENT' is dynamically linked; it must be static (it is /init)"
fi
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX not found (apt-get install busybox-static)"
if readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi
for tool in apt-cache apt-get dpkg-deb cpio gzip sha256sum flock; do
  command -v "$tool" >/dev/null || die "'$tool' is required"
done

# One build at a time per OUT_DIR.
exec 9>"$OUT_DIR/.build.lock"
flock 9

sha256() { sha256sum "$1" | cut -d' ' -f1; }
filesize() { stat -c %s "$1"; }

# ---- the kernel package ----
kernel_package() {
  if [[ -n "${BERTH_KERNEL_PACKAGE:-}" ]]; then
    echo "$BERTH_KERNEL_PACKAGE"
    return
  fi
  apt-cache depends "$META_PACKAGE" 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
KPKG="$(kernel_package)"
if [[ -z "$KPKG" ]]; then
  log "apt-cache does not know $META_PACKAGE; running apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  KPKG="$(kernel_package)"
fi
[[ -n "$KPKG" ]] || die "cannot resolve the kernel package behind $META_PACKAGE"
KPKG_VERSION="$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '/^Version:/ { print $2; exit }')"
[[ -n "$KPKG_VERSION" ]] || die "apt-cache has no version for $KPKG"

AGENT_SHA="$(sha256 "$AGENT")"
AGENT_VERSION="$("$AGENT" --version 2>/dev/null | awk '{ print $2; exit }')" || true
[[ -n "$AGENT_VERSION" ]] || AGENT_VERSION=unknown
FINGERPRINT="$(printf '%s\n' "agent=$AGENT_SHA" "script=$(sha256 "$SCRIPT")" \
  "kernel=$KPKG=$KPKG_VERSION" "busybox=$(sha256 "$BUSYBOX")" | sha256sum | cut -d' ' -f1)"

# ---- up to date? ----
MANIFEST="$OUT_DIR/manifest.json"
manifest_field() {  # the manifest is written by this script, one field per line
  sed -n "s/^ *\"$1\": \"\\([^\"]*\\)\".*/\\1/p" "$MANIFEST" | head -n1
}
manifest_file_sha() {
  sed -n "s/^ *\"$1\": {\"sha256\": \"\\([0-9a-f]*\\)\".*/\\1/p" "$MANIFEST" | head -n1
}
up_to_date() {
  [[ -f "$MANIFEST" ]] || return 1
  [[ "$(manifest_field fingerprint)" == "$FINGERPRINT" ]] || return 1
  local f
  for f in vmlinuz initramfs.cpio.gz; do
    [[ -f "$OUT_DIR/$f" ]] || return 1
    [[ "$(manifest_file_sha "$f")" == "$(sha256 "$OUT_DIR/$f")" ]] || return 1
  done
  [[ -x "$OUT_DIR/rootfs-busybox/bin/busybox" ]] || return 1
}
if up_to_date; then
  echo "runtime up to date ($OUT_DIR, $KPKG $KPKG_VERSION, agent $AGENT_VERSION)"
  exit 0
fi

WORK="$(mktemp -d "$OUT_DIR/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ---- download + extract the kernel ----
DEB=""
for cand in "$CACHE_DIR/${KPKG}"_*.deb; do
  [[ -f "$cand" ]] || continue
  if [[ "$(dpkg-deb -f "$cand" Version 2>/dev/null)" == "$KPKG_VERSION" ]]; then
    DEB="$cand"
    break
  fi
done
if [[ -z "$DEB" ]]; then
  log "downloading $KPKG $KPKG_VERSION into $CACHE_DIR"
  # apt-get download drops privileges to _apt: give it a directory it can write.
  DL="$(mktemp -d "$CACHE_DIR/.download.XXXXXX")"
  if id _apt >/dev/null 2>&1; then chown _apt "$DL"; fi
  (cd "$DL" && apt-get download -q "$KPKG=$KPKG_VERSION" >&2) || {
    rm -rf "$DL"
    die "apt-get download $KPKG=$KPKG_VERSION failed"
  }
  for cand in "$DL"/*.deb; do
    mv "$cand" "$CACHE_DIR/"
    DEB="$CACHE_DIR/$(basename "$cand")"
  done
  rm -rf "$DL"
  [[ -n "$DEB" && -f "$DEB" ]] || die "apt-get download produced no .deb"
  chown root: "$DEB" 2>/dev/null || true
fi
log "extracting $(basename "$DEB")"
dpkg-deb -x "$DEB" "$WORK/kernel"
KVERS=("$WORK"/kernel/lib/modules/*)
[[ ${#KVERS[@]} -eq 1 && -d "${KVERS[0]}" ]] || die "expected exactly one lib/modules/<version> in $DEB"
KVER="$(basename "${KVERS[0]}")"
MODDIR="${KVERS[0]}"
VMLINUZ_SRC="$WORK/kernel/boot/vmlinuz-$KVER"
[[ -f "$VMLINUZ_SRC" ]] || die "no boot/vmlinuz-$KVER in $DEB"

# ---- initramfs staging ----
STAGE="$WORK/initramfs"
mkdir -p "$STAGE"/{dev,proc,sys,tmp,mnt/root,lib/modules,bin}
chmod 1777 "$STAGE/tmp"
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3
if command -v strip >/dev/null; then
  strip --strip-all -o "$STAGE/init" "$AGENT"
else
  cp "$AGENT" "$STAGE/init"
fi
chmod 755 "$STAGE/init"
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"

# Copies module $1 (uncompressing it) to lib/modules/$1.ko; returns 1 when
# the kernel has no such module file.
copy_module() {
  local name="$1" alt="${1//_/-}" f=""
  f="$(find "$MODDIR/kernel" \( -name "$name.ko*" -o -name "$alt.ko*" \) -print -quit)"
  [[ -n "$f" ]] || return 1
  local dst="$STAGE/lib/modules/$name.ko"
  case "$f" in
    *.ko) cp "$f" "$dst" ;;
    *.ko.xz) xz -dc "$f" >"$dst" ;;
    *.ko.zst) zstd -qdc "$f" >"$dst" ;;
    *.ko.gz) gzip -dc "$f" >"$dst" ;;
    *) die "unknown module format: $f" ;;
  esac
  chmod 644 "$dst"
}
builtin_module() {
  local name="$1" alt="${1//_/-}"
  [[ -f "$MODDIR/modules.builtin" ]] &&
    grep -Eq "/($name|$alt)\.ko$" "$MODDIR/modules.builtin"
}
for m in "${REQUIRED_MODULES[@]}"; do
  copy_module "$m" || builtin_module "$m" || die "kernel $KVER has no module $m (and it is not built in)"
done
for m in "${OPTIONAL_MODULES[@]}"; do
  copy_module "$m" || log "optional module $m not in kernel $KVER (skipped)"
done
for m in "${NET_MODULES[@]}"; do
  copy_module "$m" || builtin_module "$m" || die "kernel $KVER has no module $m (and it is not built in)"
done

# Reproducible archive: sorted names, fixed mtimes and owners, no gzip name/time.
find "$STAGE" -exec touch -h -d @0 {} +
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
  cpio --quiet -o -H newc --null --reproducible -R 0:0) | gzip -9 -n >"$WORK/initramfs.cpio.gz"
cp "$VMLINUZ_SRC" "$WORK/vmlinuz"

# ---- rootfs-busybox ----
ROOTFS="$WORK/rootfs-busybox"
mkdir -p "$ROOTFS"/{bin,etc,tmp,proc,sys,dev,root,usr/bin}
chmod 1777 "$ROOTFS/tmp"
chmod 700 "$ROOTFS/root"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
chmod 755 "$ROOTFS/bin/busybox"
while read -r applet; do
  [[ -n "$applet" && "$applet" != */* ]] || continue
  [[ -e "$ROOTFS/bin/$applet" || -L "$ROOTFS/bin/$applet" ]] && continue
  ln -s busybox "$ROOTFS/bin/$applet"
done < <("$BUSYBOX" --list)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOTFS/etc/hosts"
chmod 644 "$ROOTFS"/etc/*

# ---- install ----
chmod 644 "$WORK/vmlinuz" "$WORK/initramfs.cpio.gz"
mv -f "$WORK/vmlinuz" "$OUT_DIR/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUT_DIR/initramfs.cpio.gz"
rm -rf "$OUT_DIR/rootfs-busybox.old"
[[ -e "$OUT_DIR/rootfs-busybox" ]] && mv "$OUT_DIR/rootfs-busybox" "$OUT_DIR/rootfs-busybox.old"
mv "$ROOTFS" "$OUT_DIR/rootfs-busybox"
rm -rf "$OUT_DIR/rootfs-busybox.old"
chmod 755 "$OUT_DIR"

json_escape() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
{
  echo "{"
  echo "  \"kernel_package\": \"$(json_escape "$KPKG")\","
  echo "  \"kernel_package_version\": \"$(json_escape "$KPKG_VERSION")\","
  echo "  \"kernel_version\": \"$(json_escape "$KVER")\","
  echo "  \"agent_version\": \"$(json_escape "$AGENT_VERSION")\","
  echo "  \"agent_sha256\": \"$AGENT_SHA\","
  echo "  \"fingerprint\": \"$FINGERPRINT\","
  echo "  \"files\": {"
  echo "    \"vmlinuz\": {\"sha256\": \"$(sha256 "$OUT_DIR/vmlinuz")\", \"size\": $(filesize "$OUT_DIR/vmlinuz")},"
  echo "    \"initramfs.cpio.gz\": {\"sha256\": \"$(sha256 "$OUT_DIR/initramfs.cpio.gz")\", \"size\": $(filesize "$OUT_DIR/initramfs.cpio.gz")}"
  echo "  },"
  echo "  \"built_at\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
  echo "}"
} >"$WORK/manifest.json"
chmod 644 "$WORK/manifest.json"
mv -f "$WORK/manifest.json" "$MANIFEST"

# QEMU (libvirt-qemu) must be able to reach the files.
d="$OUT_DIR"
while [[ "$d" != "/" ]]; do
  if [[ "$(stat -c %A "$d" | cut -c10)" != [xt] ]]; then
    log "warning: $d is not world-traversable; QEMU (libvirt-qemu) will not be able to open the runtime"
    break
  fi
  d="$(dirname "$d")"
done

echo "runtime built in $OUT_DIR: kernel $KVER ($KPKG $KPKG_VERSION), agent $AGENT_VERSION," \
  "initramfs $(filesize "$OUT_DIR/initramfs.cpio.gz") bytes"
