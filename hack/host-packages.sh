#!/usr/bin/env bash
# Installs the Debian packages that the real node and the images need, when missing, and
# starts the Docker engine when it does not answer. Debian (or Ubuntu) and root only.
#
#   docker.io        builds the images (hack/images.sh); its daemon is started here
#   debootstrap      makes the local base image (hack/base-image.sh)
#   runc, iptables, iproute2, socat     the real node (hack/node.sh)
#   busybox-static, gcc, libc6-dev      the node's local images (hack/node-images.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(docker.io debootstrap runc iptables iproute2 socat busybox-static gcc libc6-dev)
DOCKERD_LOG="${MODELYARD_DOCKERD_LOG:-/var/log/modelyard-dockerd.log}"

[[ "$(uname -s)" == Linux ]] || die "the real node needs Linux (use the kind path elsewhere)"
[[ "$(id -u)" -eq 0 ]] || die "installing packages and running the real node need root"
command -v dpkg-query >/dev/null || die "no dpkg: install ${PACKAGES[*]} with this system's tools"

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's service units may not start (no systemd in a container): dockerd is
  # started below either way.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $DOCKERD_LOG)"
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s (see $DOCKERD_LOG)"
fi
log "host packages present; Docker engine answers"
