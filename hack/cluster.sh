#!/usr/bin/env bash
# A local Kubernetes control plane for tests, as plain processes on loopback:
# etcd, kube-apiserver (RBAC, PodSecurity, audit log), kube-controller-manager,
# kube-scheduler and kwok simulating a few nodes (one with nvidia.com/gpu).
#
# Usage: hack/cluster.sh up|down|status|restart-apiserver
#        hack/cluster.sh user NAME [GROUP...]   # kubeconfig for a client-cert user, path on stdout
#
# State lives in $MODELYARD_CLUSTER_DIR (default <repo>/.cluster): kubeconfig, pki/,
# logs/, pids/, audit.log, etcd/. Binaries come from hack/k8s-binaries.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER_DIR="${MODELYARD_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
PKI_DIR="$CLUSTER_DIR/pki"
LOG_DIR="$CLUSTER_DIR/logs"
PID_DIR="$CLUSTER_DIR/pids"
CONF_DIR="$CLUSTER_DIR/conf"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
AUDIT_LOG="$CLUSTER_DIR/audit.log"

# Below the Linux ephemeral range (32768+) and away from the usual 2379/6443/102xx,
# so a kind cluster or a second control plane on the same machine does not clash.
ETCD_PORT="${MODELYARD_ETCD_PORT:-23379}"
ETCD_PEER_PORT="${MODELYARD_ETCD_PEER_PORT:-23380}"
APISERVER_PORT="${MODELYARD_APISERVER_PORT:-26443}"
KCM_PORT="${MODELYARD_KCM_PORT:-20257}"
SCHEDULER_PORT="${MODELYARD_SCHEDULER_PORT:-20259}"
KWOK_PORT="${MODELYARD_KWOK_PORT:-20247}"
# 0: no simulated nodes, for a cluster whose only worker is the real node of node.sh.
KWOK_NODES="${MODELYARD_KWOK_NODES:-1}"

SERVICE_CIDR=10.96.0.0/16
SA_ISSUER=https://kubernetes.default.svc.cluster.local
# Start order; `down` stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# Label on pods that tells kwok which of its pod stages to skip (see hack/README.md).
KWOK_STAGE_LABEL=kwok.modelyard.dev/stage

kubectl_() { "$K8S_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ------------------------------------------------------------------ processes

binary_of() { echo "$K8S_BIN_DIR/$1"; }
# shellcheck disable=SC2034 # read by processes.sh
PROCESS_HOME="$CLUSTER_DIR"
# shellcheck source=processes.sh
source "$HACK_DIR/processes.sh"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------------------ pki

new_ca() { # new_ca FILE_BASE CN
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 -out "$1.crt" 2>/dev/null
}

# issue_cert FILE_BASE CN "O1 O2.." KIND(client|server) [SAN]; signed by $CA_BASE (default: cluster CA)
issue_cert() {
  local base="$1" cn="$2" orgs="$3" kind="$4" san="${5:-}" ca="${CA_BASE:-$PKI_DIR/ca}" subj o
  subj="/CN=$cn"
  for o in $orgs; do subj+="/O=$o"; done
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$base.key" 2>/dev/null
  openssl req -new -key "$base.key" -subj "$subj" -out "$base.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ "$kind" == server ]]; then echo "extendedKeyUsage=serverAuth"; else echo "extendedKeyUsage=clientAuth"; fi
    if [[ -n "$san" ]]; then echo "subjectAltName=$san"; fi
  } >"$base.ext"
  openssl x509 -req -in "$base.csr" -CA "$ca.crt" -CAkey "$ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$base.ext" -out "$base.crt" 2>/dev/null
  rm -f "$base.csr" "$base.ext"
}

write_kubeconfig() { # write_kubeconfig FILE USER CERT_BASE
  local file="$1" user="$2" base="$3"
  # Written directly rather than with `kubectl config`: 4 kubectl runs per file cost
  # seconds on a loaded machine.
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: modelyard
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$base.crt")
    client-key-data: $(base64 -w0 "$base.key")
contexts:
- name: modelyard
  context:
    cluster: modelyard
    user: $user
current-context: modelyard
EOF
  )
}

generate_pki() {
  rm -rf "$PKI_DIR"
  mkdir -p "$PKI_DIR"
  new_ca "$PKI_DIR/ca" modelyard-local-ca
  # Front proxy (request-header authentication): aggregated API servers trust it, and
  # controller-manager/scheduler stop complaining that its CA bundle is missing.
  new_ca "$PKI_DIR/front-proxy-ca" modelyard-front-proxy-ca
  CA_BASE="$PKI_DIR/front-proxy-ca" issue_cert "$PKI_DIR/front-proxy-client" front-proxy-client "" client
  issue_cert "$PKI_DIR/apiserver" kube-apiserver "" server \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert "$PKI_DIR/admin" kubernetes-admin "system:masters" client
  issue_cert "$PKI_DIR/kube-controller-manager" system:kube-controller-manager "" client
  issue_cert "$PKI_DIR/kube-scheduler" system:kube-scheduler "" client
  # kwok plays every kubelet: it writes node and pod status of all simulated nodes.
  issue_cert "$PKI_DIR/kwok" kwok-controller "system:masters" client
  # Service-account token signing key (apiserver signs/verifies, controller-manager signs).
  # (ECDSA P-256: tokens are signed ES256.)
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI_DIR/sa.key" 2>/dev/null
  openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
  chmod 600 "$PKI_DIR"/*.key

  write_kubeconfig "$KUBECONFIG_FILE" kubernetes-admin "$PKI_DIR/admin"
  local c
  for c in kube-controller-manager kube-scheduler kwok; do
    write_kubeconfig "$CONF_DIR/$c.kubeconfig" "$c" "$PKI_DIR/$c"
  done
}

# ---------------------------------------------------------------------- files

write_audit_policy() {
  # Writes only, by user, at Metadata level: enough to count what a client wrote
  # (tests/integration/conftest.py reads it). Node leases are renewed every few
  # seconds by kwok and the control plane; they would drown everything else.
  cat >"$CONF_DIR/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
EOF
}

# kwok's own pod stages ("fast" set) plus a label that lets a test switch stages off for
# chosen pods: kwok.modelyard.dev/stage=manual   -> kwok never touches the pod's status
#                                        =no-complete -> Running and Ready, never completed
# Deletion is always simulated (there is no kubelet to confirm it).
write_kwok_config() {
  cat >"$CONF_DIR/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseDurationSeconds: 40
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.podIP'
      operator: 'DoesNotExist'
    - key: '.metadata.labels["$KWOK_STAGE_LABEL"]'
      operator: 'NotIn'
      values: ['manual']
  next:
    statusTemplate: |
      {{ \$now := Now }}
      conditions:
      - lastTransitionTime: {{ \$now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ \$now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ \$now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ \$now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ \$now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        {{ if eq .restartPolicy "Always" }}
        started: true
        state:
          running:
            startedAt: {{ \$now | Quote }}
        {{ else }}
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ \$now | Quote }}
            reason: Completed
            startedAt: {{ \$now | Quote }}
        {{ end }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ \$now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values: ['Job']
    - key: '.metadata.labels["$KWOK_STAGE_LABEL"]'
      operator: 'NotIn'
      values: ['manual', 'no-complete']
  next:
    statusTemplate: |
      {{ \$now := Now }}
      {{ \$root := . }}
      containerStatuses:
      {{ range \$index, \$item := .spec.containers }}
      - image: {{ \$item.image | Quote }}
        name: {{ \$item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ \$now | Quote }}
            reason: Completed
            startedAt: {{ \$now | Quote }}
      {{ end }}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    finalizers:
      empty: true
    delete: true
EOF
}

node_manifest() { # node_manifest NAME CPU MEMORY [GPUS]
  local name="$1" cpu="$2" mem="$3" gpus="${4:-0}" extra_labels="" extra_capacity=""
  if ((gpus > 0)); then
    extra_labels=$'\n'"    nvidia.com/gpu.present: \"true\""$'\n'"    nvidia.com/gpu.count: \"$gpus\""
    extra_capacity=$'\n'"      nvidia.com/gpu: \"$gpus\""
  fi
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name$extra_labels
status:
  capacity: &res
      cpu: "$cpu"
      memory: $mem
      pods: "110"
      ephemeral-storage: 200Gi$extra_capacity
  allocatable: *res
---
EOF
}

create_nodes() {
  {
    node_manifest kwok-node-0 16 64Gi
    node_manifest kwok-node-1 16 64Gi
    node_manifest kwok-gpu-0 32 256Gi 4
  } | kubectl_ create -f - >/dev/null
}

# ------------------------------------------------------------------- commands

start_apiserver() {
  start_component kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --endpoint-reconciler-type none \
    --cert-dir "$PKI_DIR" \
    --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,PodSecurity \
    --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer "$SA_ISSUER" --api-audiences "$SA_ISSUER" \
    --service-account-key-file "$PKI_DIR/sa.pub" \
    --service-account-signing-key-file "$PKI_DIR/sa.key" \
    --audit-policy-file "$CONF_DIR/audit-policy.yaml" \
    --audit-log-path "$AUDIT_LOG" --audit-log-format json --audit-log-mode blocking \
    --audit-log-maxsize 500 --audit-log-maxbackup 1 \
    --profiling=false
}

healthy() { kubectl_ get --raw /readyz --request-timeout=3s >/dev/null 2>&1; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
}

cmd_up() {
  local start=$SECONDS c
  if all_running && healthy; then
    log "cluster already up (kubeconfig: $KUBECONFIG_FILE)"
    return 0
  fi
  # Leftovers of a crashed or half-started cluster: stop what is ours, then start clean.
  cmd_down quiet

  "$HACK_DIR/k8s-binaries.sh"
  local p
  for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT"; do
    port_free "$p" || die "port 127.0.0.1:$p is in use (override with MODELYARD_*_PORT, see hack/README.md)"
  done

  # A failed start leaves nothing running (the logs stay for the diagnosis).
  trap 'if [[ $? -ne 0 ]]; then log "start failed: stopping what was started"; cmd_down quiet; fi' EXIT

  # Every `up` is a fresh cluster: new certs, empty etcd, empty logs and audit log.
  rm -rf "$CLUSTER_DIR/etcd" "$LOG_DIR" "$CONF_DIR" "$AUDIT_LOG" "$KUBECONFIG_FILE" "$CLUSTER_DIR/users" \
    "$CLUSTER_DIR/started-by-tests"
  mkdir -p "$LOG_DIR" "$PID_DIR" "$CONF_DIR"
  generate_pki
  log "certificates and kubeconfigs after $((SECONDS - start))s"
  write_audit_policy
  write_kwok_config

  start_component etcd \
    --name modelyard --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "modelyard=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd 30 "etcd /health" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  log "etcd ready after $((SECONDS - start))s"

  start_apiserver
  wait_for kube-apiserver 90 "kube-apiserver /readyz" healthy
  log "kube-apiserver ready after $((SECONDS - start))s"

  start_component kube-controller-manager \
    --kubeconfig "$CONF_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF_DIR/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --cert-dir "$PKI_DIR/kcm-serving" \
    --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI_DIR/sa.key" \
    --root-ca-file "$PKI_DIR/ca.crt" \
    --cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --profiling=false

  start_component kube-scheduler \
    --kubeconfig "$CONF_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$CONF_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF_DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    --cert-dir "$PKI_DIR/scheduler-serving" \
    --leader-elect=false --profiling=false

  start_component kwok \
    --kubeconfig "$CONF_DIR/kwok.kubeconfig" \
    --config "$CONF_DIR/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "127.0.0.1:$KWOK_PORT" \
    --node-ip 10.233.0.1 --cidr 10.244.0.1/16

  if [[ "$KWOK_NODES" != 0 ]]; then
    create_nodes
    wait_for kwok 60 "nodes Ready" kubectl_ wait --for=condition=Ready node --all --timeout=2s
    log "nodes Ready after $((SECONDS - start))s"
  fi
  # The service-account controller (controller-manager) and the scheduler are up once
  # the default namespace has its ServiceAccount and the scheduler answers /readyz.
  wait_for kube-controller-manager 60 "ServiceAccount default/default" \
    kubectl_ -n default get serviceaccount default --request-timeout=5s
  wait_for kube-scheduler 30 "kube-scheduler /readyz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/readyz"
  for c in "${COMPONENTS[@]}"; do running "$c" || die_with_log "$c" "$c is not running"; done

  trap - EXIT
  log "control plane up in $((SECONDS - start))s: export KUBECONFIG=$KUBECONFIG_FILE"
  kubectl_ get nodes -o wide >&2
}

cmd_down() {
  local quiet="${1:-}" i c
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[$i]}"
    stop_component "$c"
  done
  [[ -n "$quiet" ]] || log "cluster down"
}

cmd_status() {
  local c pid rc=0
  for c in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$c")"
    if is_ours "$c" "$pid"; then
      printf '%-24s running (pid %s)\n' "$c" "$pid"
    else
      printf '%-24s stopped\n' "$c"
      rc=1
    fi
  done
  if [[ -f "$KUBECONFIG_FILE" ]] && healthy; then
    echo "kube-apiserver /readyz   ok (https://127.0.0.1:$APISERVER_PORT)"
    kubectl_ get nodes
  else
    echo "kube-apiserver /readyz   not answering"
    rc=1
  fi
  return "$rc"
}

# A kubeconfig for user NAME (groups GROUP...) with a client certificate from the
# cluster CA, so tests can tell one client's writes from another's in the audit log.
cmd_user() {
  local name="${1:-}"
  [[ -n "$name" ]] || die "usage: hack/cluster.sh user NAME [GROUP...]"
  [[ "$name" =~ ^[A-Za-z0-9:._@-]+$ ]] || die "bad user name: $name"
  shift
  [[ -f "$PKI_DIR/ca.key" ]] || die "no cluster PKI in $PKI_DIR: run hack/cluster.sh up first"
  local dir="$CLUSTER_DIR/users" safe
  safe="${name//:/_}"
  mkdir -p "$dir"
  issue_cert "$dir/$safe" "$name" "$*" client
  write_kubeconfig "$dir/$safe.kubeconfig" "$name" "$dir/$safe"
  printf '%s\n' "$dir/$safe.kubeconfig"
}

# Stop and start kube-apiserver alone (etcd and everything else stay up), as an upgrade or a
# crash of the API server would: clients see their watches and connections drop.
cmd_restart_apiserver() {
  running kube-apiserver || die "kube-apiserver is not running (hack/cluster.sh up first)"
  stop_component kube-apiserver
  start_apiserver
  wait_for kube-apiserver 90 "kube-apiserver /readyz" healthy
  log "kube-apiserver restarted"
}

# One `up`, `down` or `restart-apiserver` at a time per cluster directory: two test sessions that both find
# the cluster down must not start (and kill) each other's processes.
lock_cluster_dir() {
  mkdir -p "$CLUSTER_DIR"
  exec 8>"$CLUSTER_DIR/.lock"
  flock 8
}

case "${1:-}" in
  up)
    lock_cluster_dir
    cmd_up
    ;;
  down)
    lock_cluster_dir
    cmd_down
    ;;
  status) cmd_status ;;
  restart-apiserver)
    lock_cluster_dir
    cmd_restart_apiserver
    ;;
  user)
    shift
    cmd_user "$@"
    ;;
  *)
    echo "usage: $0 up|down|status|restart-apiserver|user NAME [GROUP...]" >&2
    exit 2
    ;;
esac
