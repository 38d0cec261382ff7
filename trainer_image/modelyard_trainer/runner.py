"""One run, end to end: preprocess -> train (DDP) -> evaluate -> export -> verify -> metadata.

Every rank preprocesses and trains; rank 0 alone touches the output volume (checkpoints,
artifacts, progress.jsonl) and, after training, evaluates and exports while the others leave.
metadata.json is written last: its presence marks the run's artifacts final.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard_storage.digest import sha256_of
from modelyard_storage.local import path_below

from . import distributed
from .checkpoint import decode, read_latest
from .config import TrainerConfig
from .contracts import (
    CHECKPOINT_DIR,
    DEFAULT_PVC_MOUNT_ROOT,
    ENV_PVC_MOUNT_ROOT,
    METADATA_FILE,
    MODEL_FILE,
    MODEL_INT8_FILE,
    MODEL_OPTIMIZED_FILE,
    ArtifactMetadata,
    ExportReport,
    FileDigest,
    ProgressRecord,
    RunIdentity,
    TrainingResult,
    TrainingSummary,
    run_identity_from_env,
)
from .data import Dataset, Part, PreprocessingSpec, load_dataset
from .errors import ParityCheckFailed
from .files import write_text_atomically
from .final import artifact_uri_of, config_digest, read_final, result_from_metadata
from .mirror import RunMirror, storage_errors
from .report import ProgressReporter, make_reporter, utc_now

log = logging.getLogger(__name__)

CANDIDATE_FILE = "model.candidate.onnx"
REJECTED_FILE = "model.rejected.onnx"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("modelyard", "torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _prepare_run_dir(
    run_dir: Path, checkpoints: Path, digest: str, mirror: RunMirror | None
) -> tuple[bool, bytes | None]:
    """Rank 0's view of the run directory: (already final, the checkpoint to resume from)."""
    if mirror is not None:
        # Object storage is the run's home: this pod's scratch directory starts empty.
        run_dir.mkdir(parents=True, exist_ok=True)
        if not mirror.pull_final(run_dir):
            mirror.pull_checkpoints(run_dir)
    if read_final(run_dir, digest) is not None:
        return True, None
    latest = read_latest(checkpoints)
    if latest is not None and decode(latest[1]).get("config_digest") != digest:
        # Same run identity but another config: only a local rerun after editing the file can
        # do this (in a cluster the generation changes). What is there is stale; start afresh.
        log.warning("%s holds a run of another config; starting afresh", run_dir)
        shutil.rmtree(checkpoints, ignore_errors=True)
        (run_dir / METADATA_FILE).unlink(missing_ok=True)
        latest = None
    if latest is not None:
        log.info("resuming from %s", latest[0])
    return False, latest[1] if latest else None


def _held_out(dataset: Dataset, rows: int) -> Part:
    """Up to `rows` held-out rows for the parity check: test rows first, then validation."""
    test, validation = dataset.test, dataset.validation
    if len(test) >= rows or len(validation) == 0:
        return test.take(np.arange(min(rows, len(test))))
    extra = validation.take(np.arange(min(rows - len(test), len(validation))))
    return Part(
        np.concatenate([test.numeric, extra.numeric]),
        np.concatenate([test.strings, extra.strings]),
        np.concatenate([test.target, extra.target]),
    )


def execute(
    config: TrainerConfig, output: Path, environ: Mapping[str, str], default_name: str
) -> TrainingResult | None:
    """Run (or resume, or recognize as done) this run; rank 0 returns the result."""
    identity = run_identity_from_env(environ, default_name)
    context = distributed.setup(environ)
    try:
        return _execute(config, output, environ, identity, context)
    finally:
        distributed.teardown(context)


def _execute(
    config: TrainerConfig,
    output: Path,
    environ: Mapping[str, str],
    identity: RunIdentity,
    context: distributed.DistContext,
) -> TrainingResult | None:
    from .train import Trainer

    with storage_errors():
        # Kept in the output's claim even if a directory on the way is a symlink out of it.
        run_dir = path_below(output, identity.relpath, "run directory")
        checkpoints = path_below(run_dir, CHECKPOINT_DIR, "checkpoint directory")
    artifact_uri = artifact_uri_of(output, environ, identity.relpath)
    digest = config_digest(config)
    mirror = RunMirror.for_run(environ, identity.relpath) if context.is_main else None
    final, checkpoint = (
        _prepare_run_dir(run_dir, checkpoints, digest, mirror) if context.is_main else (False, None)
    )
    # Rank 0 may be the only one that sees the output volume: it tells the others.
    final = distributed.broadcast_flag(context, final)
    if final:
        if not context.is_main:
            return None
        metadata = read_final(run_dir, digest)
        assert metadata is not None
        log.info("%s is already final; reporting its result", run_dir)
        return result_from_metadata(metadata, artifact_uri)
    checkpoint = distributed.broadcast_bytes(context, checkpoint)

    reporter = make_reporter(
        environ, run_dir, config.training.progress_interval_seconds, enabled=context.is_main
    )
    try:
        base = ProgressRecord(
            generation=identity.generation,
            attempt=identity.attempt,
            epochs=config.training.epochs,
            world_size=context.world_size,
        )
        reporter.report(base.model_copy(update={"stage": "Preprocessing"}), force=True)
        pvc_root = environ.get(ENV_PVC_MOUNT_ROOT) or DEFAULT_PVC_MOUNT_ROOT
        started = time.monotonic()
        dataset = load_dataset(config.data, config.task, pvc_root)
        log.info(
            "data: %d rows loaded, %d after cleaning; %d train, %d validation, %d test (%.1fs)",
            dataset.rows_loaded,
            dataset.rows_clean,
            len(dataset.train),
            len(dataset.validation),
            len(dataset.test),
            time.monotonic() - started,
        )
        resume = decode(checkpoint) if checkpoint is not None else None
        if resume is not None:
            # The checkpoint's fitted preprocessing belongs to its weights; it is deterministic,
            # so a difference means the data changed under the run.
            saved = PreprocessingSpec.from_dict(resume["preprocessing"])
            if saved != dataset.spec:
                log.warning("the data changed since the checkpoint; keeping its preprocessing")
            dataset.spec = saved
        trainer = Trainer(
            config,
            context,
            dataset,
            reporter,
            identity,
            checkpoints if context.is_main else None,
            config_digest=digest,
            checkpoint_saved=mirror.push_checkpoint if mirror is not None else None,
        )
        outcome = trainer.fit(resume)
        log.info(
            "trained %d epochs in %.1fs (%.0f samples/s, %d process(es), %s)",
            outcome.epochs_run,
            outcome.duration_seconds,
            outcome.samples_per_second,
            context.world_size,
            context.backend,
        )
        distributed.teardown(context)
        if not context.is_main:
            return None
        return _finish(
            config,
            context,
            dataset,
            outcome,
            reporter,
            base,
            run_dir,
            identity,
            artifact_uri,
            mirror,
        )
    finally:
        reporter.close()


def _finish(
    config: TrainerConfig,
    context: distributed.DistContext,
    dataset: Dataset,
    outcome: Any,
    reporter: ProgressReporter,
    base: ProgressRecord,
    run_dir: Path,
    identity: RunIdentity,
    artifact_uri: str,
    mirror: RunMirror | None,
) -> TrainingResult:
    from .export import (
        check_parity,
        describe,
        export_onnx,
        metrics_of,
        optimize_graph,
        quantize_int8,
        run_onnx,
        run_torch,
        session,
    )
    from .models import ExportableModel
    from .reference import training_reference
    from .train import copy_to_cpu

    spec = dataset.spec
    export = config.export
    done = {"epoch": outcome.epochs_run, "percent": 100.0, "eta_seconds": 0.0}
    reporter.report(base.model_copy(update={"stage": "Evaluating", **done}), force=True)
    model = ExportableModel(spec, copy_to_cpu(outcome.network)).eval()
    metrics = metrics_of(spec, run_torch(model, spec, dataset.test), dataset.test)

    reporter.report(base.model_copy(update={"stage": "Exporting", **done}), force=True)
    candidate = run_dir / CANDIDATE_FILE
    export_onnx(model, spec, dataset.test, candidate, export.opset, export.dynamic_batch)
    try:
        parity = check_parity(
            candidate,
            model,
            spec,
            _held_out(dataset, export.parity_rows),
            export.parity_tolerance,
            export.dynamic_batch,
        )
    except ParityCheckFailed as failure:
        os.replace(candidate, run_dir / REJECTED_FILE)
        if mirror is not None:
            mirror.upload(run_dir / REJECTED_FILE)
        failure.message += f" (kept for inspection as {REJECTED_FILE})"
        raise
    model_path = run_dir / MODEL_FILE
    os.replace(candidate, model_path)
    log.info(
        "exported %s: parity max |ONNX - PyTorch| %.3g on %d rows",
        MODEL_FILE,
        parity.max_abs_diff,
        parity.rows,
    )
    report = ExportReport(exporter="torch.onnx.export(dynamo=True)", parity=parity)

    batch = None if export.dynamic_batch else 1
    test = dataset.test
    base_outputs = run_onnx(session(model_path), spec, test, batch)
    base_metrics = metrics_of(spec, base_outputs, test)
    served = MODEL_FILE
    if export.optimize_graph:
        report.optimized = optimize_graph(
            spec,
            model_path,
            run_dir / MODEL_OPTIMIZED_FILE,
            base_outputs,
            base_metrics,
            test,
            batch,
        )
        if report.optimized.max_abs_diff <= export.parity_tolerance:
            served = MODEL_OPTIMIZED_FILE
            report.optimized.note = "within export.parityTolerance of model.onnx"
        else:
            report.optimized.note = "differs from model.onnx beyond export.parityTolerance"
    if export.quantize_int8:
        report.int8 = quantize_int8(
            spec, model_path, run_dir / MODEL_INT8_FILE, base_outputs, base_metrics, test, batch
        )
        change = report.int8.metric_change
        if spec.task == "classification":
            drop = -change.get("test_accuracy", 0.0)
            acceptable = drop <= export.max_int8_accuracy_drop
            what = f"test accuracy drop {drop:.4f}"
        else:
            reference = base_metrics.rmse or 0.0
            growth = change.get("rmse", 0.0) / reference if reference > 0 else 0.0
            acceptable = growth <= export.max_int8_accuracy_drop
            what = f"relative RMSE increase {growth:.4f}"
        if acceptable:
            served = MODEL_INT8_FILE
        report.int8.note = (
            f"{what} {'within' if acceptable else 'beyond'} "
            f"export.maxInt8AccuracyDrop {export.max_int8_accuracy_drop:g}"
        )
    for variant in (report.optimized, report.int8):
        if variant is not None:
            variant.served = variant.file == served

    files = {
        path.name: FileDigest(sha256=sha256_of(path), size_bytes=path.stat().st_size)
        for path in (run_dir / name for name in (MODEL_FILE, MODEL_OPTIMIZED_FILE, MODEL_INT8_FILE))
        if path.is_file() and (path.name == MODEL_FILE or _enabled(export, path.name))
    }
    inputs, outputs = describe(run_dir / served, spec)
    metadata = ArtifactMetadata(
        model_file=served,
        files=files,
        inputs=inputs,
        outputs=outputs,
        class_labels=spec.class_labels,
        task=spec.task,
        metrics=metrics,
        opset=export.opset,
        export=report,
        training=TrainingSummary(
            epochs_run=outcome.epochs_run,
            best_epoch=outcome.best_epoch,
            stopped_early=outcome.stopped_early,
            resumed_from_epoch=outcome.resumed_from_epoch,
            world_size=context.world_size,
            backend=context.backend,
            device=context.device.type,
            train_rows=len(dataset.train),
            validation_rows=len(dataset.validation),
            duration_seconds=outcome.duration_seconds,
            cpu_seconds=outcome.cpu_seconds,
            samples_per_second=outcome.samples_per_second,
            final_validation=outcome.final_validation,
        ),
        config=config.model_dump(by_alias=True, mode="json"),
        run=identity,
        created_at=utc_now(),
        library_versions=library_versions(),
        reference=training_reference(spec, dataset.train, lambda part: _predict(model, spec, part)),
    )
    write_text_atomically(
        run_dir / METADATA_FILE, metadata.model_dump_json(by_alias=True, indent=2)
    )
    if mirror is not None:
        reporter.close()  # progress.jsonl is complete before it is published
        mirror.publish(run_dir)
    reporter.report(base.model_copy(update={"stage": "Done", **done}), force=True)
    log.info("final: %s serves %s (%s)", run_dir, served, metrics.headline())
    return result_from_metadata(metadata, artifact_uri)


def _predict(model: Any, spec: PreprocessingSpec, part: Part) -> list[np.ndarray]:
    """The network's outputs on `part`, in chunks so that a large split needs little memory."""
    from .export import run_torch

    chunks = [
        run_torch(model, spec, part.take(np.arange(start, min(start + 8192, len(part)))))
        for start in range(0, len(part), 8192)
    ]
    return [np.concatenate(outputs) for outputs in zip(*chunks, strict=True)]


def _enabled(export: Any, name: str) -> bool:
    return (name == MODEL_OPTIMIZED_FILE and export.optimize_graph) or (
        name == MODEL_INT8_FILE and export.quantize_int8
    )
