#!/usr/bin/env bash
# Makes the local node's own images and loads images into its containerd (namespace k8s.io).
# No image registry is reachable from this machine, so nothing is pulled:
#   modelyard.local/pause:3.10    the sandbox image: hack/node/pause.c, built with gcc -static
#   modelyard.local/busybox:1.35  Debian's busybox-static with a link per applet
# Both are packed by hack/node/oci_archive.py (reproducible: the same inputs give the same
# digest) into $NODE_DIR/images/*.tar.
#
# Usage: hack/node-images.sh build            # make the archives only (no containerd needed)
#        hack/node-images.sh load             # make them and import them into the node
#        hack/node-images.sh docker IMAGE...  # copy images from the Docker engine (docker save)
#        hack/node-images.sh archive FILE...  # import OCI / docker-save archives
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/node/common.sh"

IMAGES_DIR="$NODE_DIR/images"

ctr_() {
  "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_ADDRESS" --namespace "$CONTAINERD_NAMESPACE" "$@"
}

build_pause() {
  local root="$IMAGES_DIR/pause-root"
  command -v gcc >/dev/null || die "gcc is needed to build the pause image (apt-get install gcc libc6-dev)"
  rm -rf "$root"
  mkdir -p "$root"
  gcc -static -Os -s -Wall -Werror -o "$root/pause" "$HACK_DIR/node/pause.c" ||
    die "gcc -static failed (the static C library comes with libc6-dev)"
  python3 "$HACK_DIR/node/oci_archive.py" --root "$root" --name "$PAUSE_IMAGE" \
    --entrypoint /pause -o "$IMAGES_DIR/pause.tar" >&2
  rm -rf "$root"
}

build_busybox() {
  local root="$IMAGES_DIR/busybox-root" bb a
  bb="$(command -v busybox || true)"
  # ldd fails on a static executable ("not a dynamic executable").
  if [[ -z "$bb" ]] || ldd "$bb" >/dev/null 2>&1; then
    die "a static busybox is needed (apt-get install busybox-static)"
  fi
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  for a in $("$bb" --list); do
    [[ "$a" == busybox ]] || ln -s busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  python3 "$HACK_DIR/node/oci_archive.py" --root "$root" --name "$BUSYBOX_IMAGE" \
    --cmd /bin/sh -o "$IMAGES_DIR/busybox.tar" >&2
  rm -rf "$root"
}

build() {
  mkdir -p "$IMAGES_DIR"
  build_pause
  build_busybox
}

import_archive() {
  local file="$1"
  [[ -S "$CONTAINERD_ADDRESS" ]] || die "the node's containerd is not running ($CONTAINERD_ADDRESS): hack/node.sh up"
  # Unpacked for the CRI's snapshotter (overlayfs) right away, so the kubelet
  # finds the image ready and never tries a pull.
  ctr_ images import --snapshotter overlayfs --label io.cri-containerd.image=managed \
    --platform "linux/$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')" "$file" >&2
}

pin() { ctr_ images label "$1" io.cri-containerd.pinned=pinned >/dev/null; }

node_bins
case "${1:-}" in
  build) build ;;
  load)
    build
    import_archive "$IMAGES_DIR/pause.tar"
    import_archive "$IMAGES_DIR/busybox.tar"
    # Nothing imported can be pulled again: pinned, the kubelet never removes them, not even
    # to reclaim disk space under pressure (it did, once, with the disk nearly full).
    pin "$PAUSE_IMAGE"
    pin "$BUSYBOX_IMAGE"
    ;;
  docker)
    shift
    (($#)) || die "usage: $0 docker IMAGE..."
    mkdir -p "$IMAGES_DIR"
    for image in "$@"; do
      # A saved 6 GB image takes minutes to copy: skip it when the node already holds the
      # Docker image of the same id (what was imported last is noted per name).
      id="$(docker image inspect -f '{{.Id}}' "$image")" || die "no image $image in Docker"
      note="$IMAGES_DIR/docker-ids/${image//[\/:]/_}"
      if [[ "$(cat "$note" 2>/dev/null)" == "$id" ]] && ctr_ images ls -q | grep -qxF "docker.io/$image"; then
        log "$image: the node has it ($id)"
        continue
      fi
      tmp="$IMAGES_DIR/docker-save.tar"
      log "docker save $image"
      docker save -o "$tmp" "$image"
      import_archive "$tmp"
      rm -f "$tmp"
      pin "docker.io/$image"
      # The image the name pointed to before keeps a reference by its id (the CRI's): drop
      # it, or every new build leaves 6 GB behind on the node.
      old="$(cat "$note" 2>/dev/null || true)"
      if [[ -n "$old" && "$old" != "$id" ]]; then
        "$CRICTL_BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_ADDRESS" rmi "$old" >/dev/null 2>&1 || true
      fi
      mkdir -p "${note%/*}"
      printf '%s\n' "$id" >"$note"
    done
    ;;
  archive)
    shift
    (($#)) || die "usage: $0 archive FILE..."
    for f in "$@"; do import_archive "$f"; done
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
