#!/usr/bin/env bash
# A Docker engine of kind's own, beside (never instead of) the host's: Debian's docker.io
# 20.10 with its containerd, runc, tini and iptables, unpacked (`apt-get download` +
# `dpkg -x`, nothing installed system-wide) and started on its own socket, data root and
# exec root, with hack/kind/runc-capfix as the default runtime (see that file: privileged
# containers fail here without it).
#
# Usage: hack/kind/engine.sh up | down | env | cli
#   env: prints `export DOCKER_HOST=...` for kind and the docker CLI.
#   cli: prints the path of the docker CLI unpacked with the engine.
# Environment: KIND_ENGINE_DIR (unpacked packages, data root, log; default
#   <modelyard cache>/kind-engine), KIND_ENGINE_RUN (socket, pid, exec root; default
#   /run/modelyard-kind), KIND_ENGINE_SUBNET (subnet of the network `kind` that the nodes join,
#   default 10.250.0.0/24), KIND_ENGINE_BRIDGE / KIND_ENGINE_BRIDGE_CIDR (its default bridge,
#   myard-kind0 10.251.0.1/24).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${KIND_ENGINE_DIR:-${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}/kind-engine}"
run="${KIND_ENGINE_RUN:-/run/modelyard-kind}"
subnet="${KIND_ENGINE_SUBNET:-10.250.0.0/24}"
sock="$run/docker.sock"
# Its default bridge: any name but docker0, and an address outside that subnet.
bridge="${KIND_ENGINE_BRIDGE:-myard-kind0}"
bridge_cidr="${KIND_ENGINE_BRIDGE_CIDR:-10.251.0.1/24}"
log() { echo "[$(date -u +%T)] $*" >&2; }
docker_cli() { DOCKER_HOST="unix://$sock" "$dir/root/usr/bin/docker" "$@"; }

unpack() {
  [[ -x "$dir/root/usr/sbin/dockerd" && -x "$dir/root/usr/sbin/xtables-legacy-multi" ]] && return
  log "unpacking Debian's docker.io, containerd, runc, tini, iptables into $dir/root"
  mkdir -p "$dir/debs" "$dir/root"
  (cd "$dir/debs" && apt-get download docker.io containerd runc tini iptables libip4tc2 libip6tc2 \
    libxtables12 libnftnl11 libnetfilter-conntrack3 libnfnetlink0 libmnl0 >/dev/null 2>&1)
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
}

# dockerd runs `iptables` inside every container's network namespace for its embedded DNS
# (127.0.0.11), even with --iptables=false; kind's nodes resolve each other through it.
# These wrappers run the unpacked iptables (legacy, like kind's nodes here).
iptables_wrappers() {
  mkdir -p "$dir/iptables"
  local lib="$dir/root/usr/lib/x86_64-linux-gnu" n
  for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s XTABLES_LIBDIR=%s/xtables exec %s %s "$@"\n' \
      "$lib" "$lib" "$dir/root/usr/sbin/xtables-legacy-multi" "$n" >"$dir/iptables/$n"
    chmod +x "$dir/iptables/$n"
  done
}

ours() { # pid: is it our dockerd?
  [[ "$(readlink "/proc/$1/exe" 2>/dev/null)" == "$dir/root/usr/sbin/dockerd" ]]
}

case "${1:-}" in
  up)
    if docker_cli info >/dev/null 2>&1; then log "engine already up ($sock)"; exit 0; fi
    unpack
    iptables_wrappers
    mkdir -p "$run" "$dir/data"
    echo '{}' >"$dir/daemon.json" # not /etc/docker/daemon.json, which belongs to the host's engine
    # --iptables=false and a default bridge of its own: it never touches the host's firewall
    # or docker0. dockerd deletes the interface docker0 at start-up when run with
    # --bridge=none, and when run with --default-address-pool after an earlier start: so no
    # pool, and the network `kind` (which kind joins when it exists) is made here instead.
    if ! ip link show "$bridge" >/dev/null 2>&1; then
      ip link add "$bridge" type bridge
      ip addr add "$bridge_cidr" dev "$bridge"
    fi
    ip link set "$bridge" up
    PATH="$dir/iptables:$dir/root/usr/bin:$dir/root/usr/sbin:$PATH" setsid "$dir/root/usr/sbin/dockerd" \
      --config-file "$dir/daemon.json" -H "unix://$sock" --data-root "$dir/data" \
      --exec-root "$run/exec" --pidfile "$run/docker.pid" \
      --iptables=false --ip6tables=false --ip-masq=false --bridge="$bridge" \
      --add-runtime "capfix=$here/runc-capfix" --default-runtime capfix \
      --userland-proxy-path "$dir/root/usr/sbin/docker-proxy" \
      >>"$dir/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 60); do docker_cli info >/dev/null 2>&1 && break; sleep 0.5; done
    docker_cli info >/dev/null 2>&1 || { tail -n 20 "$dir/dockerd.log" >&2; exit 1; }
    docker_cli network inspect kind >/dev/null 2>&1 ||
      docker_cli network create --driver bridge --subnet "$subnet" \
        --opt com.docker.network.bridge.enable_ip_masquerade=true kind >/dev/null
    log "engine up: export DOCKER_HOST=unix://$sock"
    ;;
  down)
    pid="$(cat "$run/docker.pid" 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! ours "$pid"; then log "engine not running"; exit 0; fi
    kill "$pid"
    for _ in $(seq 40); do ours "$pid" || break; sleep 0.5; done
    if ours "$pid"; then kill -9 "$pid"; fi
    if ip link show "$bridge" >/dev/null 2>&1; then ip link delete "$bridge"; fi
    log "engine stopped"
    ;;
  env) echo "export DOCKER_HOST=unix://$sock" ;;
  cli) echo "$dir/root/usr/bin/docker" ;;
  *) echo "usage: $0 up | down | env | cli" >&2; exit 2 ;;
esac
