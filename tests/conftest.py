"""Shared test helpers. Tests under tests/integration and tests/e2e carry their own fixtures."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "deploy" / "samples"


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
