"""Recognizing a run that is already final (torch-free, so that a rerun answers at once)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from modelyard_storage.local import path_below

from .config import TrainerConfig
from .contracts import (
    ENV_OUTPUT_URI,
    METADATA_FILE,
    ArtifactMetadata,
    TrainingResult,
    join_uri,
    run_identity_from_env,
)
from .mirror import RunMirror, storage_errors

log = logging.getLogger(__name__)


def config_digest(config: TrainerConfig) -> str:
    return hashlib.sha256(config.model_dump_json(by_alias=True).encode()).hexdigest()


def result_from_metadata(metadata: ArtifactMetadata, artifact_uri: str) -> TrainingResult:
    """The compact result; its metrics are those of the served file (int8 ones when it is)."""
    served = metadata.files[metadata.model_file]
    metrics = metadata.metrics.headline()
    for variant in (metadata.export.optimized, metadata.export.int8):
        if variant is not None and variant.file == metadata.model_file:
            metrics = variant.metrics
    return TrainingResult(
        artifact_uri=artifact_uri,
        model_file=metadata.model_file,
        sha256=served.sha256,
        size_bytes=served.size_bytes,
        metrics=metrics,
        generation=metadata.run.generation,
        inputs=[tensor.brief() for tensor in metadata.inputs],
    )


def read_final(run_dir: Path, digest: str) -> ArtifactMetadata | None:
    """The run's metadata when the run is already final for this very config."""
    path = run_dir / METADATA_FILE
    if not path.is_file():
        return None
    try:
        metadata = ArtifactMetadata.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s: %s", path, error)
        return None
    try:
        produced_by = TrainerConfig.model_validate(metadata.config)
    except ValueError:
        return None
    if config_digest(produced_by) != digest:
        return None
    if not (run_dir / metadata.model_file).is_file():
        return None
    return metadata


def artifact_uri_of(output: Path, environ: Mapping[str, str], relpath: str) -> str:
    return join_uri(environ.get(ENV_OUTPUT_URI) or output.resolve().as_uri(), relpath)


def final_result(
    config: TrainerConfig, output: Path, environ: Mapping[str, str], default_name: str
) -> TrainingResult | None:
    """The result of this run when its artifacts are already final for this config."""
    relpath = run_identity_from_env(environ, default_name).relpath
    with storage_errors():
        run_dir = path_below(output, relpath, "run directory")
    mirror = RunMirror.for_run(environ, relpath)
    if mirror is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        mirror.pull_final(run_dir)
    metadata = read_final(run_dir, config_digest(config))
    if metadata is None:
        return None
    return result_from_metadata(metadata, artifact_uri_of(output, environ, relpath))
