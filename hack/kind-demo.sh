#!/usr/bin/env bash
# `make kind-demo`: the demo of hack/demo.py on a kind cluster, for a machine with Docker,
# kind, kubectl, helm and internet access (images from Docker Hub, metrics-server's release
# manifest from GitHub).
#
# Environment: KIND_CLUSTER (modelyard), METRICS_SERVER_VERSION (v0.8.0),
#              PYTHON (.venv/bin/python), MODELYARD_BASE_IMAGE (see hack/images.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cluster="${KIND_CLUSTER:-modelyard}"
metrics_server="${METRICS_SERVER_VERSION:-v0.8.0}"
python="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed (the kind path needs docker, kind, kubectl, helm)"
done

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind create cluster --name $cluster"
  kind create cluster --name "$cluster" --wait 120s
fi
kubeconfig="$(mktemp)"
trap 'rm -f "$kubeconfig"' EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"

"$HACK_DIR/images.sh"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n1)"
for name in operator trainer server; do
  kind load docker-image --name "$cluster" "modelyard/$name:$version"
done

# kind has no metrics-server; its kubelets serve self-signed certificates.
if ! kubectl --kubeconfig "$kubeconfig" -n kube-system get deployment metrics-server >/dev/null 2>&1; then
  kubectl --kubeconfig "$kubeconfig" apply -f \
    "https://github.com/kubernetes-sigs/metrics-server/releases/download/$metrics_server/components.yaml"
  kubectl --kubeconfig "$kubeconfig" -n kube-system patch deployment metrics-server --type=json \
    -p '[{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--kubelet-insecure-tls"}]'
fi
kubectl --kubeconfig "$kubeconfig" -n kube-system rollout status deployment metrics-server --timeout=180s

# Service IPs of a kind cluster are not routed to this machine: the client goes through
# kubectl port-forward.
"$python" "$HACK_DIR/demo.py" --kubeconfig "$kubeconfig" --service-access port-forward
