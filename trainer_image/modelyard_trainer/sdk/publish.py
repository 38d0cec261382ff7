"""Publishing a script's model: the built-in trainer's export, parity check, int8 variant,
digests, metadata.json and result, for any torch module and example input.

The parity check runs ONNX Runtime and PyTorch on the example input (the caller's held-out
rows are the best choice). Loaded only by `Run.publish`: it imports torch, onnx and ORT.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modelyard_storage.digest import sha256_of

from ..__main__ import succeeded
from ..contracts import (
    METADATA_FILE,
    MODEL_FILE,
    MODEL_INT8_FILE,
    ArtifactMetadata,
    EvaluationMetrics,
    ExportReport,
    FileDigest,
    ParityReport,
    ProgressRecord,
    Task,
    TrainingResult,
    TrainingSummary,
    VariantReport,
)
from ..errors import InvalidConfig, ParityCheckFailed
from ..export import quantize_file, save_checked, session, tensor_specs, torch_to_onnx
from ..files import write_text_atomically
from ..final import result_from_metadata
from ..report import utc_now
from ..runner import CANDIDATE_FILE, REJECTED_FILE, library_versions

if TYPE_CHECKING:
    from . import Run

log = logging.getLogger("modelyard_trainer.sdk")

DEFAULT_OPSET = 18
DEFAULT_PARITY_TOLERANCE = 1e-4
DEFAULT_INT8_TOLERANCE = 0.05


def _inputs(example_input: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    tensors = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        raise InvalidConfig("publish: example_input must be a tensor or a tuple of tensors")
    if any(tensor.dim() == 0 for tensor in tensors):
        raise InvalidConfig("publish: every example input needs a batch axis (axis 0)")
    return tuple(tensor.detach().cpu() for tensor in tensors)


def _torch_outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(*inputs)
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [output.detach().cpu().numpy() for output in outputs]


def _onnx_outputs(path: Any, names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[Any]:
    feeds = {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}
    return list(session(path).run(None, feeds))


def max_abs_diff(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest |a - b| over every output; a shape or NaN mismatch is infinitely far."""
    worst = 0.0
    if len(expected) != len(actual):
        return math.inf
    for a, b in zip(expected, actual, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
            return math.inf
        if a.size:
            worst = max(worst, float(np.abs(np.nan_to_num(a) - np.nan_to_num(b)).max()))
    return worst


def _default_names(stem: str, count: int) -> list[str]:
    return [stem] if count == 1 else [f"{stem}_{index}" for index in range(count)]


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    result = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidConfig(f"publish: metric {key!r} is not a number") from None
        if not math.isfinite(number):
            raise InvalidConfig(f"publish: metric {key!r} is not finite")
        result[str(key)] = number
    return result


def publish(
    run: Run,
    model: torch.nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    metrics: Mapping[str, float],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    task: Task = "classification",
    class_labels: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE,
    quantize_int8: bool = False,
    int8_tolerance: float = DEFAULT_INT8_TOLERANCE,
) -> TrainingResult:
    """Export, check, hash and publish `model` (rank 0); the result, also written as the
    termination message.

    `example_input` (a tensor or a tuple of tensors, batch first; at least 2 rows with a
    dynamic batch axis) is both the export's example and the parity check's input. `metrics`
    (test_accuracy, rmse, ... or any names) become the result's metrics, which promotion gates
    read. With `quantize_int8`, model.int8.onnx is served when it stays within
    `int8_tolerance` of model.onnx on the example input.
    """
    inputs = _inputs(example_input)
    if dynamic_batch and any(tensor.shape[0] < 2 for tensor in inputs):
        raise InvalidConfig("publish: a dynamic batch axis needs an example of at least 2 rows")
    names = list(input_names or _default_names("input", len(inputs)))
    if len(names) != len(inputs):
        raise InvalidConfig(f"publish: {len(names)} input_names for {len(inputs)} inputs")
    headline = _finite(metrics)
    network = getattr(model, "module", model)  # DistributedDataParallel wraps the network
    network = copy.deepcopy(network).cpu().eval()
    expected = _torch_outputs(network, inputs)
    outputs = list(output_names or _default_names("output", len(expected)))
    if len(outputs) != len(expected):
        raise InvalidConfig(f"publish: {len(outputs)} output_names for {len(expected)} outputs")

    base = ProgressRecord(
        generation=run.identity.generation,
        attempt=run.identity.attempt,
        epoch=run.last_epoch,
        epochs=run.last_epoch,
        percent=100.0,
        eta_seconds=0.0,
        world_size=run.world_size,
    )
    run.reporter.report(base.model_copy(update={"stage": "Exporting"}), force=True)
    run_dir = run.run_dir
    candidate = run_dir / CANDIDATE_FILE
    save_checked(torch_to_onnx(network, inputs, names, outputs, opset, dynamic_batch), candidate)
    difference = max_abs_diff(expected, _onnx_outputs(candidate, names, inputs))
    parity = ParityReport(
        rows=int(inputs[0].shape[0]),
        max_abs_diff=min(difference, 1e308),
        tolerance=parity_tolerance,
        passed=difference <= parity_tolerance,
    )
    if not parity.passed:
        os.replace(candidate, run_dir / REJECTED_FILE)
        if run.mirror is not None:
            run.mirror.upload(run_dir / REJECTED_FILE)
        raise ParityCheckFailed(
            f"ONNX Runtime differs from PyTorch by {difference:.3g} on the example input "
            f"(parity tolerance {parity_tolerance:g}); kept for inspection as {REJECTED_FILE}"
        )
    model_path = run_dir / MODEL_FILE
    os.replace(candidate, model_path)
    report = ExportReport(exporter="torch.onnx.export(dynamo=True)", parity=parity)
    served = MODEL_FILE
    if quantize_int8:
        int8_path = run_dir / MODEL_INT8_FILE
        quantize_file(model_path, int8_path)
        int8_difference = max_abs_diff(expected, _onnx_outputs(int8_path, names, inputs))
        within = int8_difference <= int8_tolerance
        report.int8 = VariantReport(
            file=MODEL_INT8_FILE,
            size_bytes=int8_path.stat().st_size,
            size_ratio=int8_path.stat().st_size / model_path.stat().st_size,
            max_abs_diff=min(int8_difference, 1e308),
            served=within,
            note=(
                f"max |int8 - PyTorch| {int8_difference:.3g} on the example input "
                f"{'within' if within else 'beyond'} int8_tolerance {int8_tolerance:g}"
            ),
        )
        served = MODEL_INT8_FILE if within else MODEL_FILE
    files = {
        path.name: FileDigest(sha256=sha256_of(path), size_bytes=path.stat().st_size)
        for path in (run_dir / MODEL_FILE, run_dir / MODEL_INT8_FILE)
        if path.is_file() and (path.name == MODEL_FILE or quantize_int8)
    }
    described_inputs, described_outputs = tensor_specs(run_dir / served, {})
    known = EvaluationMetrics.model_fields.keys() - {"rows", "confusion_matrix"}
    metadata = ArtifactMetadata(
        model_file=served,
        files=files,
        inputs=described_inputs,
        outputs=described_outputs,
        class_labels=list(class_labels),
        task=task,
        metrics=EvaluationMetrics(
            rows=int(inputs[0].shape[0]), **{k: v for k, v in headline.items() if k in known}
        ),
        opset=opset,
        export=report,
        training=TrainingSummary(
            epochs_run=run.last_epoch,
            resumed_from_epoch=run.resumed_from_epoch,
            world_size=run.world_size,
            backend=run.context.backend,
            device=run.device.type,
            duration_seconds=max(0.0, time.monotonic() - run.started),
        ),
        # Not a built-in TrainerConfig: what ran was the script (its metrics are all here).
        config={"script": {"argv": list(sys.argv)}, "metrics": headline},
        run=run.identity,
        created_at=utc_now(),
        library_versions=library_versions(),
    )
    write_text_atomically(
        run_dir / METADATA_FILE, metadata.model_dump_json(by_alias=True, indent=2)
    )
    if run.mirror is not None:
        run.reporter.close()  # progress.jsonl is complete before it is published
        run.mirror.publish(run_dir)
    run.reporter.report(base.model_copy(update={"stage": "Done"}), force=True)
    result = result_from_metadata(metadata, run.artifact_uri).model_copy(
        update={"metrics": headline}
    )
    succeeded(result, run.environ)
    log.info("published %s/%s (sha256 %s)", run.artifact_uri, served, result.sha256)
    return result
