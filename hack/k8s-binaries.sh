#!/usr/bin/env bash
# Puts pinned upstream binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, kube-proxy, kwok, helm) into
#   ${MODELYARD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/modelyard}/k8s/<K8S_VERSION>/bin
# built from their Go modules (versions in hack/versions.env). Without Go but with
# internet access it downloads the official release binaries instead.
# Idempotent: a stamp keyed by the versions makes a second run a no-op; a second stamp keyed
# by helm's own recipe rebuilds helm alone when only that recipe changed.
# With --kubeadm it also builds kubeadm (kind's node image needs it), as a step of its own
# with its own stamp: adding it never rebuilds (or invalidates) the binaries above.
#
# Usage: hack/k8s-binaries.sh [--print-bin-dir | --check | --force | --kubeadm]...
#   --print-bin-dir  print the bin directory and exit
#   --check          exit 0 when the binaries are built and current, 1 otherwise
#   --force          rebuild even when the stamp says the binaries are current
#   --kubeadm        kubeadm too (with --check: check it too)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the recipe changes in a way that must rebuild cached binaries.
RECIPE_VERSION=1
# Bump when only helm's recipe changes: rebuilds helm alone, not Kubernetes.
# 2: helm's default Kubernetes version set as upstream sets it (1.20 before).
HELM_RECIPE_VERSION=2
# Bump when only kubeadm's recipe changes: rebuilds kubeadm alone.
KUBEADM_RECIPE_VERSION=1
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

force=0
check=0
kubeadm=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) printf '%s\n' "$K8S_BIN_DIR"; exit 0 ;;
    --check) check=1 ;;
    --force) force=1 ;;
    --kubeadm) kubeadm=1 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

goos="$(uname -s | tr '[:upper:]' '[:lower:]')"
case "$(uname -m)" in
  x86_64 | amd64) goarch=amd64 ;;
  aarch64 | arm64) goarch=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

stamp_key="$({
  grep -Ev '^\s*(#|$)' "$HACK_DIR/versions.env"
  echo "recipe=$RECIPE_VERSION platform=$goos/$goarch"
} | sha256sum | cut -d' ' -f1)"
stamp_file="$K8S_CACHE_DIR/stamp"
helm_stamp_key="helm=$HELM_VERSION recipe=$HELM_RECIPE_VERSION platform=$goos/$goarch"
helm_stamp_file="$K8S_CACHE_DIR/helm.stamp"
# kubeadm is built from the same Kubernetes module: keyed on the main stamp as well.
kubeadm_stamp_key="k8s=$stamp_key recipe=$KUBEADM_RECIPE_VERSION"
kubeadm_stamp_file="$K8S_CACHE_DIR/kubeadm.stamp"

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$K8S_BIN_DIR/$b" ]] || return 1; done
}

stamp_is() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]; }

# Everything but helm's own recipe is current.
all_but_helm_current() {
  [[ $force -eq 0 ]] && all_present && stamp_is "$stamp_file" "$stamp_key"
}

main_up_to_date() {
  all_but_helm_current && stamp_is "$helm_stamp_file" "$helm_stamp_key"
}

kubeadm_up_to_date() {
  ((!kubeadm)) || { [[ $force -eq 0 && -x "$K8S_BIN_DIR/kubeadm" ]] &&
    stamp_is "$kubeadm_stamp_file" "$kubeadm_stamp_key"; }
}

up_to_date() { main_up_to_date && kubeadm_up_to_date; }

if [[ $check -eq 1 ]]; then
  up_to_date
  exit
fi

mkdir -p "$K8S_CACHE_DIR"
if up_to_date; then
  log "binaries up to date in $K8S_BIN_DIR"
  exit 0
fi

# One builder at a time per cache directory (CI and a test fixture may both call us).
exec 9>"$K8S_CACHE_DIR/.lock"
flock 9
if up_to_date; then
  log "binaries up to date in $K8S_BIN_DIR (built by a concurrent run)"
  exit 0
fi

start=$SECONDS
staging="$K8S_CACHE_DIR/bin.new"
rm -rf "$staging"
mkdir -p "$staging"

# ---------------------------------------------------------------- from source
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

have_go() {
  command -v go >/dev/null 2>&1 || return 1
  local v
  v="$(go env GOVERSION 2>/dev/null)" || return 1
  v="${v#go}"
  # Go >= 1.21 fetches a newer toolchain itself (GOTOOLCHAIN=auto) when a go.mod asks for it.
  version_ge "$v" "1.21.0"
}

# Flags shared by every build so that the Go build cache is reused between them.
go_build_env() {
  export CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  export GOFLAGS="-buildvcs=false -mod=mod"
}

# Wrapper module for k8s.io/kubernetes: its go.mod points the staging modules at
# ./staging/src/..., which only works inside its own repository, so we repeat each of
# those replace lines with the matching published v0.x release.
# write_kubernetes_module DIR CMD...: the wrapper module with CMD... as its tools.
write_kubernetes_module() {
  local dir="$1" k8s_mod staging
  shift
  k8s_mod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$k8s_mod" ]] || die "could not download k8s.io/kubernetes@v$K8S_VERSION"
  staging="$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$k8s_mod")"
  [[ -n "$staging" ]] || die "no staging replace lines found in $k8s_mod"
  {
    echo "// Generated by hack/k8s-binaries.sh; do not edit."
    echo "module modelyard.local/k8s-build"
    echo
    echo "go $GO_MIN_VERSION"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m v$K8S_STAGING_VERSION"; done
    echo ")"
    echo
    echo "tool ("
    local c
    for c in "$@"; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo ")"
  } >"$dir/go.mod"
}

write_etcd_module() {
  local dir="$1"
  cat >"$dir/go.mod" <<MOD
// Generated by hack/k8s-binaries.sh; do not edit.
module modelyard.local/etcd-build

go $GO_MIN_VERSION

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION

tool go.etcd.io/etcd/server/v3
MOD
}

build_from_source() {
  local src="$K8S_CACHE_DIR/src" t
  mkdir -p "$src/kubernetes" "$src/etcd"
  log "Go: $(go version)"

  t=$SECONDS
  log "etcd v$ETCD_VERSION: resolving modules"
  write_etcd_module "$src/etcd"
  (cd "$src/etcd" && go mod tidy)
  log "etcd v$ETCD_VERSION: building"
  (cd "$src/etcd" && go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" \
    -o "$staging/etcd" go.etcd.io/etcd/server/v3)
  log "etcd built in $((SECONDS - t))s"

  t=$SECONDS
  log "kubernetes v$K8S_VERSION: resolving modules"
  build_kubernetes "$src/kubernetes" "${K8S_CMDS[@]}"
  log "kubernetes built in $((SECONDS - t))s"

  # kwok and helm have no replace lines, so `go install mod@version` builds each
  # exactly against its own go.mod.
  t=$SECONDS
  log "kwok v$KWOK_VERSION: building"
  GOBIN="$staging" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  log "kwok built in $((SECONDS - t))s"

  build_helm
}

# build_kubernetes SRC_DIR CMD...: the commands of k8s.io/kubernetes, in one go build (shared
# packages), into $staging.
build_kubernetes() {
  local dir="$1" pkgs=() c vpkg ldflags
  shift
  mkdir -p "$dir"
  write_kubernetes_module "$dir" "$@"
  (cd "$dir" && go mod tidy)
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  # The same version stamps that the upstream release build sets (hack/lib/version.sh).
  ldflags="-s -w"
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=v$K8S_VERSION -X $vpkg.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $vpkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $vpkg.gitTreeState=clean"
    ldflags+=" -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "kubernetes v$K8S_VERSION: building $*"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$staging/" "${pkgs[@]}")
}

# kubeadm in a wrapper module of its own (its src dir too): the main build's module and
# stamp stay as they are.
build_kubeadm() {
  local t=$SECONDS
  build_kubernetes "$K8S_CACHE_DIR/src/kubeadm" kubeadm
  log "kubeadm built in $((SECONDS - t))s"
}

download_kubeadm() {
  log "downloading kubeadm v$K8S_VERSION"
  curl -fsSL -o "$staging/kubeadm" "https://dl.k8s.io/release/v$K8S_VERSION/bin/$goos/$goarch/kubeadm"
  chmod +x "$staging/kubeadm"
}

# Without a --kube-version flag, helm renders (and lints) for the Kubernetes version set at
# link time, 1.20 when none is set. Upstream's Makefile sets 1.<minor of its client-go> (the
# version its client libraries speak); so do we, read from helm's own go.mod, so that a
# source-built helm equals the release binary.
build_helm() {
  local t=$SECONDS helm_mod client_go major minor ldflags pkg
  helm_mod="$(go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$helm_mod" ]] || die "could not download helm.sh/helm/v3@v$HELM_VERSION"
  client_go="$(sed -n 's#^\s*k8s\.io/client-go v\([0-9]*\.[0-9]*\)\..*#\1#p' "$helm_mod")"
  [[ -n "$client_go" ]] || die "no k8s.io/client-go requirement found in $helm_mod"
  major=$((${client_go%%.*} + 1)) # client-go v0.N is Kubernetes 1.N
  minor="${client_go#*.}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  log "helm v$HELM_VERSION: building (default Kubernetes version $major.$minor)"
  GOBIN="$staging" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  log "helm built in $((SECONDS - t))s"
}

# ------------------------------------------------------------- from releases
download_releases() {
  local tmp b
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  for b in "${K8S_CMDS[@]}"; do
    log "downloading $b v$K8S_VERSION"
    curl -fsSL -o "$staging/$b" "https://dl.k8s.io/release/v$K8S_VERSION/bin/$goos/$goarch/$b"
  done
  log "downloading etcd v$ETCD_VERSION"
  curl -fsSL "https://github.com/etcd-io/etcd/releases/download/v$ETCD_VERSION/etcd-v$ETCD_VERSION-$goos-$goarch.tar.gz" |
    tar -xz -C "$tmp"
  mv "$tmp/etcd-v$ETCD_VERSION-$goos-$goarch/etcd" "$staging/etcd"
  log "downloading kwok v$KWOK_VERSION"
  curl -fsSL -o "$staging/kwok" \
    "https://github.com/kubernetes-sigs/kwok/releases/download/v$KWOK_VERSION/kwok-$goos-$goarch"
  chmod +x "$staging"/*
  download_helm
}

download_helm() {
  log "downloading helm v$HELM_VERSION"
  curl -fsSL "https://get.helm.sh/helm-v$HELM_VERSION-$goos-$goarch.tar.gz" |
    tar -xzO "$goos-$goarch/helm" >"$staging/helm"
  chmod +x "$staging/helm"
}

if have_go; then
  from_source=1
  go_build_env
elif command -v curl >/dev/null 2>&1 && curl -fsS -o /dev/null --max-time 10 "https://dl.k8s.io/"; then
  from_source=0
  log "no usable Go toolchain: downloading official release binaries"
else
  die "need Go >= 1.21 (or internet access to download releases) to get the Kubernetes binaries"
fi

built=()
if main_up_to_date; then
  main_built=0
elif all_but_helm_current; then
  main_built=1
  log "only helm's recipe changed: rebuilding helm alone"
  built=(helm)
  if ((from_source)); then build_helm; else download_helm; fi
else
  main_built=1
  built=("${BINARIES[@]}")
  if ((from_source)); then build_from_source; else download_releases; fi
fi
if ! kubeadm_up_to_date; then
  built+=(kubeadm)
  if ((from_source)); then build_kubeadm; else download_kubeadm; fi
fi

for b in "${built[@]}"; do [[ -x "$staging/$b" ]] || die "missing $b after build"; done
mkdir -p "$K8S_BIN_DIR"
# One rename per binary: a cluster running from this directory never sees it half-written.
for b in "${built[@]}"; do mv -f "$staging/$b" "$K8S_BIN_DIR/$b"; done
rmdir "$staging"
if ((main_built)); then
  printf '%s\n' "$stamp_key" >"$stamp_file"
  printf '%s\n' "$helm_stamp_key" >"$helm_stamp_file"
fi
if ((kubeadm)); then printf '%s\n' "$kubeadm_stamp_key" >"$kubeadm_stamp_file"; fi
log "binaries ready in $K8S_BIN_DIR after $((SECONDS - start))s"
"$K8S_BIN_DIR/kube-apiserver" --version >&2
