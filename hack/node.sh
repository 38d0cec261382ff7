#!/usr/bin/env bash
# Adds a REAL node to the local control plane of hack/cluster.sh: containerd (built from its
# Go module) with Debian's runc, the CNI bridge plugins, a kubelet that runs real pods,
# kube-proxy (iptables) and CoreDNS, all as local processes on this machine, in the spirit
# of Kubernetes' own local-up-cluster. Linux and root only.
#
# Usage: hack/node.sh up|down|status
#
# State lives in $MODELYARD_CLUSTER_DIR/node (default .cluster/node): pids/, logs/,
# containerd/ (root and state), kubelet/, cni/, pki/, node.env (what tests read).
# `down` stops exactly what `up` started and removes the mounts, cgroups, interfaces and
# iptables rules that the node made. Settings: hack/node/common.sh; hack/README.md, "Real node".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/node/common.sh"

PID_DIR="$NODE_DIR/pids"
LOG_DIR="$NODE_DIR/logs"
CONF_DIR="$NODE_DIR/conf"
CNI_CONF_DIR="$NODE_DIR/cni/net.d"
CONTAINERD_ROOT="$NODE_DIR/containerd/root"
CONTAINERD_STATE="$NODE_DIR/containerd/state"
KUBELET_ROOT="$NODE_DIR/kubelet"
ENV_FILE="$NODE_DIR/node.env"
# Start order; `down` stops in reverse.
COMPONENTS=(containerd apiserver-proxy kubelet kube-proxy coredns local-path-provisioner metrics-server)

kubectl_() { "$K8S_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
crictl_() { "$CRICTL_BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_ADDRESS" --timeout 20s "$@"; }

binary_of() {
  case "$1" in
    containerd) echo "$CONTAINERD_BIN/containerd" ;;
    kubelet | kube-proxy) echo "$K8S_BIN_DIR/$1" ;;
    coredns) echo "$COREDNS_BIN/coredns" ;;
    apiserver-proxy) command -v socat ;;
    local-path-provisioner) echo "$LOCAL_PATH_BIN/local-path-provisioner" ;;
    metrics-server) echo "$METRICS_SERVER_BIN/metrics-server" ;;
  esac
}

# ------------------------------------------------------------------ processes

pid_of() { cat "$PID_DIR/$1.pid" 2>/dev/null || true; }

# True when $2 is alive and really is our $1: its executable is the cached binary and its
# command line points into this node directory (pids get reused).
is_ours() {
  local name="$1" pid="$2" cmdline
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$(head -n1 <<<"$cmdline")" == "$(binary_of "$name")" ]] || return 1
  grep -qF -- "$NODE_DIR/" <<<"$cmdline"
}

running() { is_ours "$1" "$(pid_of "$1")"; }

start_component() {
  local name="$1"
  shift
  # setsid: a Ctrl-C in the shell that ran `up` must not take the node down.
  setsid "$(binary_of "$name")" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$PID_DIR/$name.pid"
}

stop_component() {
  local name="$1" pid i
  pid="$(pid_of "$name")"
  if is_ours "$name" "$pid"; then
    # The whole process group: socat forks a child per connection.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      is_ours "$name" "$pid" || break
      sleep 0.1
    done
    if is_ours "$name" "$pid"; then
      log "$name ($pid) ignored SIGTERM for 15s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$PID_DIR/$name.pid"
}

die_with_log() {
  local name="$1"
  shift
  log "ERROR: $*"
  if [[ -f "$LOG_DIR/$name.log" ]]; then
    log "last lines of $LOG_DIR/$name.log:"
    tail -n 40 "$LOG_DIR/$name.log" >&2
  fi
  exit 1
}

# wait_for NAME TIMEOUT_S DESCRIPTION CMD...: poll CMD until it succeeds while NAME lives.
wait_for() {
  local name="$1" timeout="$2" what="$3" deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    running "$name" || die_with_log "$name" "$name exited while waiting for $what"
    ((SECONDS < deadline)) || die_with_log "$name" "timed out after ${timeout}s waiting for $what"
    sleep 0.3
  done
}

timed() { # timed LABEL CMD...: run CMD, log how long it took
  local label="$1" t=$SECONDS
  shift
  "$@"
  log "$label: $((SECONDS - t))s"
}

# ------------------------------------------------------------------ preflight

cgroup_version() {
  if [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" == cgroup2fs ]]; then echo 2; else echo 1; fi
}

# Every cgroup hierarchy, one mount point per line: the v1 ones (cpu, memory, ...,
# name=systemd) and the v2 one (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
cgroup_dirs() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

preflight() {
  require_linux_root
  if [[ ! -f "$KUBECONFIG_FILE" ]] || ! kubectl_ get --raw /readyz >/dev/null 2>&1; then
    die "the control plane is not up ($KUBECONFIG_FILE does not answer): run hack/cluster.sh up first"
  fi
  [[ -n "$RUNC" ]] || die "runc is missing (apt-get install runc)"
  command -v socat >/dev/null || die "socat is missing (apt-get install socat): it forwards pods' API requests"
  command -v iptables >/dev/null || die "iptables is missing (apt-get install iptables)"
  command -v ip >/dev/null || die "ip is missing (apt-get install iproute2)"
  grep -qw overlay /proc/filesystems || die "the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it)"
  if [[ "$(cgroup_version)" == 1 ]]; then
    local c
    for c in cpu cpuacct cpuset memory pids; do
      grep -qE "^cgroup .*[ ,]${c}[ ,]" /proc/mounts ||
        die "cgroup v1 controller '$c' is not mounted (the kubelet needs it)"
    done
  fi
  "$HACK_DIR/k8s-binaries.sh" --check || die "Kubernetes binaries missing or stale: run hack/k8s-binaries.sh"
  "$HACK_DIR/node-binaries.sh"
  mkdir -p /var/run/netns 2>/dev/null || true
}

# ------------------------------------------------------------------ network

setup_network() {
  # The node address lives on an interface of our own (the API server reaches the kubelet
  # on it, pods reach the node on it); the host's own addresses stay out of it. A bridge
  # without ports, not a dummy: kernels without modules may lack the dummy driver
  # ("Unknown device type"), while a container host always has bridges.
  if ! ip link show "$NODE_IFACE" >/dev/null 2>&1; then
    ip link add "$NODE_IFACE" type bridge
  fi
  ip addr replace "$NODE_IP/32" dev "$NODE_IFACE"
  ip link set "$NODE_IFACE" up
  # Service IPs are virtual: kube-proxy's DNAT rules give them a destination. Without
  # this route, a connection to a Service IP that has no rules (yet) followed this
  # machine's default route out of it: the API server's first probe of the metrics
  # APIService went to the network's gateway, and the keep-alive connection that some
  # middlebox answered (404) stuck. Routed to the port-less bridge, such packets die
  # here; packets that kube-proxy rewrites are routed again to their real destination.
  ip route replace "$SERVICE_CIDR" dev "$NODE_IFACE"
  # Pods talk to pods, Services, the node and the API server, never to the outside:
  # forwarded traffic from the pod subnet may leave through the pod bridge only.
  iptables -N MODELYARD-NODE-EGRESS 2>/dev/null || iptables -F MODELYARD-NODE-EGRESS
  iptables -A MODELYARD-NODE-EGRESS -s "$POD_CIDR" ! -o "$POD_BRIDGE" \
    -m comment --comment "modelyard real node: pods stay on this machine" -j DROP
  iptables -C FORWARD -j MODELYARD-NODE-EGRESS 2>/dev/null || iptables -I FORWARD 1 -j MODELYARD-NODE-EGRESS
  # Forwarding between pods and the node; Docker sets the FORWARD policy to DROP, so the
  # CNI firewall plugin (in the conflist) accepts traffic of each pod explicitly.
  sysctl -qw net.ipv4.ip_forward=1
  if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
}

# remove_chains CMD TABLE CHAIN...: drop every rule that jumps to the chains, then the chains.
remove_chains() {
  local cmd="$1" table="$2" chain rule
  shift 2
  for chain in "$@"; do
    "$cmd" -t "$table" -S "$chain" >/dev/null 2>&1 || continue
    while read -r rule; do
      [[ -n "$rule" ]] || continue
      # eval: iptables -S quotes comments ("..."), which plain word splitting would break.
      eval "\"\$cmd\" -t \"\$table\" ${rule/-A /-D }" 2>/dev/null || true
    done < <("$cmd" -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j $chain( |\$)" || true)
    "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
    "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
  done
}

teardown_network() {
  ip link del "$NODE_IFACE" 2>/dev/null || true
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  # The kubelet's own chains (a canary, a hint for iptables-wrapper, and KUBE-FIREWALL,
  # which drops packets to 127.0.0.0/8 from other addresses): kube-proxy --cleanup
  # leaves them.
  local cmd table
  remove_chains iptables filter MODELYARD-NODE-EGRESS
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      remove_chains "$cmd" "$table" KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT
    done
  done
  # Rules that the CNI plugins left for pods that did not get a clean CNI DEL.
  local table chain rules
  for table in filter nat; do
    for chain in CNI-FORWARD CNI-HOSTPORT-DNAT CNI-HOSTPORT-SNAT; do
      rules="$(iptables -t "$table" -S "$chain" 2>/dev/null | grep -F -- "${POD_CIDR%.*}." || true)"
      while read -r rule; do
        [[ -n "$rule" ]] || continue
        eval "iptables -t \"\$table\" ${rule/-A /-D }" 2>/dev/null || true
      done <<<"$rules"
    done
  done
  # The CNI firewall plugin's skeleton (a FORWARD jump to CNI-FORWARD, which jumps to
  # CNI-ADMIN), once no pod rule is left in it.
  if [[ "$(iptables -S CNI-FORWARD 2>/dev/null | grep -c '^-A')" -le 1 ]] &&
    [[ "$(iptables -S CNI-ADMIN 2>/dev/null | grep -c '^-A')" -eq 0 ]]; then
    remove_chains iptables filter CNI-FORWARD CNI-ADMIN
  fi
}

write_cni_config() {
  mkdir -p "$CNI_CONF_DIR" "$NODE_DIR/cni/ipam"
  # bridge + host-local: one subnet on one bridge, the simplest real pod network.
  # No ipMasq: pods talk to each other, to Services and to the node, never to the outside.
  cat >"$CNI_CONF_DIR/10-modelyard.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "modelyard",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
}

# The API server reaches a kubelet (logs, exec, port-forward) at the first node address
# of the types in --kubelet-preferred-address-types; by default that is Hostname, the
# node's name, which no DNS knows here ("lookup modelyard-node ... no such host"). Unless
# the control plane prefers InternalIP, the name goes into /etc/hosts (the API server's Go
# resolver reads it), in a line that `down` removes again.
HOSTS_MARKER="# modelyard-node: $NODE_DIR"

apiserver_prefers_internal_ip() {
  local pid
  pid="$(cat "$CLUSTER_DIR/pids/kube-apiserver.pid" 2>/dev/null)" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- '--kubelet-preferred-address-types[ =]InternalIP'
}

add_hosts_entry() {
  remove_hosts_entry
  apiserver_prefers_internal_ip && return 0
  printf '%s %s %s\n' "$NODE_IP" "$NODE_NAME" "$HOSTS_MARKER" >>/etc/hosts
}

remove_hosts_entry() {
  grep -qF -- "$HOSTS_MARKER" /etc/hosts 2>/dev/null || return 0
  # In place (not a rename): /etc/hosts may be a bind mount.
  local kept
  kept="$(grep -vF -- "$HOSTS_MARKER" /etc/hosts)"
  printf '%s\n' "$kept" >/etc/hosts
}

# ------------------------------------------------------------------ containerd

write_containerd_config() {
  mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$NODE_DIR/run" "$NODE_DIR/opt"
  cat >"$CONF_DIR/containerd.toml" <<EOF
# Generated by hack/node.sh. containerd 2.x config format.
version = 3
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
# NRI would open a socket in /var/run/nri; the zfs/btrfs/devmapper/erofs snapshotters only
# log that their backing store is missing.
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$CONTAINERD_ADDRESS"

[ttrpc]
  address = "$CONTAINERD_ADDRESS.ttrpc"

[debug]
  level = "info"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$NODE_DIR/opt"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"

  [plugins.'io.containerd.cri.v1.runtime']
    enable_cdi = false
    # Pod network namespaces under the state directory (not /var/run/netns), so that
    # everything the node mounts is under the node directory.
    netns_mounts_under_state_dir = true
    # No process here may lower its oom_score_adj: the machine's capability bounding set
    # lacks CAP_SYS_RESOURCE, so runc failed every sandbox ("failed to update
    # /proc/self/oom_score_adj: Permission denied"). Scores below containerd's own (0)
    # are raised to it; pods of every QoS class still get the kernel's OOM ordering above 0.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$RUNC"
          Root = "$NODE_DIR/run/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$CNI_BIN"]
      conf_dir = "$CNI_CONF_DIR"
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
}

start_containerd() {
  write_containerd_config
  # The shim finds runc and the CNI plugins on PATH as well as through the config.
  PATH="$CONTAINERD_BIN:$PATH" start_component containerd --config "$CONF_DIR/containerd.toml"
  wait_for containerd 60 "containerd's socket" \
    "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_ADDRESS" version
}

# ------------------------------------------------------------------ kubelet

make_cgroup_root() {
  local d
  while read -r d; do mkdir -p "$d$CGROUP_ROOT"; done < <(cgroup_dirs)
}

# Removes the node's cgroups, deepest first (rmdir only removes empty cgroups: a cgroup
# that still has a process is left alone and reported).
remove_cgroup_root() {
  local d left=0
  while read -r d; do
    [[ -d "$d$CGROUP_ROOT" ]] || continue
    find "$d$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d "$d$CGROUP_ROOT" ]] && left=1
  done < <(cgroup_dirs)
  ((left == 0)) || log "WARNING: some cgroups under $CGROUP_ROOT still hold processes"
}

write_kubelet_config() {
  mkdir -p "$KUBELET_ROOT" "$NODE_DIR/pki" "$NODE_DIR/pod-logs" "$NODE_DIR/volume-plugins"
  local authn authz
  # The API server of hack/cluster.sh sends no client certificate to kubelets (it has no
  # --kubelet-client-certificate), so `kubectl logs/exec` reach the kubelet anonymously.
  # The kubelet listens on the node's own dummy address only. When the control plane
  # issues a kubelet client certificate (pki/apiserver-kubelet-client.crt), the kubelet
  # checks certificates and asks the API server (webhook) instead.
  if [[ -f "$CLUSTER_DIR/pki/apiserver-kubelet-client.crt" ]]; then
    authn="anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: \"$CLUSTER_DIR/pki/ca.crt\"}"
    authz="mode: Webhook"
  else
    authn="anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: \"$CLUSTER_DIR/pki/ca.crt\"}"
    authz="mode: AlwaysAllow"
  fi
  local taints=""
  if [[ -n "$NODE_TAINT" ]]; then
    local key="${NODE_TAINT%%=*}" rest="${NODE_TAINT#*=}"
    taints="registerWithTaints:
  - {key: \"$key\", value: \"${rest%%:*}\", effect: \"${rest##*:}\"}"
  fi
  cat >"$CONF_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine may run cgroup v1, which kubelet 1.35+ refuses and 1.34 accepts with this.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: "$CGROUP_ROOT"
containerRuntimeEndpoint: "unix://$CONTAINERD_ADDRESS"
address: "$NODE_IP"
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  $authn
authorization:
  $authz
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: ["$CLUSTER_DNS_IP"]
# Pods with dnsPolicy Default get no upstream: nothing outside this machine is reachable.
resolvConf: ""
podLogsDir: "$NODE_DIR/pod-logs"
volumePluginDir: "$NODE_DIR/volume-plugins"
failSwapOn: false
# Local images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# A shared development machine: evict only when really short.
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
  nodefs.inodesFree: "2%"
maxPods: 60
# Pods of this node go through the API server; no static pods.
staticPodPath: ""
registerNode: true
$taints
# A small machine: report status often enough for tests, not more.
nodeStatusReportFrequency: 1m
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 20s
shutdownGracePeriod: 0s
EOF
}

start_kubelet() {
  local kubeconfig
  # A client certificate in the system:nodes group, so that the Node authorizer and the
  # NodeRestriction admission treat the kubelet as node $NODE_NAME.
  kubeconfig="$("$HACK_DIR/cluster.sh" user "system:node:$NODE_NAME" system:nodes)"
  cp "$kubeconfig" "$CONF_DIR/kubelet.kubeconfig"
  make_cgroup_root
  write_kubelet_config
  start_component kubelet \
    --config "$CONF_DIR/kubelet.yaml" \
    --kubeconfig "$CONF_DIR/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" \
    --cert-dir "$NODE_DIR/pki" \
    --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" \
    --node-labels "$NODE_LABEL" \
    --oom-score-adj 0 \
    --v 1
  wait_for kubelet 90 "node $NODE_NAME Ready" \
    kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

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

# ------------------------------------------------------------------ kube-proxy

start_kube_proxy() {
  local kubeconfig
  # system:kube-proxy is bound to the system:node-proxier ClusterRole by default RBAC.
  kubeconfig="$("$HACK_DIR/cluster.sh" user system:kube-proxy)"
  cp "$kubeconfig" "$CONF_DIR/kube-proxy.kubeconfig"
  cat >"$CONF_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: "$CONF_DIR/kube-proxy.kubeconfig"
hostnameOverride: "$NODE_NAME"
bindAddress: "$NODE_IP"
clusterCIDR: "$POD_CIDR"
healthzBindAddress: "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT"
metricsBindAddress: "127.0.0.1:$KUBE_PROXY_METRICS_PORT"
# NodePorts on the node's own address only, not on every address of this machine.
nodePortAddresses: ["$NODE_IP/32"]
# See restrict_oom_score_adj in the containerd config: -999 cannot be set here.
oomScoreAdj: 0
# Leave the machine's conntrack sysctls alone (it is shared with other work).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start_component kube-proxy --config "$CONF_DIR/kube-proxy.yaml" --v 1
  wait_for kube-proxy 60 "kube-proxy /healthz" \
    curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
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

# ------------------------------------------------------------------ up / down

write_env_file() {
  cat >"$ENV_FILE" <<EOF
# Written by hack/node.sh up; read by tests/e2e.
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
NODE_LABEL=$NODE_LABEL
NODE_TAINT=$NODE_TAINT
POD_CIDR=$POD_CIDR
CLUSTER_DNS_IP=$CLUSTER_DNS_IP
PAUSE_IMAGE=$PAUSE_IMAGE
BUSYBOX_IMAGE=$BUSYBOX_IMAGE
CONTAINERD_ADDRESS=$CONTAINERD_ADDRESS
EOF
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
}

cmd_up() {
  local start=$SECONDS
  node_bins
  # A control plane that was restarted (new CA, empty etcd) does not know the node any
  # more, so a node whose processes run counts as up only while its Node is Ready.
  if all_running && kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1; then
    log "node $NODE_NAME already up"
    return 0
  fi
  timed "preflight and binaries" preflight
  # Leftovers of a crashed or half-started node: stop what is ours, then start clean.
  cmd_down quiet
  mkdir -p "$PID_DIR" "$LOG_DIR" "$CONF_DIR"
  rm -f "$LOG_DIR"/*.log
  setup_network
  add_hosts_entry
  write_cni_config
  timed "containerd" start_containerd
  timed "API server proxy for pods" start_apiserver_proxy
  timed "local images" "$HACK_DIR/node-images.sh" load
  timed "kubelet (node Ready)" start_kubelet
  timed "kube-proxy" start_kube_proxy
  timed "CoreDNS" start_coredns
  timed "local-path storage" start_local_path
  timed "metrics-server" start_metrics_server
  write_env_file
  log "node $NODE_NAME up in $((SECONDS - start))s (address $NODE_IP, pods $POD_CIDR)"
  kubectl_ get node "$NODE_NAME" -o wide >&2
}

# Sandboxes hold mounts (rootfs, /dev/shm, volumes), network namespaces and CNI
# allocations: take them down through the CRI while containerd still runs.
remove_pods() {
  running containerd || return 0
  local ids
  ids="$(crictl_ pods -q 2>/dev/null || true)"
  if [[ -n "$ids" ]]; then
    log "removing $(wc -l <<<"$ids") pod sandbox(es)"
    # shellcheck disable=SC2086
    crictl_ stopp $ids >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    crictl_ rmp -f $ids >/dev/null 2>&1 || true
  fi
}

# containerd-shim-runc-v2 processes outlive containerd by design; ours carry our socket.
stop_shims() {
  local pid
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $CONTAINERD_ADDRESS" || true); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$CONTAINERD_BIN/containerd-shim-runc-v2" ]] || continue
    kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_all() {
  local m
  # Deepest first; the paths are ours because they are under the node directory.
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "WARNING: could not unmount $m"
  done < <(awk -v d="$NODE_DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

api_up() { [[ -f "$KUBECONFIG_FILE" ]] && kubectl_ get --raw /readyz >/dev/null 2>&1; }

# del ARGS...: delete an object if it exists, without waiting.
del() { kubectl_ delete "$@" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }

cmd_down() {
  local quiet="${1:-}"
  node_bins
  # First the objects that make the control plane call into the node: the API server
  # keeps probing an APIService (an APIService whose server is gone also breaks discovery
  # for kubectl and kopf), and pods and Services stop pointing at it.
  if api_up; then
    del apiservice v1beta1.metrics.k8s.io
    del -n kube-system service metrics-server
    del -n kube-system endpointslice metrics-server-node
    del -n kube-system service kube-dns
    del -n kube-system endpointslice kube-dns-node
    del -n default endpointslice kubernetes-node-proxy
    del storageclass local-path
  fi
  if running kube-proxy || [[ -f "$CONF_DIR/kube-proxy.yaml" ]]; then
    stop_component kube-proxy
    # Removes the KUBE-* chains and rules that kube-proxy wrote.
    "$K8S_BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  stop_component metrics-server
  stop_component local-path-provisioner
  stop_component coredns
  stop_component kubelet
  stop_component apiserver-proxy
  remove_pods
  stop_component containerd
  stop_shims
  unmount_all
  remove_cgroup_root
  teardown_network
  remove_hosts_entry
  # Volumes of this node die with it: the next `up` registers a new node.
  rm -rf "$NODE_DIR/run" "$NODE_DIR/cni/ipam" "$STORAGE_DIR"
  rm -f "$ENV_FILE"
  # Last: a running kubelet would register its Node again.
  if api_up; then del node "$NODE_NAME"; fi
  [[ -n "$quiet" ]] || log "node down"
}

cmd_status() {
  local c pid rc=0
  node_bins
  for c in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$c")"
    if is_ours "$c" "$pid"; then
      printf '%-24s running (pid %s)\n' "$c" "$pid"
    else
      printf '%-24s stopped\n' "$c"
      rc=1
    fi
  done
  if [[ -f "$KUBECONFIG_FILE" ]] && kubectl_ get node "$NODE_NAME" >/dev/null 2>&1; then
    kubectl_ get node "$NODE_NAME" -o wide
  else
    echo "node $NODE_NAME is not registered"
    rc=1
  fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down)
    require_linux_root
    cmd_down
    ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
