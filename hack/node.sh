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

# shellcheck source=hack/node/network.sh
source "$HACK_DIR/node/network.sh"
# shellcheck source=hack/node/addons.sh
source "$HACK_DIR/node/addons.sh"

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
