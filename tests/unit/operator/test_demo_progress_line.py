"""The demo's progress line (hack/demo.py) reads the fields of a ModelTraining's status."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "hack" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_line_shows_epochs_percent_and_loss_while_training_and_after() -> None:
    line = demo().progress_line
    training = {
        "phase": "Running",
        "attempt": 1,
        "progress": {
            "stage": "Training",
            "epoch": 12,
            "epochs": 30,
            "percent": 41.6,
            "summary": "12/30 (42%)",
            "loss": 0.3141,
            "validation": {"val_accuracy": 0.9512},
            "eta": "1m05s",
        },
    }
    text = line(training)
    assert "epoch 12/30 (42%)" in text
    assert "loss 0.3141" in text and "val_accuracy 0.951" in text and "ETA 1m05s" in text
    assert "stopped early" not in text
    done = {
        "phase": "Succeeded",
        "attempt": 1,
        "progress": {**training["progress"], "stage": "Done", "epoch": 20, "percent": 100.0},
    }
    assert "epoch 20/30 (100%) stopped early" in line(done)
    assert "loss 0.3141" in line(done)
    assert "epoch 30/30 (100%) loss" in line(
        {**done, "progress": {**done["progress"], "epoch": 30}}
    )
    assert "Pending   attempt 0  -" in line({})
