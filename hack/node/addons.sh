# The real node's add-ons, each a local process with its API objects: the API server proxy
# for pods, CoreDNS, local-path-provisioner and metrics-server.
# Sourced by hack/node.sh (which defines the paths and helpers these functions use).
# shellcheck shell=bash

# ------------------------------------------------------------------ API server for pods

# The API server of hack/cluster.sh listens on 127.0.0.1 only and maintains no endpoints
# for the `kubernetes` Service (--endpoint-reconciler-type none), so pods (the operator,
# the trainer's progress reports) could not reach it. As k3s agents and kubespray do with
# a node-local API load balancer, a TCP proxy on the node address forwards to it (TLS
# passes through untouched: the certificate names 10.96.0.1), and an EndpointSlice points
# the `kubernetes` Service at the proxy. Skipped when the API server has endpoints itself.
apiserver_port() {
  kubectl_ config view --minify -o jsonpath='{.clusters[0].cluster.server}' | sed 's/.*:\([0-9]*\)$/\1/'
}

start_apiserver_proxy() {
  if kubectl_ -n default get endpointslice kubernetes >/dev/null 2>&1; then
    log "the API server maintains endpoints of the kubernetes Service: no proxy needed"
    return 0
  fi
  local port
  port="$(apiserver_port)"
  [[ "$port" =~ ^[0-9]+$ ]] || die "cannot read the API server's port from $KUBECONFIG_FILE"
  start_component apiserver-proxy -lf "$LOG_DIR/apiserver-proxy.log" \
    "TCP-LISTEN:$port,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$port"
  wait_for apiserver-proxy 20 "API server proxy on $NODE_IP:$port" \
    curl -fsS --cacert "$CLUSTER_DIR/pki/ca.crt" --resolve "kubernetes:$port:$NODE_IP" \
    "https://kubernetes:$port/readyz"
  kubectl_ apply --server-side --field-manager modelyard-node -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-node-proxy
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: modelyard-node
    app.kubernetes.io/managed-by: modelyard-node
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
    conditions: {ready: true}
ports:
  - {name: https, port: $port, protocol: TCP}
EOF
}

# ------------------------------------------------------------------ CoreDNS

start_coredns() {
  local kubeconfig
  kubeconfig="$("$HACK_DIR/cluster.sh" user system:coredns)"
  cp "$kubeconfig" "$CONF_DIR/coredns.kubeconfig"
  # What the CoreDNS ClusterRole of kubeadm grants.
  kubectl_ apply --server-side --field-manager modelyard-node -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: modelyard:coredns
  labels: {app.kubernetes.io/managed-by: modelyard-node}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: modelyard:coredns
  labels: {app.kubernetes.io/managed-by: modelyard-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "modelyard:coredns"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:coredns}
EOF
  # CoreDNS runs on the node's address (port 53) as a local process, not as a pod: pods
  # cannot reach the API server, which listens on 127.0.0.1 only. The kube-dns Service
  # has no selector; its EndpointSlice points at the node address.
  cat >"$CONF_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$((COREDNS_METRICS_PORT + 1))
    ready 127.0.0.1:$((COREDNS_METRICS_PORT + 2))
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $CONF_DIR/coredns.kubeconfig modelyard
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    prometheus 127.0.0.1:$COREDNS_METRICS_PORT
    cache 5
    loop
    loadbalance
}
EOF
  start_component coredns -conf "$CONF_DIR/Corefile" -pidfile "$NODE_DIR/run/coredns.pid"
  wait_for coredns 60 "CoreDNS /ready" curl -fsS "http://127.0.0.1:$((COREDNS_METRICS_PORT + 2))/ready"
  kubectl_ apply --server-side --field-manager modelyard-node --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, app.kubernetes.io/managed-by: modelyard-node}
spec:
  clusterIP: $CLUSTER_DNS_IP
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: modelyard-node
    app.kubernetes.io/managed-by: modelyard-node
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
    conditions: {ready: true}
    nodeName: "$NODE_NAME"
ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# ------------------------------------------------------------------ storage

# Rancher's local-path-provisioner (what kind ships) as a local process: a PVC of the
# default StorageClass `local-path` gets a directory under $NODE_DIR/storage on this node,
# made and removed by helper pods (busybox) that the provisioner starts on the node.
STORAGE_DIR="$NODE_DIR/storage"
LOCAL_PATH_NS=local-path-storage

start_local_path() {
  local kubeconfig
  mkdir -p "$STORAGE_DIR"
  kubeconfig="$("$HACK_DIR/cluster.sh" user system:local-path-provisioner)"
  cp "$kubeconfig" "$CONF_DIR/local-path-provisioner.kubeconfig"
  kubectl_ apply --server-side --field-manager modelyard-node --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $LOCAL_PATH_NS
  labels: {app.kubernetes.io/managed-by: modelyard-node}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: local-path-helper
  namespace: $LOCAL_PATH_NS
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: modelyard:local-path-provisioner
  labels: {app.kubernetes.io/managed-by: modelyard-node}
rules:
  - apiGroups: [""]
    resources: [nodes, persistentvolumeclaims, configmaps, pods, pods/log]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [persistentvolumes]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [""]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [storage.k8s.io]
    resources: [storageclasses]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: modelyard:local-path-provisioner
  labels: {app.kubernetes.io/managed-by: modelyard-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "modelyard:local-path-provisioner"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:local-path-provisioner}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: modelyard:local-path-provisioner
  namespace: $LOCAL_PATH_NS
rules:
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [""]
    resources: [endpoints]
    verbs: [get, list, watch, create, patch, update]
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, list, watch, create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: modelyard:local-path-provisioner
  namespace: $LOCAL_PATH_NS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "modelyard:local-path-provisioner"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:local-path-provisioner}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-path-config
  namespace: $LOCAL_PATH_NS
data:
  config.json: |-
    {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$STORAGE_DIR"]}]}
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      automountServiceAccountToken: false
      containers:
        - name: helper-pod
          image: $BUSYBOX_IMAGE
          imagePullPolicy: Never
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  labels: {app.kubernetes.io/managed-by: modelyard-node}
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
  start_component local-path-provisioner --debug start \
    --kubeconfig "$CONF_DIR/local-path-provisioner.kubeconfig" \
    --namespace "$LOCAL_PATH_NS" --configmap-name local-path-config \
    --service-account-name local-path-helper --helper-image "$BUSYBOX_IMAGE" \
    --provisioner-name rancher.io/local-path
  # It has no health endpoint: give it a moment and check that it stays up.
  sleep 2
  running local-path-provisioner || die_with_log local-path-provisioner "local-path-provisioner exited"
}

# ------------------------------------------------------------------ metrics

# metrics-server as a local process on the node address, registered as the aggregated API
# metrics.k8s.io (what `kubectl top` and the HPA read). The API server reaches it through
# the Service kube-system/metrics-server (an EndpointSlice to the node address, which
# kube-proxy's rules also serve to host processes) and authenticates with its front-proxy
# certificate (hack/cluster.sh); metrics-server scrapes each kubelet's /metrics/resource.
METRICS_SERVER_PORT="${MODELYARD_METRICS_SERVER_PORT:-20443}"

start_metrics_server() {
  if ! kubectl_ -n kube-system get configmap extension-apiserver-authentication \
    -o jsonpath='{.data.requestheader-client-ca-file}' 2>/dev/null | grep -q CERTIFICATE; then
    log "WARNING: the API server has no front proxy (--requestheader-*): no metrics-server, no HPA"
    return 0
  fi
  local kubeconfig
  kubeconfig="$("$HACK_DIR/cluster.sh" user system:metrics-server)"
  cp "$kubeconfig" "$CONF_DIR/metrics-server.kubeconfig"
  # The RBAC of metrics-server's own manifests, bound to its user.
  kubectl_ apply --server-side --field-manager modelyard-node --force-conflicts -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: modelyard:metrics-server
  labels: {app.kubernetes.io/managed-by: modelyard-node}
rules:
  - apiGroups: [""]
    resources: [nodes/metrics]
    verbs: [get]
  - apiGroups: [""]
    resources: [pods, nodes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: modelyard:metrics-server
  labels: {app.kubernetes.io/managed-by: modelyard-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "modelyard:metrics-server"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: modelyard:metrics-server:auth-delegator
  labels: {app.kubernetes.io/managed-by: modelyard-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: modelyard:metrics-server:auth-reader
  namespace: kube-system
  labels: {app.kubernetes.io/managed-by: modelyard-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "extension-apiserver-authentication-reader"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
EOF
  mkdir -p "$NODE_DIR/metrics-server"
  start_component metrics-server \
    --kubeconfig "$CONF_DIR/metrics-server.kubeconfig" \
    --authentication-kubeconfig "$CONF_DIR/metrics-server.kubeconfig" \
    --authorization-kubeconfig "$CONF_DIR/metrics-server.kubeconfig" \
    --bind-address "$NODE_IP" --secure-port "$METRICS_SERVER_PORT" \
    --cert-dir "$NODE_DIR/metrics-server" \
    --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port \
    --kubelet-insecure-tls \
    --metric-resolution 15s
  wait_for metrics-server 60 "metrics-server /readyz" \
    curl -fsSk "https://$NODE_IP:$METRICS_SERVER_PORT/livez"
  kubectl_ apply --server-side --field-manager modelyard-node --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {k8s-app: metrics-server, app.kubernetes.io/managed-by: modelyard-node}
spec:
  ports:
    - {name: https, port: 443, protocol: TCP, targetPort: $METRICS_SERVER_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server-node
  namespace: kube-system
  labels:
    kubernetes.io/service-name: metrics-server
    endpointslice.kubernetes.io/managed-by: modelyard-node
    app.kubernetes.io/managed-by: modelyard-node
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
    conditions: {ready: true}
ports:
  - {name: https, port: $METRICS_SERVER_PORT, protocol: TCP}
EOF
  # The API server probes the APIService at once: the Service must have its rules first.
  wait_for kube-proxy 30 "kube-proxy's rules for kube-system/metrics-server" \
    bash -c "iptables -t nat -S KUBE-SERVICES | grep -qF 'kube-system/metrics-server:https cluster IP'"
  kubectl_ apply --server-side --field-manager modelyard-node --force-conflicts -f - >/dev/null <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
  labels: {app.kubernetes.io/managed-by: modelyard-node}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  # Its serving certificate is self-signed (cert-dir), as in metrics-server's manifests.
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
  wait_for metrics-server 90 "APIService v1beta1.metrics.k8s.io Available" \
    kubectl_ wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=2s
}
