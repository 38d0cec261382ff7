#!/usr/bin/env bash
# Puts the pinned binaries of a real node, beyond the Kubernetes ones, into the cache:
#   <cache>/containerd/<CONTAINERD_VERSION>/bin/{containerd,containerd-shim-runc-v2,ctr}
#   <cache>/cni-plugins/<CNI_PLUGINS_VERSION>/bin/{bridge,host-local,loopback,portmap,firewall,ptp}
#   <cache>/crictl/<CRICTL_VERSION>/bin/crictl
#   <cache>/coredns/<COREDNS_VERSION>/bin/coredns
#   <cache>/coredns/<COREDNS_VERSION>-kind/bin/coredns (kind's Corefile: hack/kind/coredns/main.go)
#   <cache>/local-path-provisioner/<LOCAL_PATH_VERSION>/bin/local-path-provisioner
#   <cache>/metrics-server/<METRICS_SERVER_VERSION>/bin/metrics-server
# each built from its Go module (versions in hack/versions.env) with the Go module proxy.
# runc is not built: Debian's runc (apt-get install runc) runs containers on this machine.
# Idempotent: a directory whose stamp matches is not rebuilt; a second run takes < 1 s.
#
# Usage: hack/node-binaries.sh [--check | --print-dirs | --force]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the recipe changes in a way that must rebuild cached binaries.
RECIPE_VERSION=1
# CoreDNS is pinned here, not in versions.env: hack/k8s-binaries.sh keys its stamp on every
# line of versions.env, so a new line there would rebuild all of Kubernetes.
# 1.12.1 is the CoreDNS that kubeadm 1.34 deploys.
COREDNS_VERSION="${COREDNS_VERSION:-1.12.1}"
# Rancher's local-path-provisioner (kind's default StorageClass); newest the proxy serves.
LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-0.0.30}"
# metrics-server (resource metrics for the HPA). 0.8.0 is the newest built on Kubernetes
# 0.33 libraries (0.9.0 needs Go 1.26 and 0.36); it is built against the 0.34.4 libraries of
# our Kubernetes build instead (MVS upgrade, see build), so their compiled packages in the
# Go build cache are reused.
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-0.8.0}"
# The plugins of hack/node/coredns_main.go; the suffix rebuilds when that list changes.
COREDNS_SUFFIX="+minimal.$(sha256sum "$HACK_DIR/node/coredns_main.go" | cut -c1-12)"
COREDNS_KIND_SUFFIX="+kind.$(sha256sum "$HACK_DIR/kind/coredns/main.go" | cut -c1-12)"
CACHE_ROOT="$(modelyard_cache_root)"
CONTAINERD_DIR="$CACHE_ROOT/containerd/$CONTAINERD_VERSION"
CNI_DIR="$CACHE_ROOT/cni-plugins/$CNI_PLUGINS_VERSION"
CRICTL_DIR="$CACHE_ROOT/crictl/$CRICTL_VERSION"
COREDNS_DIR="$CACHE_ROOT/coredns/$COREDNS_VERSION"
COREDNS_KIND_DIR="$CACHE_ROOT/coredns/$COREDNS_VERSION-kind"
LOCAL_PATH_DIR="$CACHE_ROOT/local-path-provisioner/$LOCAL_PATH_VERSION"
METRICS_SERVER_DIR="$CACHE_ROOT/metrics-server/$METRICS_SERVER_VERSION"
# ptp: kind's CNI (hack/kind/cni.yaml). A plugin added here is built alone into the current
# directory (see below): the others, in use by a running node, stay where they are.
CNI_PLUGINS=(bridge host-local loopback portmap firewall ptp)

force=0
check=0
for arg in "$@"; do
  case "$arg" in
    --print-dirs)
      printf 'CONTAINERD_BIN=%s\nCNI_BIN=%s\nCRICTL_BIN=%s\nCOREDNS_BIN=%s\nLOCAL_PATH_BIN=%s\nMETRICS_SERVER_BIN=%s\nCOREDNS_KIND_BIN=%s\n' \
        "$CONTAINERD_DIR/bin" "$CNI_DIR/bin" "$CRICTL_DIR/bin" "$COREDNS_DIR/bin" "$LOCAL_PATH_DIR/bin" \
        "$METRICS_SERVER_DIR/bin" "$COREDNS_KIND_DIR/bin"
      exit 0
      ;;
    --check) check=1 ;;
    --force) force=1 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

[[ "$(uname -s)" == Linux ]] || die "a real node needs Linux (this is $(uname -s))"
case "$(uname -m)" in
  x86_64 | amd64) goarch=amd64 ;;
  aarch64 | arm64) goarch=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

stamp_of() { printf 'version=%s recipe=%s platform=linux/%s\n' "$1" "$RECIPE_VERSION" "$goarch"; }

# stamped DIR VERSION: DIR's stamp matches (its binaries were built by this recipe).
stamped() {
  [[ $force -eq 0 && -f "$1/stamp" && "$(cat "$1/stamp")" == "$(stamp_of "$2")" ]]
}

# current DIR VERSION BINARY...: the stamp matches and every binary is there.
current() {
  local dir="$1" version="$2" b
  shift 2
  stamped "$dir" "$version" || return 1
  for b in "$@"; do [[ -x "$dir/bin/$b" ]] || return 1; done
}

all_current() {
  current "$CONTAINERD_DIR" "$CONTAINERD_VERSION" containerd containerd-shim-runc-v2 ctr &&
    current "$CNI_DIR" "$CNI_PLUGINS_VERSION" "${CNI_PLUGINS[@]}" &&
    current "$CRICTL_DIR" "$CRICTL_VERSION" crictl &&
    current "$COREDNS_DIR" "$COREDNS_VERSION$COREDNS_SUFFIX" coredns &&
    current "$COREDNS_KIND_DIR" "$COREDNS_VERSION$COREDNS_KIND_SUFFIX" coredns &&
    current "$LOCAL_PATH_DIR" "$LOCAL_PATH_VERSION" local-path-provisioner &&
    current "$METRICS_SERVER_DIR" "$METRICS_SERVER_VERSION+k8s$K8S_STAGING_VERSION" metrics-server
}

if [[ $check -eq 1 ]]; then
  all_current
  exit
fi
if all_current; then
  log "node binaries up to date"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "building the node binaries needs Go >= 1.21 (go is not on PATH)"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.node-binaries.lock"
flock 9

# Static binaries, the same flags as hack/k8s-binaries.sh (so the Go build cache is shared).
export CGO_ENABLED=0 GOOS=linux GOARCH="$goarch" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
start=$SECONDS

# build DIR VERSION LDFLAGS TAGS MODULE PACKAGE...: builds the packages of MODULE@vVERSION
# into DIR/bin. Through a generated wrapper module (DIR/src/go.mod), not `go install m@v`:
# containerd's go.mod has exclude lines, which `go install m@v` refuses; the wrapper
# repeats them so that the build resolves exactly like containerd's own.
# With MAIN=file.go NAME=binary set, it builds that main package (in the wrapper) instead.
# With ADD=1, DIR is stamped by this recipe already and the packages are added to its bin:
# one rename per new binary, the existing ones untouched.
build() {
  local dir="$1" version="$2" ldflags="$3" tags="$4" module="$5" t=$SECONDS mod p
  shift 5
  rm -rf "$dir/bin.new" "$dir/src"
  mkdir -p "$dir/bin.new" "$dir/src"
  if [[ -n "${MAIN:-}" ]]; then cp "$MAIN" "$dir/src/main.go"; fi
  mod="$(go mod download -json "$module@v$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$mod" ]] || die "could not download $module@v$version"
  {
    echo "// Generated by hack/node-binaries.sh; do not edit."
    echo "module modelyard.local/node-build"
    echo
    echo "go $GO_MIN_VERSION"
    echo
    echo "require $module v$version"
    for p in ${REQUIRE:-}; do echo "require ${p%@*} ${p#*@}"; done
    echo
    sed -n '/^exclude (/,/^)/p; /^exclude [^(]/p' "$mod"
    echo
    if [[ -z "${MAIN:-}" ]]; then for p in "$@"; do echo "tool $p"; done; fi
  } >"$dir/src/go.mod"
  log "building $module v$version: ${MAIN:-$*}"
  local out=("$dir/bin.new/") pkgs=("$@")
  if [[ -n "${MAIN:-}" ]]; then out=("$dir/bin.new/$NAME"); pkgs=(.); fi
  (cd "$dir/src" && GOFLAGS=-mod=mod go mod tidy &&
    GOFLAGS="-buildvcs=false -mod=mod" go build -trimpath -tags "$tags" \
      -ldflags "-s -w $ldflags" -o "${out[@]}" "${pkgs[@]}")
  if [[ -n "${ADD:-}" ]]; then
    mv -f "$dir"/bin.new/* "$dir/bin/"
    rmdir "$dir/bin.new"
    log "built in $((SECONDS - t))s, added to $dir/bin: $*"
    return
  fi
  rm -rf "${dir:?}/bin"
  mv "$dir/bin.new" "$dir/bin"
  stamp_of "$version${STAMP_SUFFIX:-}" >"$dir/stamp"
  log "built in $((SECONDS - t))s: $(cd "$dir/bin" && echo *)"
}

if ! current "$CONTAINERD_DIR" "$CONTAINERD_VERSION" containerd containerd-shim-runc-v2 ctr; then
  m=github.com/containerd/containerd/v2
  # no_btrfs: the btrfs snapshotter needs cgo and btrfs headers; we use overlayfs.
  build "$CONTAINERD_DIR" "$CONTAINERD_VERSION" \
    "-X $m/version.Version=v$CONTAINERD_VERSION -X $m/version.Revision=modelyard" "no_btrfs" \
    "$m" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
fi

if ! current "$CNI_DIR" "$CNI_PLUGINS_VERSION" "${CNI_PLUGINS[@]}"; then
  m=github.com/containernetworking/plugins
  # Stamped by this recipe: only plugins added to CNI_PLUGINS since are missing.
  add=""
  plugins=("${CNI_PLUGINS[@]}")
  if stamped "$CNI_DIR" "$CNI_PLUGINS_VERSION"; then
    add=1
    plugins=()
    for p in "${CNI_PLUGINS[@]}"; do [[ -x "$CNI_DIR/bin/$p" ]] || plugins+=("$p"); done
  fi
  pkgs=()
  for p in "${plugins[@]}"; do
    case "$p" in
      bridge | loopback | ptp) pkgs+=("$m/plugins/main/$p") ;;
      host-local) pkgs+=("$m/plugins/ipam/$p") ;;
      portmap | firewall) pkgs+=("$m/plugins/meta/$p") ;;
    esac
  done
  ADD="$add" build "$CNI_DIR" "$CNI_PLUGINS_VERSION" \
    "-X $m/pkg/utils/buildversion.BuildVersion=v$CNI_PLUGINS_VERSION" "" "$m" "${pkgs[@]}"
fi

if ! current "$CRICTL_DIR" "$CRICTL_VERSION" crictl; then
  build "$CRICTL_DIR" "$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" "" \
    sigs.k8s.io/cri-tools sigs.k8s.io/cri-tools/cmd/crictl
fi

if ! current "$COREDNS_DIR" "$COREDNS_VERSION$COREDNS_SUFFIX" coredns; then
  MAIN="$HACK_DIR/node/coredns_main.go" NAME=coredns STAMP_SUFFIX="$COREDNS_SUFFIX" \
    build "$COREDNS_DIR" "$COREDNS_VERSION" \
    "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION" "" github.com/coredns/coredns
fi

if ! current "$COREDNS_KIND_DIR" "$COREDNS_VERSION$COREDNS_KIND_SUFFIX" coredns; then
  MAIN="$HACK_DIR/kind/coredns/main.go" NAME=coredns STAMP_SUFFIX="$COREDNS_KIND_SUFFIX" \
    build "$COREDNS_KIND_DIR" "$COREDNS_VERSION" \
    "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION" "" github.com/coredns/coredns
fi

if ! current "$LOCAL_PATH_DIR" "$LOCAL_PATH_VERSION" local-path-provisioner; then
  build "$LOCAL_PATH_DIR" "$LOCAL_PATH_VERSION" "" "" \
    github.com/rancher/local-path-provisioner github.com/rancher/local-path-provisioner
fi

if ! current "$METRICS_SERVER_DIR" "$METRICS_SERVER_VERSION+k8s$K8S_STAGING_VERSION" metrics-server; then
  m=sigs.k8s.io/metrics-server
  req=""
  for k in api apimachinery apiserver client-go component-base kms metrics component-helpers; do
    req+=" k8s.io/$k@v$K8S_STAGING_VERSION"
  done
  REQUIRE="$req" STAMP_SUFFIX="+k8s$K8S_STAGING_VERSION" build "$METRICS_SERVER_DIR" "$METRICS_SERVER_VERSION" \
    "-X k8s.io/client-go/pkg/version.gitVersion=v$METRICS_SERVER_VERSION" \
    "" "$m" "$m/cmd/metrics-server"
fi

log "node binaries ready after $((SECONDS - start))s"
