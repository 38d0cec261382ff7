#!/usr/bin/env bash
# `make kind-down`: deletes the kind cluster of hack/kind/up.sh and stops kind's Docker engine.
# The cached binaries and the engine's images stay (a later kind-up starts from them).
#
# Usage: hack/kind/down.sh     Environment: KIND_CLUSTER (modelyard)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=version.env
source "$HACK_DIR/kind/version.env"
cluster="${KIND_CLUSTER:-modelyard}"
here="$HACK_DIR/kind"
kind="$(modelyard_cache_root)/kind/$KIND_VERSION/bin/kind"
state="$REPO_ROOT/.cluster-kind"

if [[ -x "$kind" && -x "$("$here/engine.sh" cli)" ]]; then
  # The engine keeps stopped nodes in its data root: it must run for kind to delete them.
  "$here/engine.sh" up
  eval "$("$here/engine.sh" env)"
  mkdir -p "$state/bin"
  ln -sfn "$("$here/engine.sh" cli)" "$state/bin/docker"
  export PATH="$state/bin:$PATH"
  KUBECONFIG="$state/kubeconfig" "$kind" delete cluster --name "$cluster"
  # A network left behind would leave its bridge on the host once the engine is gone.
  if docker network inspect kind >/dev/null 2>&1; then docker network rm kind >/dev/null; fi
fi
"$here/engine.sh" down
rm -rf "$state"
log "kind cluster $cluster deleted, engine stopped"
