#!/usr/bin/env bash
# Makes a base image without any container registry: a minimal Debian bookworm root filesystem
# (debootstrap, from a Debian mirror) with python3.11, python3-venv and ca-certificates,
# imported with `docker import`. hack/images.sh --base local uses it.
#
# Usage: hack/base-image.sh [IMAGE]   (default modelyard/base:bookworm-python3.11)
# Needs root, debootstrap and a running Docker engine. Environment: DEBIAN_MIRROR (default: the
# host's own bookworm mirror from its apt configuration), DOCKER.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

image="${1:-${MODELYARD_LOCAL_BASE:-modelyard/base:bookworm-python3.11}}"
docker="${DOCKER:-docker}"

# The first archive URI that apt on this host uses for the suite `bookworm` (deb822 .sources
# files first, then one-line sources.list entries): the mirror the host can reach.
host_mirror() {
  local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  awk 'BEGIN { RS = ""; FS = "\n" }
       { uri = ""; bookworm = 0
         for (i = 1; i <= NF; i++) {
           if ($i ~ /^URIs:/) { split($i, w, /[ \t]+/); uri = w[2] }
           if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) bookworm = 1
         }
         if (uri != "" && bookworm) { print uri; exit } }' "${sources[@]}" 2>/dev/null | head -n1 |
    grep . && return
  awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i + 1) == "bookworm") print $i; break } }' \
    "${lists[@]}" 2>/dev/null | head -n1 | grep .
}
mirror="${DEBIAN_MIRROR:-$(host_mirror)}" ||
  die "no bookworm mirror in the host's apt configuration: set DEBIAN_MIRROR"

[[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
"$docker" info >/dev/null 2>&1 || die "the Docker engine does not answer"

root="$(mktemp -d /tmp/modelyard-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$SECONDS

log "debootstrap bookworm (minbase + python3) from $mirror into $root"
# passwd (useradd) is in minbase; python3-venv brings ensurepip's wheels for `python3 -m venv`.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2
  die "debootstrap failed (log: $root.log)"
}
rm -f "$root.log"

# What an image does not need: package caches and lists, docs, man pages, non-English locales.
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' -exec rm -rf {} + 2>/dev/null || true

log "importing as $image"
tar --numeric-owner -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.description=\"Debian bookworm minbase with python3 (debootstrap)\"" \
  - "$image" >/dev/null

bytes="$("$docker" image inspect --format '{{.Size}}' "$image")"
log "$image: $((bytes / 1000000)) MB, made in $((SECONDS - start))s"
"$docker" run --rm "$image" python3 --version >&2
