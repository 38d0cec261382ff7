"""The training loop: DDP, a global batch shared by all processes, checkpoints, early stopping.

The batch size is global: every rank takes its share of each global batch (DistributedSampler
deals the epoch's seeded permutation round-robin, so the k-th local batches of all ranks
together are exactly the k-th global batch of a single process). On a full batch every rank
holds batch/world_size rows, so the mean of the local mean losses that DDP's gradient averaging
takes is the global batch's mean: the textbook step, and the same run for any world size up to
float summation order. Only the last, partial batch needs care: there each rank's loss is its
sum scaled by world_size / rows-in-the-global-batch, and the rows that DistributedSampler
repeats to even out the ranks weigh zero.

Trainer.fit builds the network and runs the epochs; the parts it uses: Batches deals this rank's
share of each global batch, Step is one optimisation step, TrainState is what the epoch loop
carries (and what a checkpoint keeps of it), EarlyStopper tracks the best epoch, Pace writes
the progress records.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .checkpoint import restore_rng_state, rng_state, save_checkpoint
from .config import TrainerConfig
from .contracts import ProgressRecord, RunIdentity
from .data import Dataset, Part, PreprocessingSpec
from .distributed import DistContext, all_reduce_sum
from .errors import InvalidConfig, LossDiverged
from .models import build_network
from .report import EtaEstimator, ProgressReporter
from .transforms import FittedPreprocessing

log = logging.getLogger(__name__)

EVAL_CHUNK_ROWS = 8192


@dataclass
class EncodedPart:
    features: torch.Tensor  # float32 [rows, encoded width], on the training device
    target: torch.Tensor  # long class index or float32 standardized target

    def __len__(self) -> int:
        return int(self.target.shape[0])


def encode_part(spec: PreprocessingSpec, part: Part, device: torch.device) -> EncodedPart:
    """Raw rows -> encoded features, by the very module that the export will contain."""
    preprocessing = FittedPreprocessing(spec)
    with torch.no_grad():
        numeric = torch.from_numpy(np.ascontiguousarray(part.numeric, dtype=np.float32))
        codes = torch.from_numpy(spec.string_codes(part.strings))
        features = preprocessing(numeric, codes)
    if spec.task == "classification":
        target = torch.from_numpy(part.target.astype(np.int64))
    else:
        scaled = (part.target.astype(np.float64) - spec.target_mean) / spec.target_scale
        target = torch.from_numpy(scaled.astype(np.float32))
    return EncodedPart(features.to(device), target.to(device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_factor(config: TrainerConfig) -> Callable[[int], float]:
    schedule = config.training.schedule
    epochs = config.training.epochs
    warmup = schedule.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            # Linear warmup from a tenth of the learning rate.
            return 0.1 + 0.9 * epoch / warmup
        after = epoch - warmup
        if schedule.name == "step":
            return float(schedule.gamma ** (after // schedule.step_size))
        if schedule.name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * after / max(1, epochs - warmup)))
        return 1.0

    return factor


def _optimizer(config: TrainerConfig, parameters: Any) -> torch.optim.Optimizer:
    spec = config.training.optimizer
    if spec.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=spec.learning_rate,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adam":
        return torch.optim.Adam(parameters, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(parameters, lr=spec.learning_rate, weight_decay=spec.weight_decay)


@dataclass
class EarlyStopper:
    """Tracks the best epoch of a watched validation metric and counts the epochs since.

    `patience` None never stops: the best epoch is still reported. The best value is kept
    with a sign that makes lower better, as checkpoints store it.
    """

    metric: str  # "val_loss" or "val_accuracy"
    min_delta: float
    patience: int | None
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, validation: dict[str, float]) -> bool:
        """Takes the metrics after `epoch` (1-based); True when they are a new best.

        An epoch without the metric (no validation rows) neither improves nor counts as bad.
        """
        watched = validation.get(self.metric)
        if watched is None:
            return False
        value = -watched if self.metric == "val_accuracy" else watched
        if self.best_value is None or value < self.best_value - self.min_delta:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


@dataclass
class TrainState:
    """What the epoch loop carries from one epoch to the next."""

    stopper: EarlyStopper
    epoch: int = 0  # epochs done
    history: list[dict[str, Any]] = field(default_factory=list)
    # The best epoch's weights, kept on CPU when early stopping is on (restored at the end).
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None
    trained_rows: int = 0  # rows trained in this attempt, for the pace
    stopped_early: bool = False

    @classmethod
    def resumed(cls, checkpoint: dict[str, Any], stopper: EarlyStopper) -> TrainState:
        stopper.best_value = checkpoint["best_value"]
        stopper.best_epoch = checkpoint["best_epoch"]
        stopper.bad_epochs = int(checkpoint["bad_epochs"])
        epoch = int(checkpoint["epoch"])
        return cls(
            stopper=stopper,
            epoch=epoch,
            history=list(checkpoint["history"]),
            best_state=checkpoint["best_state"],
            resumed_from=epoch,
        )

    @property
    def last_validation(self) -> dict[str, float]:
        return dict(self.history[-1]["validation"]) if self.history else {}

    def end_epoch(
        self, train_loss: float, validation: dict[str, float], network: nn.Module
    ) -> None:
        self.epoch += 1
        self.history.append(
            {"epoch": self.epoch, "train_loss": train_loss, "validation": validation}
        )
        if self.stopper.update(self.epoch, validation) and self.stopper.enabled:
            self.best_state = {
                key: tensor.detach().cpu().clone() for key, tensor in network.state_dict().items()
            }

    def checkpoint_fields(self) -> dict[str, Any]:
        """The part of a checkpoint that `resumed` reads back."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best_value": self.stopper.best_value,
            "best_epoch": self.stopper.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.stopper.bad_epochs,
        }


class Step:
    """One optimisation step: forward, loss, backward, gradient clipping, optimizer.

    Mixed precision is one code path: with it off (or off CUDA) autocast and the GradScaler
    are no-ops and the step is the plain PyTorch one. On CUDA it autocasts to bfloat16 where
    the device has it (no scaling needed), else to float16 with loss scaling.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        mixed_precision: bool,
        clip_norm: float | None,
    ) -> None:
        self.model = model  # the DDP wrapper when distributed: its backward averages gradients
        self.optimizer = optimizer
        self.device_type = device.type
        self.amp = mixed_precision and device.type == "cuda"
        bf16 = self.amp and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and not bf16)
        self.clip_norm = clip_norm

    def __call__(
        self, features: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Trains on one batch; returns its loss, detached."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            output = self.model(features)
        loss = loss_of(output)
        self.scaler.scale(loss).backward()
        if self.clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


@dataclass
class Batch:
    features: torch.Tensor  # this rank's rows of the global batch
    target: torch.Tensor
    rows: int  # rows in the global batch
    # Only on the last, partial batch: 1 for a real row, 0 for DistributedSampler's repeats.
    weights: torch.Tensor | None = None


class Batches:
    """This rank's share of each global batch of an epoch (see the module docstring)."""

    def __init__(self, part: EncodedPart, context: DistContext, global_batch: int, seed: int):
        self.part = part
        self.device = context.device
        self.global_batch = global_batch
        self.local_batch = global_batch // context.world_size
        rows = len(part)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(rows),  # type: ignore[arg-type]
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        local_rows = self.sampler.num_samples
        self.steps = math.ceil(local_rows / self.local_batch)
        # Position p of this rank's list is position rank + p * world_size of the padded
        # permutation; positions past the real rows are DistributedSampler's repeats.
        padded_position = context.rank + torch.arange(local_rows) * context.world_size
        self.real_row = (padded_position < rows).to(device=self.device, dtype=torch.float32)
        # Only the last step can hold fewer than a full global batch.
        self.partial_rows = rows % global_batch
        self.partial_step = self.steps - 1 if self.partial_rows else -1

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.device)
        for step in range(self.steps):
            begin = step * self.local_batch
            indices = order[begin : begin + self.local_batch]
            features = self.part.features[indices]
            target = self.part.target[indices]
            if step == self.partial_step:
                weights = self.real_row[begin : begin + len(indices)]
                yield Batch(features, target, self.partial_rows, weights)
            else:
                yield Batch(features, target, self.global_batch)


class Pace:
    """Progress records: position, pace and ETA of this attempt."""

    def __init__(
        self, identity: RunIdentity, epochs: int, steps_per_epoch: int, world_size: int, start: int
    ) -> None:
        self.identity = identity
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.world_size = world_size
        self.total_steps = epochs * steps_per_epoch
        self.clock = time.monotonic
        self.eta = EtaEstimator(self.total_steps, start * steps_per_epoch, self.clock)
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def record(
        self, state: TrainState, epoch_done: int, step: int, loss: float | None
    ) -> ProgressRecord:
        done = epoch_done * self.steps_per_epoch + step
        elapsed = self.elapsed()
        return ProgressRecord(
            generation=self.identity.generation,
            attempt=self.identity.attempt,
            stage="Training",
            epoch=epoch_done,
            epochs=self.epochs,
            step=step,
            steps_per_epoch=self.steps_per_epoch,
            percent=min(100.0, 100.0 * done / self.total_steps),
            loss=loss,
            validation=state.last_validation,
            samples_per_second=state.trained_rows / elapsed if elapsed > 0 else None,
            eta_seconds=self.eta.eta(done),
            world_size=self.world_size,
        )


@dataclass
class TrainOutcome:
    network: nn.Module  # unwrapped, best weights when early stopping restored them
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    resumed_from_epoch: int | None
    duration_seconds: float
    cpu_seconds: float
    samples_per_second: float
    final_validation: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        context: DistContext,
        dataset: Dataset,
        reporter: ProgressReporter,
        identity: RunIdentity,
        checkpoint_dir: Path | None,
        config_digest: str = "",
        checkpoint_saved: Callable[[Path], None] | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.dataset = dataset
        self.reporter = reporter
        self.identity = identity
        self.checkpoint_dir = checkpoint_dir  # None on ranks other than 0
        self.config_digest = config_digest
        # Called with each new checkpoint (rank 0), e.g. to upload it to object storage.
        self.checkpoint_saved = checkpoint_saved
        batch = config.training.batch_size
        if batch % context.world_size:
            raise InvalidConfig(
                f"training.batchSize: {batch} is not divisible by the world size "
                f"{context.world_size} (the batch is global and split evenly)"
            )

    def _mean_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if self.config.training.loss == "cross_entropy":
            return nn.functional.cross_entropy(output, target)
        return nn.functional.mse_loss(output.reshape(output.shape[0], -1)[:, 0], target)

    def _loss_per_row(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if self.config.training.loss == "cross_entropy":
            return nn.functional.cross_entropy(output, target, reduction="none")
        return (output.reshape(output.shape[0], -1)[:, 0] - target) ** 2

    def _validate(self, network: nn.Module, part: EncodedPart) -> dict[str, float]:
        """Validation on every rank over all rows: identical results, no communication."""
        if len(part) == 0:
            return {}
        network.eval()
        loss_sum = 0.0
        correct = 0
        with torch.no_grad():
            for start in range(0, len(part), EVAL_CHUNK_ROWS):
                features = part.features[start : start + EVAL_CHUNK_ROWS]
                target = part.target[start : start + EVAL_CHUNK_ROWS]
                output = network(features)
                loss_sum += float(self._loss_per_row(output, target).sum())
                if self.config.training.loss == "cross_entropy":
                    correct += int((output.argmax(dim=1) == target).sum())
        network.train()
        metrics = {"val_loss": loss_sum / len(part)}
        if self.config.training.loss == "cross_entropy":
            metrics["val_accuracy"] = correct / len(part)
        return metrics

    def _batch_loss(self, batch: Batch, output: torch.Tensor) -> torch.Tensor:
        if batch.weights is None:
            return self._mean_loss(output, batch.target)
        row_sum = (self._loss_per_row(output, batch.target) * batch.weights).sum()
        return row_sum * (self.context.world_size / batch.rows)

    def _stopper(self) -> EarlyStopper:
        early = self.config.training.early_stopping
        if not early.enabled:
            # Still the best epoch by validation loss, for the result.
            return EarlyStopper("val_loss", 0.0, None)
        return EarlyStopper(early.metric, early.min_delta, early.patience)

    def fit(self, resume: dict[str, Any] | None) -> TrainOutcome:
        config = self.config
        training = config.training
        device = self.context.device
        seed_everything(training.seed)

        spec = self.dataset.spec
        train = encode_part(spec, self.dataset.train, device)
        validation = encode_part(spec, self.dataset.validation, device)

        network = build_network(config.model, spec.encoded_width, spec.outputs).to(device)
        optimizer = _optimizer(config, network.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
        state = TrainState(self._stopper())
        if resume is not None:
            network.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            restore_rng_state(resume["rng"])
            state = TrainState.resumed(resume, state.stopper)
            log.info("resuming after epoch %d", state.epoch)

        model: nn.Module = network
        if self.context.distributed:
            model = DistributedDataParallel(
                network, device_ids=[device] if device.type == "cuda" else None
            )
        model.train()
        step = Step(model, optimizer, device, training.mixed_precision, training.gradient_clip_norm)
        if resume is not None and resume["scaler"]:
            step.scaler.load_state_dict(resume["scaler"])

        batches = Batches(train, self.context, training.batch_size, training.seed)
        pace = Pace(
            self.identity, training.epochs, batches.steps, self.context.world_size, state.epoch
        )
        cpu_started = time.process_time()
        for epoch in range(state.epoch, training.epochs):
            # Per-epoch seeds: dropout draws do not depend on what earlier epochs (or an
            # interrupted attempt, or another world size) consumed, so a resume is exact.
            torch.manual_seed(training.seed * 1_000_003 + epoch * 1009 + self.context.rank)
            train_loss = self._train_epoch(state, batches, step, pace)
            scheduler.step()
            state.end_epoch(train_loss, self._validate(network, validation), network)
            if self._checkpoint_due(state):
                self._save_checkpoint(state, network, optimizer, scheduler, step.scaler)
            pace.eta.epoch_done(state.epoch * batches.steps)
            if self.reporter.due():
                self.reporter.report(pace.record(state, state.epoch, 0, train_loss))
            if state.stopper.should_stop:
                state.stopped_early = True
                log.info(
                    "early stopping after epoch %d (best epoch %s)",
                    state.epoch,
                    state.stopper.best_epoch,
                )
                break
        return self._outcome(state, network, pace, time.process_time() - cpu_started)

    def _train_epoch(self, state: TrainState, batches: Batches, step: Step, pace: Pace) -> float:
        """Trains epoch `state.epoch`; returns the mean over its global batches of their mean
        loss, the same on every rank."""
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.context.device)
        for done, batch in enumerate(batches.epoch(state.epoch), start=1):
            loss_sum += step(batch.features, partial(self._batch_loss, batch))
            state.trained_rows += batch.rows
            if self.reporter.due():
                # Rank 0's own running mean: cheap, and close enough mid-epoch.
                self.reporter.report(pace.record(state, state.epoch, done, float(loss_sum) / done))
        totals = all_reduce_sum(self.context, loss_sum.reshape(1).clone())
        train_loss = float(totals[0]) / (self.context.world_size * batches.steps)
        self._check_divergence(train_loss, state.epoch + 1)
        return train_loss

    def _check_divergence(self, train_loss: float, epoch: int) -> None:
        threshold = self.config.training.divergence_threshold
        if math.isfinite(train_loss) and train_loss <= threshold:
            return
        cause = (
            "not finite"
            if not math.isfinite(train_loss)
            else f"above training.divergenceThreshold {threshold:g}"
        )
        raise LossDiverged(
            f"training loss {train_loss:.6g} at epoch {epoch} is {cause}"
            "; lower training.optimizer.learningRate or set training.gradientClipNorm"
        )

    def _checkpoint_due(self, state: TrainState) -> bool:
        if self.checkpoint_dir is None:
            return False
        last = state.epoch == self.config.training.epochs or state.stopper.should_stop
        return state.epoch % self.config.checkpoint.every_epochs == 0 or last

    def _save_checkpoint(
        self,
        state: TrainState,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
    ) -> None:
        assert self.checkpoint_dir is not None
        saved = save_checkpoint(
            self.checkpoint_dir,
            state.epoch,
            {
                **state.checkpoint_fields(),
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "preprocessing": self.dataset.spec.to_dict(),
                "world_size": self.context.world_size,
                "config_digest": self.config_digest,
            },
            self.config.checkpoint.keep,
        )
        if self.checkpoint_saved is not None:
            self.checkpoint_saved(saved)

    def _outcome(
        self, state: TrainState, network: nn.Module, pace: Pace, cpu_seconds: float
    ) -> TrainOutcome:
        duration = pace.elapsed()
        if state.stopper.enabled and state.best_state is not None:
            network.load_state_dict(state.best_state)
        network.eval()
        epochs_run = len(state.history)
        final_loss = state.history[-1]["train_loss"] if state.history else None
        self.reporter.report(
            pace.record(state, epochs_run, 0, final_loss).model_copy(
                update={"percent": 100.0, "eta_seconds": 0.0}
            ),
            force=True,
        )
        return TrainOutcome(
            network=network,
            epochs_run=epochs_run,
            best_epoch=state.stopper.best_epoch,
            stopped_early=state.stopped_early,
            resumed_from_epoch=state.resumed_from,
            duration_seconds=duration,
            cpu_seconds=cpu_seconds,
            samples_per_second=state.trained_rows / duration if duration > 0 else 0.0,
            final_validation=state.last_validation,
            history=state.history,
        )


def copy_to_cpu(network: nn.Module) -> nn.Module:
    return copy.deepcopy(network).to("cpu").eval()
