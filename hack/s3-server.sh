#!/usr/bin/env bash
# Builds the S3-compatible test server (versitygw, an S3 gateway over a POSIX directory)
# from its Go module into
#   ${MODELYARD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/modelyard}/versitygw/<VERSITYGW_VERSION>/bin
# and optionally runs it. Idempotent: an existing binary of the pinned version is reused.
#
# Usage: hack/s3-server.sh [build | --print-bin | --check | run DATA_DIR ADDRESS]
#   build        (default) build the binary when missing
#   --print-bin  print the binary's path and exit
#   --check      exit 0 when the binary is built, 1 otherwise
#   run          serve DATA_DIR on ADDRESS (e.g. 127.0.0.1:9000) in the foreground; the root
#                keys come from $S3_ACCESS_KEY / $S3_SECRET_KEY (the tests start it themselves)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# github.com/versity/versitygw (Apache-2.0), an S3 gateway over a POSIX directory. Pinned here,
# not in versions.env: hack/k8s-binaries.sh keys its cache stamp on every line of that file,
# so a pin there would rebuild all the Kubernetes binaries.
VERSITYGW_VERSION="${VERSITYGW_VERSION:-1.8.0}"

S3_CACHE_DIR="$(modelyard_cache_root)/versitygw/$VERSITYGW_VERSION"
S3_BIN="$S3_CACHE_DIR/bin/versitygw"

build() {
  if [[ -x "$S3_BIN" ]]; then
    log "versitygw v$VERSITYGW_VERSION is built: $S3_BIN"
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is needed to build versitygw (see hack/README.md)"
  mkdir -p "$S3_CACHE_DIR"
  # One builder at a time per cache directory (CI and a test fixture may both call us).
  exec 9>"$S3_CACHE_DIR/.lock"
  flock 9
  if [[ -x "$S3_BIN" ]]; then
    return 0
  fi
  local start=$SECONDS staging="$S3_CACHE_DIR/bin.new"
  rm -rf "$staging"
  mkdir -p "$staging"
  log "versitygw v$VERSITYGW_VERSION: building (Go: $(go version))"
  # No replace lines upstream, so `go install mod@version` builds it against its own go.mod.
  GOBIN="$staging" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "-s -w" \
    "github.com/versity/versitygw/cmd/versitygw@v$VERSITYGW_VERSION"
  rm -rf "${S3_CACHE_DIR:?}/bin"
  mv "$staging" "$S3_CACHE_DIR/bin"
  log "versitygw built in $((SECONDS - start))s"
}

case "${1:-build}" in
  build) build ;;
  --print-bin) printf '%s\n' "$S3_BIN" ;;
  --check) [[ -x "$S3_BIN" ]] ;;
  run)
    [[ $# -eq 3 ]] || die "usage: hack/s3-server.sh run DATA_DIR ADDRESS"
    build
    mkdir -p "$2"
    : "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}" "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
    ROOT_ACCESS_KEY_ID="$S3_ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
      exec "$S3_BIN" --port "$3" --quiet posix "$2"
    ;;
  *) die "unknown argument: $1" ;;
esac
