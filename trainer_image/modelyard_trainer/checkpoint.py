"""Checkpoints: written by rank 0 only, atomically, the newest `keep` kept.

Saved with plain containers and tensors only, so that they load with weights_only=True (no
arbitrary pickles from a shared volume). Rank 0 reads the newest one and broadcasts its bytes,
so resuming works when only rank 0 can see the output volume.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard_storage.errors import StorageError
from modelyard_storage.local import path_below

from .files import write_atomically

log = logging.getLogger(__name__)

_NAME = re.compile(r"^epoch-(\d{6,})\.pt$")


def checkpoint_files(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint, oldest first; a symlink out of `directory` is none."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if not match:
            continue
        try:
            path_below(directory, path.name, "checkpoint")
        except StorageError as error:
            log.warning("ignoring checkpoint %s: %s", path.name, error.message)
            continue
        found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(directory: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    path = directory / f"epoch-{epoch:06d}.pt"
    write_atomically(path, lambda temporary: torch.save(state, temporary))
    for _, old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def read_latest(directory: Path) -> tuple[Path, bytes] | None:
    """The newest checkpoint that loads; a damaged one is skipped with a warning."""
    for _, path in reversed(checkpoint_files(directory)):
        try:
            data = path.read_bytes()
            decode(data)
        except Exception as error:  # a damaged file must not block the run; older ones may do
            log.warning("skipping unreadable checkpoint %s: %s", path, error)
            continue
        return path, data
    return None


def decode(data: bytes) -> dict[str, Any]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a modelyard checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """Random states of this process, as plain values and tensors."""
    numpy_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
