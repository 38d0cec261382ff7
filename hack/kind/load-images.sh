#!/usr/bin/env bash
# Puts images into every worker node of the kind cluster of hack/kind/up.sh (no registry is
# reachable here, so nothing is pulled). Each image is imported into the node's containerd
# (namespace k8s.io), unpacked for the CRI's snapshotter and pinned, so the kubelet finds it
# ready (imagePullPolicy IfNotPresent or Never) and never removes it under disk pressure.
#
# Usage: hack/kind/load-images.sh [--archive FILE]... [IMAGE]...
#   IMAGE  an image of the host's Docker engine: saved once and streamed into all workers at
#          once; a node that holds the same image id already is skipped (the trainer is 6.6 GB)
#   FILE   an OCI or docker-save archive (small ones: imported every time)
# Environment: KIND_CLUSTER (modelyard)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cluster="${KIND_CLUSTER:-modelyard}"
kind_host="$("$HACK_DIR/kind/engine.sh" env | sed -n 's/^export DOCKER_HOST=//p')"
kind_cli="$("$HACK_DIR/kind/engine.sh" cli)"
kdocker() { DOCKER_HOST="$kind_host" "$kind_cli" "$@"; }
host_docker() { DOCKER_HOST=unix:///var/run/docker.sock docker "$@"; }

# One load at a time: two imports of the same image would hold its size twice on each node.
mkdir -p "$(modelyard_cache_root)/kind"
exec 8>"$(modelyard_cache_root)/kind/.load-images.lock"
flock 8

mapfile -t workers < <(kdocker ps --filter "label=io.x-k8s.kind.cluster=$cluster" \
  --filter label=io.x-k8s.kind.role=worker --format '{{.Names}}' | sort)
((${#workers[@]})) || die "no worker node of kind cluster $cluster runs: make kind-up"

# import NODE: an archive on stdin into NODE's containerd.
import() {
  kdocker exec -i "$1" ctr --namespace=k8s.io images import --digests --snapshotter=overlayfs \
    --label=io.cri-containerd.pinned=pinned - >/dev/null
}

# The image id the CRI reports for IMAGE on NODE ("" when absent).
node_image_id() {
  kdocker exec "$1" crictl inspecti -o go-template --template '{{.status.id}}' "$2" 2>/dev/null || true
}

load_docker_image() {
  local image="$1" id node stale=() old
  id="$(host_docker image inspect -f '{{.Id}}' "$image")" || die "no image $image in Docker: make images"
  for node in "${workers[@]}"; do
    [[ "$(node_image_id "$node" "docker.io/$image")" == "$id" ]] || stale+=("$node")
  done
  if ((${#stale[@]} == 0)); then
    log "$image: every worker has it"
    return
  fi
  log "$image: into ${stale[*]}"
  # One `docker save`, teed through a FIFO per further node: a 6.6 GB image is read once.
  local dir pids=() fifos=()
  dir="$(mktemp -d)"
  for node in "${stale[@]:1}"; do
    fifos+=("$dir/$node")
    mkfifo "$dir/$node"
    import "$node" <"$dir/$node" &
    pids+=($!)
  done
  host_docker save "$image" | tee "${fifos[@]}" | import "${stale[0]}" ||
    die "importing $image into ${stale[0]} failed"
  for pid in "${pids[@]}"; do wait "$pid" || die "importing $image into a worker failed"; done
  rm -rf "$dir"
  for node in "${stale[@]}"; do
    # The image the name pointed to before stays under its id: drop it, or each new build
    # would leave its size behind on the node.
    while read -r old; do
      [[ "$old" == "$id" ]] || kdocker exec "$node" crictl rmi "$old" >/dev/null 2>&1 || true
    done < <(kdocker exec "$node" crictl images -o go-template \
      --template '{{range .images}}{{if not .repoTags}}{{.id}}{{"\n"}}{{end}}{{end}}' 2>/dev/null)
  done
  # A saved image's layer blobs are its uncompressed layers (digest = diff id); once unpacked
  # into snapshots the CRI needs only the manifest and config, so the blobs are dropped, as
  # containerd's discard_unpacked_layers does for pulled images: half the disk (6.6 GB of 13
  # per node for the trainer). A later import brings back whatever it needs.
  local layers
  read -ra layers < <(host_docker image inspect -f '{{range .RootFS.Layers}}{{.}} {{end}}' "$image")
  for node in "${stale[@]}"; do
    [[ "$(node_image_id "$node" "docker.io/$image")" == "$id" ]] || die "$image did not reach $node"
    kdocker exec "$node" ctr --namespace=k8s.io content rm "${layers[@]}" >/dev/null 2>&1 || true
  done
}

while (($#)); do
  case "$1" in
    --archive)
      [[ -f "${2:-}" ]] || die "--archive needs an existing file"
      for node in "${workers[@]}"; do import "$node" <"$2"; done
      log "$(basename "$2"): into ${workers[*]}"
      shift 2
      ;;
    -*) die "unknown option $1 (see the usage in $0)" ;;
    *)
      load_docker_image "$1"
      shift
      ;;
  esac
done
