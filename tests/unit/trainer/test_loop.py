"""The training loop's parts: early stopper, train state, one optimisation step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelyard_trainer.train import EarlyStopper, Step, TrainState


def test_early_stopper_counts_epochs_without_an_improvement_of_min_delta() -> None:
    stopper = EarlyStopper("val_loss", min_delta=0.05, patience=2)
    seen = []
    for epoch, loss in enumerate([1.0, 0.8, 0.77, 0.7, 0.74, 0.72], start=1):
        seen.append((stopper.update(epoch, {"val_loss": loss}), stopper.bad_epochs))
        assert stopper.should_stop == (epoch == 6)
    # 0.77 is better than 0.8 but by less than min_delta: a bad epoch.
    assert seen == [(True, 0), (True, 0), (False, 1), (True, 0), (False, 1), (False, 2)]
    assert (stopper.best_epoch, stopper.best_value) == (4, 0.7)


def test_early_stopper_on_accuracy_takes_higher_as_better() -> None:
    stopper = EarlyStopper("val_accuracy", min_delta=0.0, patience=1)
    assert stopper.update(1, {"val_loss": 0.5, "val_accuracy": 0.6})
    assert stopper.update(2, {"val_loss": 0.9, "val_accuracy": 0.7})
    assert not stopper.update(3, {"val_loss": 0.1, "val_accuracy": 0.7})
    # Stored with the sign that makes lower better, as checkpoints keep it.
    assert (stopper.best_epoch, stopper.best_value, stopper.should_stop) == (2, -0.7, True)


def test_early_stopper_without_the_metric_or_patience() -> None:
    stopper = EarlyStopper("val_loss", min_delta=0.0, patience=1)
    # No validation rows: the epoch neither improves nor counts as bad.
    assert not stopper.update(1, {})
    assert (stopper.best_epoch, stopper.bad_epochs, stopper.should_stop) == (None, 0, False)
    never = EarlyStopper("val_loss", min_delta=0.0, patience=None)
    for epoch in range(1, 20):
        never.update(epoch, {"val_loss": float(epoch)})
    assert (never.enabled, never.best_epoch, never.bad_epochs, never.should_stop) == (
        False,
        1,
        18,
        False,
    )


def test_train_state_keeps_best_weights_only_when_stopping_early_and_resumes() -> None:
    network = nn.Linear(2, 1)
    for patience, kept in ((None, False), (3, True)):
        state = TrainState(EarlyStopper("val_loss", 0.0, patience))
        state.end_epoch(0.9, {"val_loss": 0.5}, network)
        best_weight = network.weight.detach().clone()
        with torch.no_grad():
            network.weight.add_(1.0)
        state.end_epoch(0.8, {"val_loss": 0.6}, network)
        assert (state.epoch, state.stopper.best_epoch, state.stopper.bad_epochs) == (2, 1, 1)
        assert state.last_validation == {"val_loss": 0.6}
        assert (state.best_state is not None) == kept
        if state.best_state is not None:
            assert torch.equal(state.best_state["weight"], best_weight)

        resumed = TrainState.resumed(
            copy.deepcopy(state.checkpoint_fields()), EarlyStopper("val_loss", 0.0, patience)
        )
        assert resumed.checkpoint_fields().keys() == state.checkpoint_fields().keys()
        assert (resumed.epoch, resumed.resumed_from, resumed.history) == (2, 2, state.history)
        assert resumed.stopper == state.stopper


def _tiny_model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


@pytest.mark.parametrize("mixed_precision", [False, True])  # True is a no-op off CUDA
@pytest.mark.parametrize("clip_norm", [None, 0.01])
def test_step_without_amp_is_the_plain_pytorch_step(
    mixed_precision: bool, clip_norm: float | None
) -> None:
    plain = _tiny_model()
    model = _tiny_model()
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    step = Step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        torch.device("cpu"),
        mixed_precision=mixed_precision,
        clip_norm=clip_norm,
    )
    assert not step.amp and not step.scaler.is_enabled()
    generator = torch.Generator().manual_seed(3)
    # Two steps: the second shows the gradients are reset and the momentum carried.
    for _ in range(2):
        features = torch.randn(16, 4, generator=generator)
        target = torch.randn(16, 1, generator=generator)

        plain_optimizer.zero_grad()
        plain_loss = nn.functional.mse_loss(plain(features), target)
        plain_loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(plain.parameters(), clip_norm)
        plain_optimizer.step()

        loss = step(features, lambda output, target=target: nn.functional.mse_loss(output, target))
        assert not loss.requires_grad
        assert torch.equal(loss, plain_loss.detach())
        for ours, theirs in zip(model.parameters(), plain.parameters(), strict=True):
            assert torch.equal(ours, theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs CUDA")
def test_step_with_amp_autocasts_the_forward_on_cuda() -> None:
    device = torch.device("cuda")
    plain = _tiny_model().to(device)
    model = _tiny_model().to(device)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    step = Step(model, torch.optim.SGD(model.parameters(), lr=0.1), device, True, 1.0)
    bf16 = torch.cuda.is_bf16_supported()
    amp_dtype = torch.bfloat16 if bf16 else torch.float16
    assert step.amp and step.amp_dtype == amp_dtype and step.scaler.is_enabled() == (not bf16)
    scaler = torch.amp.GradScaler("cuda", enabled=not bf16)
    features = torch.randn(16, 4, device=device)
    target = torch.randn(16, 1, device=device)

    plain_optimizer.zero_grad()
    with torch.autocast("cuda", dtype=amp_dtype):
        output = plain(features)
    scaler.scale(nn.functional.mse_loss(output.float(), target)).backward()
    scaler.unscale_(plain_optimizer)
    nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
    scaler.step(plain_optimizer)
    scaler.update()

    dtypes = []

    def loss_of(output: torch.Tensor) -> torch.Tensor:
        dtypes.append(output.dtype)
        return nn.functional.mse_loss(output.float(), target)

    step(features, loss_of)
    assert dtypes == [amp_dtype]
    for ours, theirs in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(ours, theirs)
