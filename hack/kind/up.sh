#!/usr/bin/env bash
# `make kind-up`: a kind cluster of one control plane and two workers (hack/kind/cluster.yaml),
# everything built here and cached:
#   kind itself               <cache>/kind/<KIND_VERSION>/bin/kind (go install, stamp)
#   Kubernetes + kubeadm      hack/k8s-binaries.sh --kubeadm
#   containerd, CNI (ptp), crictl, CoreDNS for kind, local-path-provisioner
#                             hack/node-binaries.sh
#   pause                     <cache>/kind/pause/<hash of hack/node/pause.c>/pause (gcc -static)
#   kind's Docker engine      hack/kind/engine.sh (its data root keeps the images below)
#   base image                hack/kind/base-image.sh, tagged by a hash of its inputs
#   node image                hack/kind/node-image.sh, tagged by a hash of its inputs
# A second run reuses the running cluster (and starts its stopped nodes). The kubeconfig is
# .cluster-kind/kubeconfig (KUBECONFIG is set for kind: ~/.kube/config is never written).
#
# Usage: hack/kind/up.sh     Environment: KIND_CLUSTER (modelyard)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=version.env
source "$HACK_DIR/kind/version.env"
cluster="${KIND_CLUSTER:-modelyard}"
here="$HACK_DIR/kind"
cache="$(modelyard_cache_root)/kind"
state="$REPO_ROOT/.cluster-kind"
start=$SECONDS
mkdir -p "$cache" "$state/bin"

# hash FILE_OR_STRING...: 16 hex digits over the contents of the files and the other strings.
hash() {
  local a
  for a in "$@"; do if [[ -f "$a" ]]; then cat "$a"; else printf '%s\n' "$a"; fi; done |
    sha256sum | cut -c1-16
}

# ------------------------------------------------------------------ binaries
t=$SECONDS
"$HACK_DIR/k8s-binaries.sh" --kubeadm
"$HACK_DIR/node-binaries.sh"
while IFS='=' read -r k v; do printf -v "$k" '%s' "$v"; done < <("$HACK_DIR/node-binaries.sh" --print-dirs)

kind_dir="$cache/$KIND_VERSION"
kind="$kind_dir/bin/kind"
kind_stamp="kind=$KIND_VERSION recipe=1"
exec 9>"$cache/.lock"
flock 9
if [[ ! -x "$kind" || "$(cat "$kind_dir/stamp" 2>/dev/null)" != "$kind_stamp" ]]; then
  log "kind v$KIND_VERSION: building"
  rm -rf "$kind_dir"
  CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$kind_dir/bin" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
    go install -trimpath "sigs.k8s.io/kind@v$KIND_VERSION"
  printf '%s\n' "$kind_stamp" >"$kind_dir/stamp"
fi

pause_dir="$cache/pause/$(hash "$HACK_DIR/node/pause.c")"
if [[ ! -x "$pause_dir/pause" ]]; then
  command -v gcc >/dev/null || die "gcc is needed to build pause (apt-get install gcc libc6-dev)"
  mkdir -p "$pause_dir"
  gcc -static -Os -s -Wall -Werror -o "$pause_dir/pause.new" "$HACK_DIR/node/pause.c"
  mv "$pause_dir/pause.new" "$pause_dir/pause"
fi
# Unlocked before the engine starts: dockerd would inherit the descriptor and hold the lock.
exec 9>&-
log "binaries ready in $((SECONDS - t))s"

# -------------------------------------------------------------------- engine
"$here/engine.sh" up
eval "$("$here/engine.sh" env)"
# kind runs `docker`: the CLI unpacked with the engine (DOCKER_HOST above points it there).
ln -sfn "$("$here/engine.sh" cli)" "$state/bin/docker"
export PATH="$state/bin:$PATH"
export DOCKER="$state/bin/docker"
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# -------------------------------------------------------------------- images
# The base image: the debootstrap root is keyed by base-image.sh's package list (debootstrap
# runs once for it), the image by everything that goes in.
t=$SECONDS
base_image="modelyard.local/kind-base:$(hash "$here/base-image.sh" "$KIND_VERSION" \
  "$CONTAINERD_BIN/../stamp" "$CNI_BIN/../stamp" "$(ls "$CNI_BIN")" "$CRICTL_BIN/../stamp")"
if ! have_image "$base_image"; then
  rootfs="$cache/rootfs-$(hash "$(grep '^packages=' "$here/base-image.sh")")"
  go mod download "sigs.k8s.io/kind@v$KIND_VERSION" # kind's base files (base-image.sh)
  CONTAINERD_BIN="$CONTAINERD_BIN" CNI_BIN="$CNI_BIN" CRICTL_BIN="$CRICTL_BIN" \
    "$here/base-image.sh" "$rootfs" "$base_image"
fi
log "base image $base_image ready in $((SECONDS - t))s"

t=$SECONDS
k8s_dir="$(modelyard_cache_root)/k8s/$K8S_VERSION"
node_image="modelyard.local/kind-node:v$K8S_VERSION-$(hash "$base_image" "$here/node-image.sh" \
  "$here/cni.yaml" "$here/local-path.yaml" "$k8s_dir/stamp" "$k8s_dir/kubeadm.stamp" \
  "$COREDNS_KIND_BIN/../stamp" "$LOCAL_PATH_BIN/../stamp" "$pause_dir/pause")"
if ! have_image "$node_image"; then
  work="$cache/node-image-work"
  rm -rf "$work"
  mkdir -p "$work"
  WORK="$work" COREDNS="$COREDNS_KIND_BIN/coredns" LOCAL_PATH="$LOCAL_PATH_BIN/local-path-provisioner" \
    "$here/node-image.sh" "$base_image" "$K8S_BIN_DIR" "$pause_dir/pause" "$node_image"
  rm -rf "$work" # the image archive alone is > 1 GB
fi
log "node image $node_image ready in $((SECONDS - t))s"
# Images of older hashes would pile up in the engine's data root (1.3 GB per node image).
# An image a cluster still runs is refused by `docker rmi` and stays.
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' modelyard.local/kind-node) \
  $(docker images --format '{{.Repository}}:{{.Tag}}' modelyard.local/kind-base); do
  if [[ "$old" != "$node_image" && "$old" != "$base_image" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || log "kept $old (in use)"
  fi
done

# ------------------------------------------------------------------- cluster
export KUBECONFIG="$state/kubeconfig"
t=$SECONDS
if "$kind" get clusters 2>/dev/null | grep -qx "$cluster"; then
  running="$(docker inspect -f '{{.Config.Image}}' "$cluster-control-plane")"
  [[ "$running" == "$node_image" ]] ||
    log "NOTE: cluster $cluster runs $running, not $node_image: make kind-down kind-up to renew it"
  stopped="$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$cluster" --filter status=exited)"
  if [[ -n "$stopped" ]]; then
    log "starting the stopped nodes of $cluster"
    # shellcheck disable=SC2086  # one container id per word
    docker start $stopped >/dev/null
  fi
  "$kind" export kubeconfig --name "$cluster" >/dev/null
  log "reusing kind cluster $cluster"
else
  "$kind" create cluster --name "$cluster" --image "$node_image" --config "$here/cluster.yaml" \
    --wait 2m
fi

kubectl() { "$K8S_BIN_DIR/kubectl" "$@"; }

# routes_current: on every node, the route to each other node's podCIDR goes via that node's
# address now (hack/kind/cni.yaml rewrites them every 10 s; an engine restart renumbers the
# nodes, and until then pods reach no pod on another node, CoreDNS included).
routes_current() {
  local rows r s name cidr ip
  mapfile -t rows < <(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR}{"\n"}{end}')
  ((${#rows[@]} == 3)) || return 1
  for r in "${rows[@]}"; do
    for s in "${rows[@]}"; do
      [[ "$r" != "$s" ]] || continue
      read -r name cidr <<<"$s"
      [[ -n "$cidr" ]] || return 1
      ip="$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$name")"
      docker exec "${r%% *}" ip route show "$cidr" | grep -q " via $ip " || return 1
    done
  done
}

# Ready means serving: the API (RBAC loaded: right after a restart it refuses the admin),
# the nodes, the routes between them, and kube-system's pods (CoreDNS) on those routes.
for _ in $(seq 90); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 2; done
kubectl get --raw /readyz >/dev/null
kubectl wait --for=condition=Ready node --all --timeout=180s >/dev/null
for _ in $(seq 60); do routes_current && break; sleep 2; done
routes_current || die "routes between the nodes' pod networks not set after 120 s (kind-routes pods)"
kubectl -n kube-system wait --for=condition=Ready pod --all --timeout=180s >/dev/null

# ------------------------------------------------------------------- routes
# This machine reaches pods and Services as a client inside the cluster would (the e2e tests
# call a model through its Service): each node's podCIDR via that node, the Service range via
# the control plane, whose kube-proxy forwards (masquerading) to pods on any node.
node_ip() { docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$1"; }
while read -r name cidr; do
  ip route replace "$cidr" via "$(node_ip "$name")"
done < <(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR}{"\n"}{end}')
service_cidr="$(kubectl -n kube-system get configmap kubeadm-config \
  -o jsonpath='{.data.ClusterConfiguration}' | sed -n 's/^ *serviceSubnet: *//p')"
[[ -n "$service_cidr" ]] || die "no serviceSubnet in kube-system/kubeadm-config"
ip route replace "$service_cidr" via "$(node_ip "$cluster-control-plane")"

# ------------------------------------------------------------ metrics-server
# Resource metrics for the HPA: an image made from the binary hack/node-binaries.sh builds.
metrics_image="modelyard.local/metrics-server:$(hash "$METRICS_SERVER_BIN/../stamp")"
metrics_archive="$cache/metrics-server-${metrics_image##*:}.tar"
if [[ ! -f "$metrics_archive" ]]; then
  root="$(mktemp -d)"
  cp "$METRICS_SERVER_BIN/metrics-server" "$root/metrics-server"
  mkdir -m 1777 "$root/tmp"
  python3 "$HACK_DIR/node/oci_archive.py" --root "$root" --name "$metrics_image" \
    --entrypoint /metrics-server -o "$metrics_archive.new" >&2
  rm -rf "$root"
  mv "$metrics_archive.new" "$metrics_archive"
fi
"$here/load-images.sh" --archive "$metrics_archive"
sed "s|METRICS_SERVER_IMAGE|$metrics_image|" "$here/metrics-server.yaml" | kubectl apply -f - >/dev/null
kubectl -n kube-system rollout status deployment metrics-server --timeout=180s >/dev/null
kubectl get nodes -o wide >&2
log "cluster $cluster ready in $((SECONDS - t))s (kind-up $((SECONDS - start))s)"
log "export KUBECONFIG=$KUBECONFIG DOCKER_HOST=$DOCKER_HOST"
