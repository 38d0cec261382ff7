"""Tests that render the Helm chart and the kustomize bases with the pinned helm and kubectl
(hack/k8s-binaries.sh builds them; no cluster). Every test here is marked `chart`, so that
`make test-unit` (`-m "not chart ..."`) needs no Go build; `make test-integration` runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHART_TESTS_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before the mark plugin applies -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CHART_TESTS_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.chart)
