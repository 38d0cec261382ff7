#!/usr/bin/env bash
# Builds Prometheus (the server and promtool) from its Go module into
#   ${MODELYARD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/modelyard}/prometheus/<PROMETHEUS_VERSION>/bin
# for the monitoring tests (`promtool test rules` on the chart's PrometheusRule, and a real
# server scraping the model server). Idempotent: a stamp keyed by the version and the recipe
# makes a second run a no-op.
#
# Usage: hack/prometheus.sh [build | --print-bin-dir | --check]
#   build           (default) build the binaries when missing or stale
#   --print-bin-dir print the bin directory and exit
#   --check         exit 0 when the binaries are built and current, 1 otherwise
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# github.com/prometheus/prometheus (Apache-2.0). Prometheus 3.x is published as module versions
# v0.3xx.y (v0.316.0 is Prometheus 3.16.0); its go.mod needs go >= 1.26.7. Pinned here, not in
# versions.env: hack/k8s-binaries.sh keys its cache stamp on every line of that file, so a pin
# there would rebuild all the Kubernetes binaries.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-0.316.0}"
# Bump when the recipe changes in a way that must rebuild the cached binaries.
RECIPE_VERSION=1
BINARIES=(prometheus promtool)

PROM_CACHE_DIR="$(modelyard_cache_root)/prometheus/$PROMETHEUS_VERSION"
PROM_BIN_DIR="$PROM_CACHE_DIR/bin"
stamp_key="prometheus=$PROMETHEUS_VERSION recipe=$RECIPE_VERSION"
stamp_file="$PROM_CACHE_DIR/stamp"

current() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$PROM_BIN_DIR/$b" ]] || return 1
  done
  [[ -f "$stamp_file" ]] && [[ "$(cat "$stamp_file")" == "$stamp_key" ]]
}

build() {
  if current; then
    log "prometheus v$PROMETHEUS_VERSION is built: $PROM_BIN_DIR"
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is needed to build prometheus (see hack/README.md)"
  mkdir -p "$PROM_CACHE_DIR"
  # One builder at a time per cache directory (make and a test fixture may both call us).
  exec 9>"$PROM_CACHE_DIR/.lock"
  flock 9
  if current; then
    return 0
  fi
  local start=$SECONDS staging="$PROM_CACHE_DIR/bin.new" module="github.com/prometheus/prometheus"
  # Module v0.3MM.P is release 3.MM.P (the version `prometheus --version` reports).
  local minor_patch="${PROMETHEUS_VERSION#0.3}"
  local release="3.$((10#${minor_patch%%.*})).${minor_patch#*.}"
  rm -rf "$staging"
  mkdir -p "$staging"
  log "prometheus v$PROMETHEUS_VERSION: building prometheus and promtool (Go: $(go version))"
  # Tags: without builtinassets the web UI is not embedded (the tests use the HTTP API only);
  # remove_all_sd drops the cloud service discoveries (most of the build: the AWS, Azure, GCE...
  # SDKs) but static, file and HTTP; enable_kubernetes_sd keeps Kubernetes' for a cluster.
  # No replace lines upstream, so `go install mod@version` builds against its own go.mod.
  GOBIN="$staging" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS=-buildvcs=false \
    nice -n 19 go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w \
-X github.com/prometheus/common/version.Version=$release \
-X github.com/prometheus/common/version.Branch=module" \
    "$module/cmd/prometheus@v$PROMETHEUS_VERSION" "$module/cmd/promtool@v$PROMETHEUS_VERSION"
  rm -rf "$PROM_BIN_DIR"
  mv "$staging" "$PROM_BIN_DIR"
  printf '%s\n' "$stamp_key" >"$stamp_file"
  log "prometheus built in $((SECONDS - start))s"
}

case "${1:-build}" in
  build) build ;;
  --print-bin-dir) printf '%s\n' "$PROM_BIN_DIR" ;;
  --check) current ;;
  *) die "unknown argument: $1" ;;
esac
