# Shared helpers for berth's scripts. Source it; do not run it.
BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BERTH_BUILD="${BERTH_BUILD:-$BERTH_ROOT/build}"

log() { echo "[berth] $*" >&2; }
die() { echo "[berth] error: $*" >&2; exit 1; }

# Debian packages berth builds, runs and tests with. Keep README's list in sync.
BERTH_PACKAGES=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  libmicrohttpd-dev libpugixml-dev nlohmann-json3-dev libsqlite3-dev sqlite3
  libssl-dev libspdlog-dev libfmt-dev libcli11-dev libcurl4-openssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  e2fsprogs busybox-static cpio kmod iproute2 procps debootstrap
  # guest networks: libvirt runs dnsmasq for DHCP/DNS and iptables for NAT and nwfilters
  dnsmasq-base iptables
  # cloud-init NoCloud seeds for disk-boot instances (berthd builds the ISO)
  genisoimage
  # tests only: a bootable test image (SYSLINUX on a FAT disk, built without loop mounts)
  syslinux syslinux-common mtools dosfstools
  # benchmarks only: HTTP load generator (bench/gateway.cc)
  wrk
)
# Tests only: Node.js runs the external OpenAPI validator (npm, see
# install_openapi_tools). Installed only when no node/npm is on the PATH, so a
# Node.js from elsewhere (which ships its own npm) is left alone.
BERTH_NODE_PACKAGES=(nodejs npm)

install_packages() {
  local missing=()
  for p in "${BERTH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The kernel package for the guest runtime is downloaded, never installed;
  # apt needs package lists to find it.
  if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt-get update -q >/dev/null
  fi
}

# install_openapi_tools DIR: the npm packages of tests/integration/openapi/
# package.json (an OpenAPI validator and Ajv) in DIR/node_modules, for
# tests/integration/openapi_test.cc. Idempotent: skipped when DIR already has
# the same package.json and its packages.
install_openapi_tools() {
  local dir=$1 manifest="$BERTH_ROOT/tests/integration/openapi/package.json"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing: ${BERTH_NODE_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${BERTH_NODE_PACKAGES[@]}" >/dev/null
  fi
  if cmp -s "$manifest" "$dir/package.json" && [[ -d "$dir/node_modules/@seriousme/openapi-schema-validator" ]] &&
    [[ -d "$dir/node_modules/ajv" ]]; then
    return 0
  fi
  log "installing the OpenAPI validator (npm) into $dir"
  mkdir -p "$dir"
  cp "$manifest" "$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null) || die "npm install in $dir failed"
}

# Starts virtlogd and libvirtd when they are not running (no systemd here).
# Never stops a daemon it did not start.
ensure_libvirt() {
  # Without udev, /dev/kvm stays root:root 0600. libvirt then finds KVM
  # "enabled when probing but not available now" for the qemu user and
  # re-probes QEMU on every call (seconds each). Debian's udev rule gives it
  # group kvm, mode 0660; do the same.
  if [[ -c /dev/kvm ]] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
  pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
  pgrep -x libvirtd >/dev/null || { log "starting libvirtd"; libvirtd -d; }
  local i
  for i in $(seq 1 60); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "libvirtd does not answer on qemu:///system"
}

build_berth() {
  cmake -S "$BERTH_ROOT" -B "$BERTH_BUILD" -G Ninja -DCMAKE_BUILD_TYPE="${BERTH_BUILD_TYPE:-RelWithDebInfo}" \
    ${BERTH_CMAKE_ARGS:-} >/dev/null
  ninja -C "$BERTH_BUILD"
}

# build_runtime OUT_DIR: kernel + initramfs with the agent, skipped when up to date.
build_runtime() {
  "$BERTH_ROOT/scripts/build-runtime.sh" "$BERTH_BUILD/guest/berth-agent" "$1" "$BERTH_BUILD/runtime-cache"
}
