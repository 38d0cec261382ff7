"""Shared test helpers and the markers of the test folders; each folder carries its own fixtures."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "deploy" / "samples"
TESTS = Path(__file__).resolve().parent
# Every test below one of these folders carries its marker, so that `-m` picks what a machine
# can run: `cluster` a control plane, `node` real pods, `chart` the Go-built helm and Prometheus.
MARKER_OF_FOLDER = {
    "integration": "cluster",
    "e2e": "node",
    "chart": "chart",
    "monitoring": "chart",
}


@pytest.hookimpl(tryfirst=True)  # before the mark plugin applies -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        if TESTS in path.parents:
            marker = MARKER_OF_FOLDER.get(path.relative_to(TESTS).parts[0])
            if marker is not None:
                item.add_marker(getattr(pytest.mark, marker))


def load_sample(name: str) -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / name).read_text())


def with_changes(document: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `document` with dotted paths set (a value of ... deletes the key)."""
    result = copy.deepcopy(document)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return result
