#!/usr/bin/env bash
# Pod networking for a kind cluster made with disableDefaultCNI (kindnetd's module is not
# served by the Go module proxy): what kindnetd does, done once from outside. On every node,
# a ptp + host-local CNI config for the node's podCIDR, and a route to each other node's
# podCIDR via that node's address (the nodes share one Docker bridge, so one hop).
# Nodes that join later need a rerun.
#
# Usage: hack/kind/cni.sh CLUSTER_NAME   (DOCKER_HOST picks the engine, KIND the kind binary)
set -euo pipefail
cluster="${1:?cluster name}"
docker="${DOCKER:-docker}" kind="${KIND:-kind}"
cp="$cluster-control-plane"
kubectl() { "$docker" exec "$cp" kubectl --kubeconfig /etc/kubernetes/admin.conf "$@"; }

declare -A cidr ip
for node in $("$kind" get nodes --name "$cluster"); do
  cidr[$node]="$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')"
  ip[$node]="$(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
  [[ -n "${cidr[$node]}" && -n "${ip[$node]}" ]] || { echo "node $node has no podCIDR/InternalIP yet" >&2; exit 1; }
done
for node in "${!cidr[@]}"; do
  "$docker" exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat >/etc/cni/net.d/10-kind-ptp.conflist' <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kind-ptp",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "${cidr[$node]}" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
  for other in "${!cidr[@]}"; do
    [[ "$other" == "$node" ]] && continue
    "$docker" exec "$node" ip route replace "${cidr[$other]}" via "${ip[$other]}"
  done
  echo "$node ${ip[$node]} pods ${cidr[$node]}"
done
