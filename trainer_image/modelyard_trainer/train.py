"""The training loop: DDP, a global batch shared by all processes, checkpoints, early stopping.

The batch size is global: every rank takes its share of each global batch (DistributedSampler
deals the epoch's seeded permutation round-robin, so the k-th local batches of all ranks
together are exactly the k-th global batch of a single process). On a full batch every rank
holds batch/world_size rows, so the mean of the local mean losses that DDP's gradient averaging
takes is the global batch's mean: the textbook step, and the same run for any world size up to
float summation order. Only the last, partial batch needs care: there each rank's loss is its
sum scaled by world_size / rows-in-the-global-batch, and the rows that DistributedSampler
repeats to even out the ranks weigh zero.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
        self.local_batch = batch // context.world_size

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

    def fit(self, resume: dict[str, Any] | None) -> TrainOutcome:
        config = self.config
        training = config.training
        context = self.context
        device = context.device
        seed_everything(training.seed)

        spec = self.dataset.spec
        train = encode_part(spec, self.dataset.train, device)
        validation = encode_part(spec, self.dataset.validation, device)
        rows = len(train)

        network = build_network(config.model, spec.encoded_width, spec.outputs).to(device)
        optimizer = _optimizer(config, network.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
        amp = training.mixed_precision and device.type == "cuda"
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

        start_epoch = 0
        history: list[dict[str, Any]] = []
        early = training.early_stopping
        best_value: float | None = None
        best_epoch: int | None = None
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs = 0
        resumed_from: int | None = None
        if resume is not None:
            network.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if resume["scaler"]:
                scaler.load_state_dict(resume["scaler"])
            restore_rng_state(resume["rng"])
            start_epoch = resumed_from = int(resume["epoch"])
            history = list(resume["history"])
            best_value = resume["best_value"]
            best_epoch = resume["best_epoch"]
            best_state = resume["best_state"]
            bad_epochs = int(resume["bad_epochs"])
            log.info("resuming after epoch %d", start_epoch)

        model: nn.Module = network
        if context.distributed:
            model = DistributedDataParallel(
                network, device_ids=[device] if device.type == "cuda" else None
            )
        model.train()

        sampler: DistributedSampler[int] = DistributedSampler(
            range(rows),  # type: ignore[arg-type]
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=True,
            seed=training.seed,
            drop_last=False,
        )
        local_rows = sampler.num_samples
        steps_per_epoch = math.ceil(local_rows / self.local_batch)
        # Position p of this rank's list is position rank + p * world_size of the padded
        # permutation; positions past the real rows are DistributedSampler's repeats.
        padded_position = context.rank + torch.arange(local_rows) * context.world_size
        real_row = (padded_position < rows).to(device=device, dtype=torch.float32)
        global_batch = training.batch_size
        # Only the last step can hold fewer than a full global batch.
        partial_step = steps_per_epoch - 1 if rows % global_batch else -1
        partial_rows = rows % global_batch
        world_size = context.world_size

        clock = time.monotonic
        total_steps = training.epochs * steps_per_epoch
        eta = EtaEstimator(total_steps, start_epoch * steps_per_epoch, clock)
        started = clock()
        cpu_started = time.process_time()
        trained_rows = 0
        epoch = start_epoch
        stopped_early = False
        last_validation: dict[str, float] = dict(history[-1]["validation"]) if history else {}
        watched_metric = early.metric if early.enabled else "val_loss"
        sign = -1.0 if watched_metric == "val_accuracy" else 1.0
        min_delta = early.min_delta if early.enabled else 0.0

        def progress(epoch_done: int, step: int, loss: float | None) -> ProgressRecord:
            done = epoch_done * steps_per_epoch + step
            elapsed = clock() - started
            return ProgressRecord(
                generation=self.identity.generation,
                attempt=self.identity.attempt,
                stage="Training",
                epoch=epoch_done,
                epochs=training.epochs,
                step=step,
                steps_per_epoch=steps_per_epoch,
                percent=min(100.0, 100.0 * done / total_steps),
                loss=loss,
                validation=last_validation,
                samples_per_second=trained_rows / elapsed if elapsed > 0 else None,
                eta_seconds=eta.eta(done),
                world_size=world_size,
            )

        for epoch in range(start_epoch, training.epochs):
            # Per-epoch seeds: dropout draws do not depend on what earlier epochs (or an
            # interrupted attempt, or another world size) consumed, so a resume is exact.
            torch.manual_seed(training.seed * 1_000_003 + epoch * 1009 + context.rank)
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long, device=device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=device)
            for step in range(steps_per_epoch):
                begin = step * self.local_batch
                indices = order[begin : begin + self.local_batch]
                features = train.features[indices]
                target = train.target[indices]
                optimizer.zero_grad(set_to_none=True)
                if amp:
                    with torch.autocast(device.type, dtype=amp_dtype):
                        output = model(features)
                else:
                    output = model(features)
                if step == partial_step:
                    weights = real_row[begin : begin + len(indices)]
                    row_sum = (self._loss_per_row(output, target) * weights).sum()
                    loss = row_sum * (world_size / partial_rows)
                else:
                    loss = self._mean_loss(output, target)
                if scaler.is_enabled():
                    scaler.scale(loss).backward()
                    if training.gradient_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(network.parameters(), training.gradient_clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if training.gradient_clip_norm is not None:
                        nn.utils.clip_grad_norm_(network.parameters(), training.gradient_clip_norm)
                    optimizer.step()
                loss_sum += loss.detach()
                trained_rows += partial_rows if step == partial_step else global_batch
                if self.reporter.due():
                    # Rank 0's own running mean: cheap, and close enough mid-epoch.
                    self.reporter.report(progress(epoch, step + 1, float(loss_sum) / (step + 1)))

            # The mean over the epoch's global batches of their mean loss, on every rank alike.
            totals = all_reduce_sum(context, loss_sum.reshape(1).clone())
            train_loss = float(totals[0]) / (world_size * steps_per_epoch)
            if not math.isfinite(train_loss) or train_loss > training.divergence_threshold:
                raise LossDiverged(
                    f"training loss {train_loss:.6g} at epoch {epoch + 1} is "
                    + (
                        "not finite"
                        if not math.isfinite(train_loss)
                        else f"above training.divergenceThreshold {training.divergence_threshold:g}"
                    )
                    + "; lower training.optimizer.learningRate or set training.gradientClipNorm"
                )
            scheduler.step()
            last_validation = self._validate(network, validation)
            history.append(
                {"epoch": epoch + 1, "train_loss": train_loss, "validation": last_validation}
            )

            watched = last_validation.get(watched_metric)
            if watched is not None:
                value = sign * watched
                if best_value is None or value < best_value - min_delta:
                    best_value, best_epoch, bad_epochs = value, epoch + 1, 0
                    if early.enabled:
                        best_state = {
                            key: tensor.detach().cpu().clone()
                            for key, tensor in network.state_dict().items()
                        }
                else:
                    bad_epochs += 1
            stop = early.enabled and bad_epochs >= early.patience
            last = epoch + 1 == training.epochs or stop
            if self.checkpoint_dir is not None and (
                (epoch + 1) % config.checkpoint.every_epochs == 0 or last
            ):
                saved = save_checkpoint(
                    self.checkpoint_dir,
                    epoch + 1,
                    {
                        "epoch": epoch + 1,
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "history": history,
                        "best_value": best_value,
                        "best_epoch": best_epoch,
                        "best_state": best_state,
                        "bad_epochs": bad_epochs,
                        "rng": rng_state(),
                        "preprocessing": spec.to_dict(),
                        "world_size": world_size,
                        "config_digest": self.config_digest,
                    },
                    config.checkpoint.keep,
                )
                if self.checkpoint_saved is not None:
                    self.checkpoint_saved(saved)
            eta.epoch_done((epoch + 1) * steps_per_epoch)
            if self.reporter.due():
                self.reporter.report(progress(epoch + 1, 0, train_loss))
            if stop:
                stopped_early = True
                log.info("early stopping after epoch %d (best epoch %s)", epoch + 1, best_epoch)
                break

        duration = clock() - started
        cpu_seconds = time.process_time() - cpu_started
        if early.enabled and best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        epochs_run = len(history)
        self.reporter.report(
            progress(epochs_run, 0, history[-1]["train_loss"] if history else None).model_copy(
                update={"percent": 100.0, "eta_seconds": 0.0}
            ),
            force=True,
        )
        return TrainOutcome(
            network=network,
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            stopped_early=stopped_early,
            resumed_from_epoch=resumed_from,
            duration_seconds=duration,
            cpu_seconds=cpu_seconds,
            samples_per_second=trained_rows / duration if duration > 0 else 0.0,
            final_validation=last_validation,
            history=history,
        )


def copy_to_cpu(network: nn.Module) -> nn.Module:
    return copy.deepcopy(network).to("cpu").eval()
