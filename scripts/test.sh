#!/usr/bin/env bash
# README command 2: installs what the tests need, starts libvirt, builds berth
# and the guest runtime, then runs every test tier (unit, golden, integration).
#   scripts/test.sh [ctest args...]     e.g. scripts/test.sh -L unit
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ $(id -u) -eq 0 ]] || die "run as root (installs packages, talks to qemu:///system)"
install_packages
ensure_libvirt
build_berth
export BERTH_RUNTIME_DIR="$BERTH_BUILD/runtime"
build_runtime "$BERTH_RUNTIME_DIR"
export BERTH_DEBIAN_ROOTFS="$BERTH_BUILD/rootfs-debian"
"$BERTH_ROOT/scripts/build-debian-rootfs.sh" "$BERTH_DEBIAN_ROOTFS"
install_openapi_tools "$BERTH_BUILD/openapi-tools"
export BERTH_OPENAPI_TOOLS="$BERTH_BUILD/openapi-tools" BERTH_REQUIRE_OPENAPI_TOOLS=1
cd "$BERTH_BUILD"
ctest --output-on-failure --timeout 1500 "$@"
