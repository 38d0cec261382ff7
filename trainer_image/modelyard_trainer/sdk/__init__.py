"""modelyard_trainer.sdk: what your own training script (spec.script) gets from Modelyard.

    from modelyard_trainer import sdk

    def train(run: sdk.Run) -> None:
        model, optimizer = build()
        state = run.checkpoints.load_latest()  # every rank calls it; None on a fresh run
        start = state["epoch"] if state else 0
        if state:
            model.load_state_dict(state["model"])
        for epoch in range(start, EPOCHS):
            ...  # your loader, loss and loop, with DDP over run.world_size processes
            run.report(epoch=epoch + 1, epochs=EPOCHS, loss=loss, metrics={"val_loss": v})
            run.checkpoints.save({"epoch": epoch + 1, "model": model.state_dict()})
        run.publish(model, example_input, {"test_accuracy": accuracy})

    sdk.main(train)

`main` joins the gang that torchrun (or the operator) describes in the environment, runs your
function, and ends the process with the trainer's exit-code contract: a `TrainerError` keeps
its code (64-66 are permanent), a lost peer or anything else is 1 (the operator retries), and
a run that returns without `publish` fails as NotPublished. The same contracts as the built-in
trainer hold: progress goes to the ConfigMap `<mt>-progress` (status.progress, ETA), rank 0
alone writes checkpoints and artifacts, the result goes into the termination message, so a
ModelDeployment `fromTraining` promotes it unchanged.

Importing this module loads neither torch nor the built-in trainer's loop, data or export
code; they are loaded when a run starts (`init`) or publishes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..contracts import (
    CHECKPOINT_DIR,
    ENV_OUTPUT_DIR,
    ProgressRecord,
    RunIdentity,
    TrainingResult,
    run_identity_from_env,
)
from ..errors import InvalidConfig, NotPublished, TrainerError
from ..report import EtaEstimator, ProgressReporter, make_reporter

if TYPE_CHECKING:
    import torch

    from ..distributed import DistContext
    from ..mirror import RunMirror

__all__ = [
    "Checkpoints",
    "InvalidConfig",
    "NotPublished",
    "Run",
    "TrainerError",
    "init",
    "main",
]

log = logging.getLogger("modelyard_trainer.sdk")

DEFAULT_PROGRESS_INTERVAL_SECONDS = 5.0
DEFAULT_CHECKPOINTS_KEPT = 2


class Checkpoints:
    """The run's checkpoint directory: rank 0 writes, every rank loads.

    A state is a dict of tensors and plain values (a model's and an optimizer's state_dict,
    numbers, strings) with an integer "epoch"; it is loaded with weights_only=True, so nothing
    else is executed from the shared volume. The newest `keep` states are kept.
    """

    def __init__(
        self, run: Run, directory: Path, keep: int, mirror: RunMirror | None = None
    ) -> None:
        self._run = run
        self.directory = directory
        self.keep = keep
        self._mirror = mirror

    def save(self, state: Mapping[str, Any]) -> Path | None:
        """Write `state` atomically as epoch-<epoch>.pt on rank 0 (its path); None elsewhere."""
        epoch = state.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InvalidConfig("a checkpoint state needs an integer 'epoch' >= 0")
        if not self._run.is_rank_zero:
            return None
        from ..checkpoint import save_checkpoint

        path = save_checkpoint(self.directory, epoch, dict(state), self.keep)
        if self._mirror is not None:
            self._mirror.push_checkpoint(path)
        return path

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable state on every rank, or None. Every rank must call it: rank 0
        reads (it may be the only one that sees the volume) and sends the bytes to the rest."""
        from .. import distributed
        from ..checkpoint import decode, read_latest

        latest = read_latest(self.directory) if self._run.is_rank_zero else None
        if latest is not None:
            log.info("resuming from %s", latest[0])
        data = distributed.broadcast_bytes(self._run.context, latest[1] if latest else None)
        if data is None:
            return None
        state = decode(data)
        self._run.resumed_from_epoch = int(state["epoch"])
        return state


class Run:
    """One process of a training run: its place in the gang, its directories, its reports."""

    def __init__(
        self,
        context: DistContext,
        identity: RunIdentity,
        run_dir: Path,
        artifact_uri: str,
        reporter: ProgressReporter,
        mirror: RunMirror | None,
        environ: Mapping[str, str],
        keep: int,
    ) -> None:
        self.context = context
        self.identity = identity
        self.run_dir = run_dir
        self.artifact_uri = artifact_uri
        self.reporter = reporter
        self.mirror = mirror
        self.environ = environ
        self.checkpoints = Checkpoints(self, run_dir / CHECKPOINT_DIR, keep, mirror)
        self.result: TrainingResult | None = None
        self.started = time.monotonic()
        self.last_epoch = 0
        self.resumed_from_epoch: int | None = None
        self._eta: EtaEstimator | None = None
        self._steps_per_epoch = 0

    @property
    def rank(self) -> int:
        return self.context.rank

    @property
    def world_size(self) -> int:
        return self.context.world_size

    @property
    def local_rank(self) -> int:
        return self.context.local_rank

    @property
    def is_rank_zero(self) -> bool:
        return self.context.is_main

    @property
    def device(self) -> torch.device:
        """cuda:<local rank> where there is a GPU, else cpu."""
        return self.context.device

    def report(
        self,
        *,
        epoch: int,
        epochs: int,
        step: int = 0,
        steps_per_epoch: int = 0,
        loss: float | None = None,
        metrics: Mapping[str, float] | None = None,
        samples_per_second: float | None = None,
        force: bool = False,
    ) -> bool:
        """Progress after `epoch` finished epochs (and `step` steps into the next), sent by
        rank 0 at most every progress interval unless `force`; whether it was sent. The ETA
        is the trainer's: the pace since the end of this attempt's first epoch."""
        if epochs < 1 or not 0 <= epoch <= epochs:
            raise InvalidConfig(f"report: need 0 <= epoch <= epochs, got {epoch}/{epochs}")
        if step < 0 or steps_per_epoch < 0 or (steps_per_epoch and step > steps_per_epoch):
            raise InvalidConfig(f"report: step {step} is outside 0..{steps_per_epoch}")
        self.last_epoch = epoch
        # An epoch-end report may leave steps_per_epoch out: the position keeps its units.
        self._steps_per_epoch = steps_per_epoch = steps_per_epoch or self._steps_per_epoch
        if not self.is_rank_zero:
            return False
        units = steps_per_epoch or 1
        done = epoch * units + (step if steps_per_epoch else 0)
        total = epochs * units
        if self._eta is None:
            # Counted from this attempt's start: a resumed run has done the earlier epochs.
            self._eta = EtaEstimator(total, done, time.monotonic)
        elif step == 0:
            self._eta.epoch_done(done)
        if not (force or self.reporter.due()):
            return False
        record = ProgressRecord(
            generation=self.identity.generation,
            attempt=self.identity.attempt,
            stage="Training",
            epoch=epoch,
            epochs=epochs,
            step=step,
            steps_per_epoch=steps_per_epoch,
            percent=min(100.0, 100.0 * done / total),
            loss=loss,
            validation=dict(metrics or {}),
            samples_per_second=samples_per_second,
            eta_seconds=self._eta.eta(done),
            world_size=self.world_size,
        )
        return self.reporter.report(record, force=force)

    def publish(
        self,
        model: torch.nn.Module,
        example_input: torch.Tensor | tuple[torch.Tensor, ...],
        metrics: Mapping[str, float],
        **options: Any,
    ) -> TrainingResult | None:
        """Export `model` to ONNX on rank 0, check it against PyTorch, hash it and write the
        result; see `modelyard_trainer.sdk.publish.publish` for the options. Rank 0 returns
        the result, the other ranks None (they need not call it)."""
        if not self.is_rank_zero:
            return None
        from .publish import publish

        self.result = publish(self, model, example_input, metrics, **options)
        return self.result

    def close(self) -> None:
        from .. import distributed

        self.reporter.close()
        distributed.teardown(self.context)


def _output_directory(output: str | Path | None, environ: Mapping[str, str]) -> Path:
    from ..__main__ import output_directory

    argument = str(output) if output is not None else environ.get(ENV_OUTPUT_DIR)
    if not argument:
        raise InvalidConfig(f"no output directory: pass output= or set {ENV_OUTPUT_DIR}")
    return output_directory(argument, environ)


def init(
    output: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    progress_interval_seconds: float = DEFAULT_PROGRESS_INTERVAL_SECONDS,
    checkpoints_kept: int = DEFAULT_CHECKPOINTS_KEPT,
    name: str = "script",
) -> Run:
    """Join the gang and open this run's directory under `output` (default: the operator's
    MODELYARD_OUTPUT_DIR). `name` names a local run (the operator's run has its own)."""
    from modelyard_storage.local import path_below

    from .. import distributed
    from ..final import artifact_uri_of
    from ..mirror import RunMirror, storage_errors

    environ = os.environ if environ is None else environ
    if checkpoints_kept < 1:
        raise InvalidConfig("checkpoints_kept must be >= 1")
    directory = _output_directory(output, environ)
    identity = run_identity_from_env(environ, name)
    with storage_errors():
        run_dir = path_below(directory, identity.relpath, "run directory")
    context = distributed.setup(environ)
    mirror = RunMirror.for_run(environ, identity.relpath) if context.is_main else None
    if mirror is not None:
        # Object storage is the run's home: a new attempt starts from its checkpoints there.
        mirror.pull_checkpoints(run_dir)
    reporter = make_reporter(environ, run_dir, progress_interval_seconds, context.is_main)
    run = Run(
        context,
        identity,
        run_dir,
        artifact_uri_of(directory, environ, identity.relpath),
        reporter,
        mirror,
        environ,
        checkpoints_kept,
    )
    start = ProgressRecord(
        generation=identity.generation, attempt=identity.attempt, world_size=context.world_size
    )
    reporter.report(start, force=True)
    return run


def main(train: Callable[[Run], object], **init_options: Any) -> NoReturn:
    """Run `train(run)` in this process of the gang and exit with the contract's code."""
    from ..__main__ import configure_logging, failed

    environ = os.environ
    configure_logging(environ)
    run: Run | None = None
    try:
        run = init(environ=environ, **init_options)
        train(run)
        if run.is_rank_zero and run.result is None:
            raise NotPublished(
                "the training script returned without calling run.publish(model, "
                "example_input, metrics): there is no model to serve"
            )
        code = 0
    except Exception as error:
        code = failed(error, environ)
    finally:
        if run is not None:
            run.close()
    if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
        from ..distributed import exit_process

        exit_process(code)  # a process of a gang must not finalize (see exit_process)
    logging.shutdown()
    sys.exit(code)
