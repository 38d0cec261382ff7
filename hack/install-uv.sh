#!/usr/bin/env bash
# Puts uv into .tools/bin when the machine has none (uv is a PyPI package, so pip can fetch it).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v uv >/dev/null; then exit 0; fi
python3 -m pip install --quiet --target .tools/uv-pkg "uv>=0.5,<1"
mkdir -p .tools/bin
ln -sf ../uv-pkg/bin/uv .tools/bin/uv
.tools/bin/uv --version
