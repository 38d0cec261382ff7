"""Tests that render the Helm chart and the kustomize bases with the pinned helm and kubectl
(hack/k8s-binaries.sh builds them; no cluster). Every test here is marked `chart`, so that
`make test-unit` (`-m "not chart ..."`) needs no Go build; `make test-integration` runs them.
"""

from __future__ import annotations
