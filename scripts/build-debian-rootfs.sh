#!/usr/bin/env bash
# Builds a minimal Debian 12 root filesystem folder with python3 (debootstrap,
# from Debian's archive), for the tests that prove any root filesystem works.
#   scripts/build-debian-rootfs.sh OUT_DIR      (skipped when OUT_DIR/.complete exists)
set -euo pipefail
OUT="${1:?usage: $0 OUT_DIR}"
MIRROR="${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if [[ -f "$OUT/.complete" ]]; then
  echo "debian rootfs up to date: $OUT" >&2
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
debootstrap --variant=minbase --include=python3 bookworm "$OUT.tmp" "$MIRROR" >"$OUT.tmp.log" 2>&1 ||
  { tail -20 "$OUT.tmp.log" >&2; exit 1; }
rm -rf "$OUT.tmp/var/cache/apt/archives/"*.deb "$OUT"
mv "$OUT.tmp" "$OUT"
rm -f "$OUT.tmp.log"
touch "$OUT/.complete"
echo "debian rootfs built: $OUT" >&2
