# The real node's network: its address, the pod subnet's rules, the /etc/hosts line.
# Sourced by hack/node.sh (which defines the paths and helpers these functions use).
# shellcheck shell=bash

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
