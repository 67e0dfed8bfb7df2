#!/usr/bin/env bash
# Several libvirt hosts on this machine, for multinode tests.
#
#   tests/multinode/hosts.sh up N STATE_DIR    start N hosts, print one URI per line
#   tests/multinode/hosts.sh kill I STATE_DIR  kill -9 host I's libvirtd (a failure test)
#   tests/multinode/hosts.sh restart I STATE_DIR  start host I's libvirtd again (after kill)
#   tests/multinode/hosts.sh down STATE_DIR    destroy their guests, stop them, remove all
#
# Host i (1..N) is a libvirtd in its own network namespace (berth-h<i>-<tag>,
# address 10.250.<net>.(10+i) on a bridge in the root namespace, which gets
# .1) and its own mount namespace, where STATE_DIR/h<i>/{etc,run,lib,log,cache}
# are bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt. It listens on TCP only inside its
# namespace; clients use qemu+tcp://10.250.<net>.(10+i)/system. `down` stops
# only the processes `up` started (their PIDs are in STATE_DIR) and the
# guests of those hosts. See ../shared/notes/multihost.md for why each step.
set -euo pipefail

die() { echo "hosts.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

cmd="${1:-}"
case "$cmd" in
  up)
    n="${2:?usage: $0 up N STATE_DIR}"
    state="${3:?usage: $0 up N STATE_DIR}"
    ;;
  down)
    state="${2:?usage: $0 down STATE_DIR}"
    ;;
  kill|restart)
    n="${2:?usage: $0 $cmd I STATE_DIR}"
    state="${3:?usage: $0 $cmd I STATE_DIR}"
    ;;
  *) die "usage: $0 up N STATE_DIR | down STATE_DIR | kill I STATE_DIR | restart I STATE_DIR" ;;
esac

down() {
  local state="$1"
  [[ -f "$state/hosts" ]] || return 0
  local tag net
  tag=$(cat "$state/tag")
  net=$(cat "$state/net")
  while read -r i pid; do
    local uri="qemu+tcp://10.250.$net.$((10 + i))/system"
    # Guests first: QEMU outlives a killed libvirtd.
    for d in $(timeout 10 virsh -q -c "$uri" list --name 2>/dev/null); do
      timeout 20 virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    done
    # Guests of a libvirtd that was killed (failure tests) are orphans: end them by their pid files.
    for pf in "$state/h$i/run/qemu/"*.pid; do
      [[ -f $pf ]] || continue
      qpid=$(cat "$pf" 2>/dev/null || true)
      [[ -n $qpid ]] && grep -q qemu "/proc/$qpid/comm" 2>/dev/null && kill -9 "$qpid" 2>/dev/null || true
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns del "berth-h$i-$tag" 2>/dev/null || true
    ip link del "bv$i-$tag" 2>/dev/null || true
  done <"$state/hosts"
  ip link del "bbr-$tag" 2>/dev/null || true
  rm -rf "$state"
}

# Starts host $1's libvirtd in namespace $2 with state folder $3 (in the
# background: $! is its PID). Its mounts live in a fresh mount namespace.
start_libvirtd() {
  local i="$1" ns="$2" h="$3"
  nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private sh -c "
    mount --bind '$h/etc' /etc/libvirt &&
    mount --bind '$h/run' /run/libvirt &&
    mount --bind '$h/lib' /var/lib/libvirt &&
    mount --bind '$h/log' /var/log/libvirt &&
    mount --bind '$h/cache' /var/cache/libvirt &&
    hostname 'berth-h$i' &&
    exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid" \
    >"$h/libvirtd.out" 2>&1 &
}

# Waits until host $1 (PID $2) answers on its own unix socket.
wait_ready() {
  local i="$1" pid="$2" ok=0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$state/h$i/libvirtd.out" >&2; die "libvirtd of host $i exited"; }
    if [[ "$(cat "$state/h$i/run/libvirtd.pid" 2>/dev/null)" == "$pid" ]] &&
      virsh -q -c "qemu+unix:///system?socket=$state/h$i/run/libvirt-sock" version >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || die "libvirtd of host $i did not become ready"
}

if [[ $cmd == down ]]; then
  down "$state"
  exit 0
fi
if [[ $cmd == kill ]]; then
  # here $n is the host number
  while read -r i pid; do
    [[ $i == "$n" ]] && kill -9 "$pid"
  done <"$state/hosts"
  exit 0
fi
if [[ $cmd == restart ]]; then
  # here $n is the host number; its namespace and folders are still there.
  tag=$(cat "$state/tag")
  old=$(awk -v i="$n" '$1 == i {print $2}' "$state/hosts")
  [[ -n $old ]] || die "no host $n in $state"
  for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$old" 2>/dev/null || die "libvirtd of host $n (pid $old) still runs; kill it first"
  rm -f "$state/h$n/run/libvirtd.pid"
  start_libvirtd "$n" "berth-h$n-$tag" "$state/h$n"
  pid=$!
  awk -v i="$n" -v p="$pid" '$1 == i {$2 = p} {print}' "$state/hosts" >"$state/hosts.new"
  mv "$state/hosts.new" "$state/hosts"
  wait_ready "$n" "$pid"
  exit 0
fi

[[ $n -ge 1 && $n -le 8 ]] || die "N must be 1..8"
[[ ! -e "$state/hosts" ]] || die "$state already holds hosts; run down first"
mkdir -p "$state"
chmod 755 "$state"
tag=$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
net=$((200 + $(od -An -N1 -tu1 /dev/urandom) % 50))  # 10.250.200-249.0/24
echo "$tag" >"$state/tag"
echo "$net" >"$state/net"
: >"$state/hosts"
trap 'down "$state"' ERR

ip link add "bbr-$tag" type bridge
ip addr add "10.250.$net.1/24" dev "bbr-$tag"
ip link set "bbr-$tag" up

for i in $(seq 1 "$n"); do
  ns="berth-h$i-$tag"
  addr="10.250.$net.$((10 + i))"
  ip netns add "$ns"
  ip link add "bv$i-$tag" type veth peer name "eth0" netns "$ns"
  ip link set "bv$i-$tag" master "bbr-$tag" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up

  h="$state/h$i"
  mkdir -p "$h"/{etc,run,lib,log,cache}
  chmod 755 "$h" "$h"/lib
  cp -a /etc/libvirt/. "$h/etc/"
  # No pools, domains or networks of the root host inside this one.
  rm -rf "$h/etc/storage" "$h/etc/qemu/networks/autostart" "$h/etc/qemu/"*.xml "$h/etc/qemu/autostart"
  mkdir -p "$h/etc/storage"
  cat >>"$h/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "$addr"
auth_tcp = "none"
auth_unix_rw = "none"
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
  cat >>"$h/etc/qemu.conf" <<CONF
stdio_handler = "file"
security_driver = "none"
CONF
  # The QEMU capability probe takes seconds; reuse the root host's cache.
  if [[ -d /var/cache/libvirt/qemu ]]; then
    mkdir -p "$h/cache/qemu"
    cp -a /var/cache/libvirt/qemu/. "$h/cache/qemu/" 2>/dev/null || true
  fi
  start_libvirtd "$i" "$ns" "$h"
  echo "$i $!" >>"$state/hosts"
done

# Ready when each host's own unix socket answers and belongs to its PID.
while read -r i pid; do
  wait_ready "$i" "$pid"
  echo "qemu+tcp://10.250.$net.$((10 + i))/system"
done <"$state/hosts"
