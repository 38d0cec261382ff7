# Settings shared by hack/node.sh and hack/node-images.sh (sourced, not executed).
# shellcheck shell=bash
# shellcheck disable=SC2034  # the scripts that source this file use these settings
# shellcheck source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

CLUSTER_DIR="${MODELYARD_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
NODE_DIR="$CLUSTER_DIR/node"

# The node's name, its address (on an interface of our own, so that nothing depends
# on this machine's own addresses) and the pods' subnet (on a bridge of our own). They
# stay clear of the Service range (10.96.0.0/16), of kwok's fake addresses (10.233.0.1,
# 10.244.0.0/16) and of Docker's 172.17.0.0/16.
NODE_NAME="${MODELYARD_NODE_NAME:-modelyard-node}"
NODE_IP="${MODELYARD_NODE_IP:-10.234.0.1}"
POD_CIDR="${MODELYARD_POD_CIDR:-10.235.0.0/24}"
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
NODE_IFACE=modelyard0  # port-less bridge holding NODE_IP
POD_BRIDGE=modelyard-cni0
# Below the ephemeral range and away from the usual 10250/10256/10249/10248.
KUBELET_PORT="${MODELYARD_KUBELET_PORT:-20250}"
KUBELET_HEALTHZ_PORT="${MODELYARD_KUBELET_HEALTHZ_PORT:-20248}"
KUBE_PROXY_HEALTHZ_PORT="${MODELYARD_KUBE_PROXY_HEALTHZ_PORT:-20256}"
KUBE_PROXY_METRICS_PORT="${MODELYARD_KUBE_PROXY_METRICS_PORT:-20249}"
COREDNS_METRICS_PORT="${MODELYARD_COREDNS_METRICS_PORT:-20253}"
# Pods of other tests (kwok's simulated world) must not land on a node that really runs
# them, so by default the node is tainted and only pods that tolerate it run here.
# MODELYARD_NODE_TAINT= (empty) registers the node without a taint.
NODE_TAINT="${MODELYARD_NODE_TAINT-modelyard.dev/real-node=true:NoSchedule}"
NODE_LABEL=modelyard.dev/real-node=true
# Under this cgroup (in every v1 hierarchy, or in the v2 tree) the kubelet puts its pods,
# so that `down` can remove exactly what the node made.
CGROUP_ROOT=/modelyard

# Locally made images (hack/node-images.sh): no registry is reachable from here.
PAUSE_IMAGE=modelyard.local/pause:3.10
BUSYBOX_IMAGE=modelyard.local/busybox:1.35
CONTAINERD_ADDRESS="$NODE_DIR/run/containerd.sock"
CONTAINERD_NAMESPACE=k8s.io

# Paths of the cached binaries.
node_bins() {
  eval "$("$HACK_DIR/node-binaries.sh" --print-dirs)"
  RUNC="$(command -v runc || true)"
}

require_linux_root() {
  [[ "$(uname -s)" == Linux ]] || die "a real node needs Linux (this is $(uname -s)); use the kind path instead"
  [[ "$(id -u)" -eq 0 ]] || die "a real node needs root (kubelet, containerd, mounts, cgroups, iptables); run as root or use the kind path"
}
