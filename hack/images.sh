#!/usr/bin/env bash
# Builds the container images: <prefix>/operator, <prefix>/trainer and <prefix>/server, tagged
# with the project's version, from operator/Dockerfile, trainer_image/Dockerfile and
# server_image/Dockerfile (build context: the repository root, filtered by .dockerignore).
#
# Usage: hack/images.sh [--base IMAGE|local] [--ca-bundle FILE] [--network NAME] [NAME...]
#   NAME             operator, trainer, server (default: all three, in that order)
#   --base IMAGE     base of every stage (default python:3.11-slim-bookworm, from a registry);
#   --base local     the debootstrap base of hack/base-image.sh, made first when missing:
#                    for machines that reach PyPI but no container registry
#   --ca-bundle FILE CA bundle that pip inside the build trusts (a TLS-intercepting proxy);
#                    default: $MODELYARD_CA_BUNDLE, else $PIP_CERT when it names a file
#   --network NAME   network of the build containers (e.g. host where the daemon has no bridge)
# Environment: MODELYARD_IMAGE_PREFIX (modelyard), MODELYARD_IMAGE_TAG (project version),
#              MODELYARD_BASE_IMAGE, MODELYARD_BUILD_NETWORK, DOCKER (docker).
# Prints the build time and the size of each image.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEFAULT_BASE=python:3.11-slim-bookworm
LOCAL_BASE="${MODELYARD_LOCAL_BASE:-modelyard/base:bookworm-python3.11}"
docker="${DOCKER:-docker}"
prefix="${MODELYARD_IMAGE_PREFIX:-modelyard}"
base="${MODELYARD_BASE_IMAGE:-$DEFAULT_BASE}"
network="${MODELYARD_BUILD_NETWORK:-}"
ca_bundle="${MODELYARD_CA_BUNDLE:-}"
if [[ -z "$ca_bundle" && -n "${PIP_CERT:-}" && -f "${PIP_CERT:-}" ]]; then
  ca_bundle="$PIP_CERT"
fi

names=()
while (($#)); do
  case "$1" in
    --base) base="${2:?--base needs an image or 'local'}"; shift 2 ;;
    --ca-bundle) ca_bundle="${2:?--ca-bundle needs a file}"; shift 2 ;;
    --network) network="${2:?--network needs a name}"; shift 2 ;;
    operator | trainer | server) names+=("$1"); shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
((${#names[@]})) || names=(operator trainer server)

dockerfile_of() {
  case "$1" in
    operator) echo operator/Dockerfile ;;
    trainer) echo trainer_image/Dockerfile ;;
    server) echo server_image/Dockerfile ;;
  esac
}

"$docker" info >/dev/null 2>&1 || die "the Docker engine does not answer ('$docker info' failed)"

if [[ "$base" == local ]]; then
  base="$LOCAL_BASE"
  if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
    log "local base $base is missing: making it with hack/base-image.sh"
    "$HACK_DIR/base-image.sh" "$base"
  fi
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n1)"
[[ -n "$version" ]] || die "no version in pyproject.toml"
tag="${MODELYARD_IMAGE_TAG:-$version}"
# What goes into the images (see .dockerignore). Their labels name the last commit that
# changed these, at that commit's time: a commit elsewhere (tests, docs) leaves the image ids
# as they were, so nothing has to be copied to a node again.
inputs=(pyproject.toml uv.lock README.md .dockerignore operator trainer_image server_image storage)
revision="$(git -C "$REPO_ROOT" log -1 --format=%H -- "${inputs[@]}" 2>/dev/null || true)"
created="$(git -C "$REPO_ROOT" log -1 --format=%cI -- "${inputs[@]}" 2>/dev/null || true)"
revision="${revision:-unknown}"
created="${created:-1970-01-01T00:00:00Z}"
if [[ "$revision" != unknown ]] && [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- \
  "${inputs[@]}" 2>/dev/null)" ]]; then
  revision+="-dirty"
fi

# The CA bundle travels in the build context under a name of its own (see the Dockerfiles);
# it is removed again afterwards so that no later build picks up a stale one.
ca_dir="$REPO_ROOT/build/images"
ca_copy="$ca_dir/ca-bundle.pem"
rm -f "$ca_copy"
if [[ -n "$ca_bundle" ]]; then
  [[ -s "$ca_bundle" ]] || die "CA bundle $ca_bundle is missing or empty"
  mkdir -p "$ca_dir"
  cp "$ca_bundle" "$ca_copy"
  trap 'rm -f "$ca_copy"' EXIT
  log "pip inside the builds trusts $ca_bundle"
fi

args=(--build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version"
  --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
[[ -z "$network" ]] || args+=(--network "$network")

summary=()
for name in "${names[@]}"; do
  image="$prefix/$name:$tag"
  log "building $image from $(dockerfile_of "$name") on $base"
  start=$SECONDS
  "$docker" build "${args[@]}" -f "$REPO_ROOT/$(dockerfile_of "$name")" -t "$image" "$REPO_ROOT"
  seconds=$((SECONDS - start))
  bytes="$("$docker" image inspect --format '{{.Size}}' "$image")"
  summary+=("$(printf '%-28s %6ds %8d MB' "$image" "$seconds" "$((bytes / 1000000))")")
done

# A rebuild leaves the previous image untagged (6 GB for the trainer): remove ours only.
"$docker" image prune -f --filter "label=org.opencontainers.image.source=https://github.com/modelyard/modelyard" >/dev/null

log "built on $base:"
printf '%s\n' "${summary[@]}" >&2
