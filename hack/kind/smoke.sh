#!/usr/bin/env bash
# Checks a kind cluster made by hack/kind: every node Ready, one pod on each of two workers,
# each reaching the other's pod IP, a ClusterIP Service by name (CoreDNS + kube-proxy) across
# nodes, and a claim of the default StorageClass (local-path) bound and written on a worker.
# Prints where each pod ran. Uses the kube-proxy image (it has socat), already on nodes.
#
# Usage: hack/kind/smoke.sh KUBECTL   (KUBECONFIG names the cluster)
set -euo pipefail
kubectl="${1:?kubectl}"
ns=kind-smoke
image=registry.k8s.io/kube-proxy:v1.34.4
k() { "$kubectl" "$@"; }

k wait --for=condition=Ready node --all --timeout=120s >/dev/null
# CoreDNS turns Ready some 30 s after the nodes (its kubernetes plugin syncs first).
k -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
mapfile -t workers < <(k get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's|node/||')
((${#workers[@]} >= 2)) || { echo "need two workers, have: ${workers[*]}" >&2; exit 1; }
k delete namespace "$ns" --ignore-not-found --wait >/dev/null
k create namespace "$ns" >/dev/null
trap 'k delete namespace "$ns" --wait=false >/dev/null' EXIT
for i in 0 1; do
  k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: p$i, labels: {app: p$i}}
spec:
  nodeName: ${workers[$i]}
  containers:
    - name: s
      image: $image
      imagePullPolicy: Never
      command: [socat, "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo hello from p$i on ${workers[$i]}"]
---
apiVersion: v1
kind: Service
metadata: {name: s$i}
spec: {selector: {app: p$i}, ports: [{port: 8080}]}
YAML
done
k -n "$ns" wait --for=condition=Ready pod/p0 pod/p1 --timeout=120s >/dev/null
k -n "$ns" get pods -o wide
ip0="$(k -n "$ns" get pod p0 -o jsonpath='{.status.podIP}')"
ip1="$(k -n "$ns" get pod p1 -o jsonpath='{.status.podIP}')"
# ask FROM_POD TARGET WHAT: FROM_POD connects to TARGET:8080 and must get p<n>'s greeting.
ask() {
  local answer
  answer="$(k -n "$ns" exec "$1" -- sh -c "echo | socat -T5 - TCP:$2:8080")" || {
    echo "FAIL: $1 -> $3 ($2)" >&2
    exit 1
  }
  echo "$1 -> $3 ($2): $answer"
}
ask p0 "$ip1" "p1's pod IP"
ask p1 "$ip0" "p0's pod IP"
ask p0 "s1.$ns.svc.cluster.local" "Service s1 by name"
ask p1 s0 "Service s0 by name"

# Storage: a claim of the default class, bound when its pod lands on the second worker.
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  # through the scheduler (not nodeName): it picks the node of a WaitForFirstConsumer claim
  nodeSelector: {kubernetes.io/hostname: ${workers[1]}}
  restartPolicy: Never
  containers:
    - name: w
      image: $image
      imagePullPolicy: Never
      command: [sh, -c, "echo written-on-${workers[1]} >/data/f && cat /data/f"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
YAML
k -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/writer --timeout=120s >/dev/null || {
  echo "FAIL: the writer pod with a local-path claim did not succeed" >&2
  k -n "$ns" describe pod writer | tail -n 15 >&2
  exit 1
}
echo "claim data: $(k -n "$ns" get pvc data -o jsonpath='{.status.phase} {.spec.volumeName}'), writer on ${workers[1]}: $(k -n "$ns" logs writer)"
