#!/usr/bin/env bash
# What `kind build node-image` does, offline: our Kubernetes binaries into kind's base image,
# and the images kubeadm runs (made here from the same binaries, no registry) imported into
# the node's containerd, pinned; hack/kind/cni.yaml as kind's default CNI manifest.
#
# Usage: hack/kind/node-image.sh BASE_IMAGE K8S_BIN_DIR PAUSE_BINARY NODE_IMAGE
#   K8S_BIN_DIR: kubeadm kubelet kubectl kube-apiserver kube-controller-manager
#   kube-scheduler kube-proxy etcd (hack/k8s-binaries.sh + kubeadm)
# Environment: COREDNS (a CoreDNS binary, hack/kind/coredns/main.go), LOCAL_PATH (a
#   local-path-provisioner binary: default StorageClass; without it a StorageClass alone), DOCKER (docker CLI;
#   DOCKER_HOST picks the engine), WORK (scratch dir).
set -euo pipefail
base="$1" bin="$2" pause="$3" image="$4"
docker="${DOCKER:-docker}"
work="${WORK:-$(mktemp -d /tmp/kind-node-image.XXXXXX)}"
log() { echo "[$(date -u +%T)] $*" >&2; }

version="$("$bin/kubeadm" version -o short)" # v1.34.4
etcd_version="$("$bin/etcd" --version | sed -n 's/^etcd Version: //p')"
repo=registry.k8s.io

# One image per control-plane component: the static binary alone. kubeadm's manifests run
# the command by name, so PATH must find it.
component() {
  local name="$1" tag="$2" from="${3:-scratch}" run="${4:-}"
  mkdir -p "$work/$name"
  cp "$bin/$name" "$work/$name/"
  {
    echo "FROM $from"
    echo "COPY $name /usr/local/bin/$name"
    echo "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
    if [[ -n "$run" ]]; then echo "RUN $run"; fi
  } >"$work/$name/Dockerfile"
  "$docker" build -q -t "$repo/$name:$tag" "$work/$name" >/dev/null
  images+=("$repo/$name:$tag")
}
images=()
log "component images $version, etcd $etcd_version"
for c in kube-apiserver kube-controller-manager kube-scheduler; do component "$c" "$version"; done
component etcd "$etcd_version"
# kube-proxy runs iptables: the node's base (Debian's iptables), in legacy mode like the node.
component kube-proxy "$version" "$base" \
  "update-alternatives --set iptables /usr/sbin/iptables-legacy && update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy"
mkdir -p "$work/pause"
cp "$pause" "$work/pause/pause"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/pause/Dockerfile"
"$docker" build -q -t "$repo/pause:3.10" "$work/pause" >/dev/null
images+=("$repo/pause:3.10")
if [[ -n "${COREDNS:-}" ]]; then
  # The name and tag kubeadm's addon uses (registry.k8s.io/coredns/coredns:v1.12.1 for 1.34).
  coredns_image="$("$bin/kubeadm" config images list --kubernetes-version "$version" | grep /coredns)"
  mkdir -p "$work/coredns"
  cp "$COREDNS" "$work/coredns/coredns"
  printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$work/coredns/Dockerfile"
  "$docker" build -q -t "$coredns_image" "$work/coredns" >/dev/null
  images+=("$coredns_image")
fi
# The node base as a pod image (bash, curl, jq, iproute2): the CNI DaemonSet and local-path's
# helper pods run it. Its layer is in the node's containerd anyway (kube-proxy's base).
helper_image=modelyard.local/kind-helper:local
"$docker" tag "$base" "$helper_image"
images+=("$helper_image")
sed "s|@HELPER_IMAGE@|$helper_image|g" "$(dirname "${BASH_SOURCE[0]}")/cni.yaml" >"$work/default-cni.yaml"
if [[ -n "${LOCAL_PATH:-}" ]]; then
  mkdir -p "$work/local-path"
  cp "$LOCAL_PATH" "$work/local-path/local-path-provisioner"
  printf 'FROM scratch\nCOPY local-path-provisioner /usr/local/bin/local-path-provisioner\nENV PATH=/usr/local/bin\n' \
    >"$work/local-path/Dockerfile"
  provisioner_image=modelyard.local/local-path-provisioner:local
  "$docker" build -q -t "$provisioner_image" "$work/local-path" >/dev/null
  images+=("$provisioner_image")
  sed -e "s|@PROVISIONER_IMAGE@|$provisioner_image|; s|@HELPER_IMAGE@|$helper_image|g" \
    "$(dirname "${BASH_SOURCE[0]}")/local-path.yaml" >"$work/default-storage.yaml"
else
  cat >"$work/default-storage.yaml" <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
YAML
fi
log "saving ${images[*]}"
"$docker" save -o "$work/images.tar" "${images[@]}"

log "build container from $base"
id="$("$docker" run -d --entrypoint=sleep --security-opt seccomp=unconfined "$base" infinity)"
trap '"$docker" rm -f -v "$id" >/dev/null' EXIT
for b in kubeadm kubelet kubectl; do "$docker" cp -L "$bin/$b" "$id:/usr/bin/$b"; done
"$docker" exec "$id" chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl
"$docker" exec -i "$id" sh -c 'mkdir -p /kind/manifests && cat >/kind/version' <<<"$version"
"$docker" exec -i "$id" sh -c 'cat >/kind/manifests/default-storage.yaml' <"$work/default-storage.yaml"
"$docker" exec -i "$id" sh -c 'cat >/kind/manifests/default-cni.yaml' <"$work/default-cni.yaml"
# shellcheck disable=SC2016  # the loop runs in the node's shell, not here
"$docker" exec "$id" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &
  for i in $(seq 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && break; sleep 0.2; done'
"$docker" exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
  --all-platforms --no-unpack --digests - <"$work/images.tar" >/dev/null
"$docker" exec "$id" ctr --namespace=k8s.io images list -q >&2
"$docker" exec "$id" pkill containerd
sleep 1
"$docker" commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$id" "$image" >/dev/null
log "$image done"
