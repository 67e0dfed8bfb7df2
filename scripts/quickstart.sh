#!/usr/bin/env bash
# README command 1: sets up berth on this machine with the embedded default
# (local node qemu:///system, SQLite under /var/lib/berth, HTTP on
# 127.0.0.1:8470), starts berthd in the background, then runs a demo: upload
# a busybox root filesystem image, register a function, invoke it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ $(id -u) -eq 0 ]] || die "run as root (installs packages, talks to qemu:///system)"
DATA=/var/lib/berth
PORT="${BERTH_PORT:-8470}"
API="http://127.0.0.1:$PORT"

install_packages
ensure_libvirt
build_berth
build_runtime "$DATA/runtime"

if [[ -f $DATA/berthd.pid ]] && kill -0 "$(cat $DATA/berthd.pid)" 2>/dev/null; then
  log "berthd already running (pid $(cat $DATA/berthd.pid))"
else
  log "starting berthd (log: $DATA/berthd.log)"
  nohup "$BERTH_BUILD/daemon/berthd" --data-dir "$DATA" --port "$PORT" >>"$DATA/berthd.log" 2>&1 &
  echo $! >"$DATA/berthd.pid"
  for _ in $(seq 1 600); do
    curl -sf "$API/v1/health" >/dev/null 2>&1 && break
    kill -0 "$(cat $DATA/berthd.pid)" 2>/dev/null || { tail -5 "$DATA/berthd.log" >&2; die "berthd exited"; }
    sleep 0.2
  done
fi
curl -sf "$API/v1/health" >/dev/null || die "berthd does not answer on $API"
# Every call but /v1/health carries the admin token berthd wrote on first start.
[[ -r $DATA/admin.token ]] || die "no admin token in $DATA/admin.token"
AUTH="Authorization: Bearer $(cat "$DATA/admin.token")"

log "building the demo root filesystem image"
mkdir -p "$DATA/demo"
"$BERTH_BUILD/cli/berth" image build "$DATA/runtime/rootfs-busybox" -o "$DATA/demo/busybox.qcow2" >/dev/null
log "uploading it"
IMAGE=$(curl -sf -H "$AUTH" --data-binary @"$DATA/demo/busybox.qcow2" -H 'Content-Type: application/octet-stream' \
  "$API/v1/images?name=busybox" | sed -n 's/.*"id":"\([0-9a-f]\{64\}\)".*/\1/p')
[[ -n $IMAGE ]] || die "image upload failed"
log "registering function 'hello'"
SPEC="{\"image\":\"$IMAGE\",\"entrypoint\":[\"/bin/sh\",\"-c\",\"echo hello from \$(uname -r) in a berth VM; cat /proc/cpuinfo | grep -m1 'model name'\"],\"memory_mib\":256,\"timeout_ms\":30000}"
curl -s -H "$AUTH" -X PUT -d "$SPEC" "$API/v1/functions/hello" | grep -q '"name":"hello"' ||
  curl -sf -H "$AUTH" -X POST -d "{\"name\":\"hello\",${SPEC#\{}" "$API/v1/functions" >/dev/null
log "invoking it: POST $API/v1/functions/hello/invoke"
curl -s -H "$AUTH" -X POST "$API/v1/functions/hello/invoke" -d '{}'
echo
log "berthd keeps running on $API (pid $(cat $DATA/berthd.pid)); stop it with: kill \$(cat $DATA/berthd.pid)"
log "admin token: $DATA/admin.token (send it as: -H \"Authorization: Bearer \$(cat $DATA/admin.token)\")"
