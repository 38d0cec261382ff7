# Shared helpers for hack/*.sh (sourced, not executed).
# shellcheck shell=bash
# The variables below are for the scripts that source this file.
# shellcheck disable=SC2034

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"

# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

# Cache root: $MODELYARD_CACHE wins, then $XDG_CACHE_HOME/modelyard, then ~/.cache/modelyard.
modelyard_cache_root() {
  if [[ -n "${MODELYARD_CACHE:-}" ]]; then
    printf '%s\n' "$MODELYARD_CACHE"
  else
    printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/modelyard"
  fi
}

K8S_CACHE_DIR="$(modelyard_cache_root)/k8s/$K8S_VERSION"
K8S_BIN_DIR="$K8S_CACHE_DIR/bin"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
