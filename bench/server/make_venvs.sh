#!/usr/bin/env bash
# Creates the separate virtual environment of the serving benchmark's contenders:
# KServe's Python model server and a naive FastAPI endpoint, both calling onnxruntime.
# It lives in bench/.venv-kserve (gitignored) so that it never touches the project's lock.
# Also installs wrk, the load generator, when it is missing (Debian/Ubuntu).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../.venv-kserve"
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk
fi
if [ ! -x "$venv/bin/python" ]; then
    uv venv --python 3.11 "$venv"
fi
VIRTUAL_ENV="$venv" uv pip install --quiet \
    "kserve>=0.15" "onnxruntime>=1.20,<2" "numpy>=1.26,<3" "fastapi>=0.110" "uvicorn[standard]>=0.30"
"$venv/bin/python" -c "import kserve, onnxruntime, fastapi; print('kserve', kserve.__version__ if hasattr(kserve, '__version__') else '?', 'onnxruntime', onnxruntime.__version__)"
