"""Networks (MLP, small CNN, custom entrypoints) and the exportable model around them."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from .config import ModelConfig
from .data import PreprocessingSpec
from .errors import InvalidConfig
from .transforms import FittedPreprocessing

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def _dense_stack(
    in_features: int, hidden: list[int], out_features: int, activation: str, dropout: float
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return layers


class MLP(nn.Sequential):
    def __init__(self, config: ModelConfig, in_features: int, out_features: int) -> None:
        super().__init__(
            *_dense_stack(
                in_features, config.hidden_layers, out_features, config.activation, config.dropout
            )
        )


class SmallCNN(nn.Module):
    """Convolution blocks (conv, activation, 2x2 max-pool while the image is large enough)
    over a square single-channel image, then the dense layers."""

    def __init__(self, config: ModelConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        side = math.isqrt(in_features)
        if side * side != in_features:
            raise InvalidConfig(
                f"model.architecture: 'cnn' needs a square single-channel image, but the data "
                f"encodes to {in_features} features (not a square number)"
            )
        self.side = side
        blocks: list[nn.Module] = []
        channels_in = 1
        for channels in config.channels:
            blocks += [
                nn.Conv2d(
                    channels_in, channels, config.kernel_size, padding=config.kernel_size // 2
                ),
                _ACTIVATIONS[config.activation](),
            ]
            if side >= 2:
                blocks.append(nn.MaxPool2d(2))
                side //= 2
            channels_in = channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            *_dense_stack(
                channels_in * side * side,
                config.hidden_layers,
                out_features,
                config.activation,
                config.dropout,
            ),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        image = inputs.reshape(inputs.shape[0], 1, self.side, self.side)
        return self.head(self.features(image))


def _custom(config: ModelConfig, in_features: int, out_features: int) -> nn.Module:
    assert config.entrypoint is not None
    module_name, _, function_name = config.entrypoint.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise InvalidConfig(
            f"model.entrypoint: cannot load {config.entrypoint!r}: {error}"
        ) from None
    try:
        network = function(
            in_features=in_features, out_features=out_features, **config.entrypoint_args
        )
    except TypeError as error:
        raise InvalidConfig(
            f"model.entrypointArgs: {config.entrypoint!r} rejected its arguments: {error}"
        ) from None
    if not isinstance(network, nn.Module):
        raise InvalidConfig(
            f"model.entrypoint: {config.entrypoint!r} returned {type(network).__name__}, "
            "not a torch.nn.Module"
        )
    return network


def build_network(config: ModelConfig, in_features: int, out_features: int) -> nn.Module:
    """The trainable network: encoded features in, logits (or the scaled target) out."""
    if config.architecture == "mlp":
        return MLP(config, in_features, out_features)
    if config.architecture == "cnn":
        return SmallCNN(config, in_features, out_features)
    return _custom(config, in_features, out_features)


class ExportableModel(nn.Module):
    """Raw features in, served outputs out: preprocessing + network + head.

    Classification returns (probabilities, class_index); regression returns the prediction in
    the target's own units (the network learns the standardized target).
    """

    def __init__(self, spec: PreprocessingSpec, network: nn.Module) -> None:
        super().__init__()
        self.preprocessing = FittedPreprocessing(spec)
        self.network = network
        self.classification = spec.task == "classification"
        self.target_mean = spec.target_mean
        self.target_scale = spec.target_scale

    def forward(
        self, numeric: torch.Tensor | None, codes: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        output = self.network(self.preprocessing(numeric, codes))
        if self.classification:
            probabilities = torch.softmax(output, dim=-1)
            return probabilities, torch.argmax(probabilities, dim=-1)
        return (output[:, 0] * self.target_scale + self.target_mean,)


class NumericOnly(nn.Module):
    """Export adapter: the ONNX graph takes only the numeric input."""

    def __init__(self, model: ExportableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, numeric: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(numeric, None)


class CodesOnly(nn.Module):
    """Export adapter: the ONNX graph takes only the string-category codes."""

    def __init__(self, model: ExportableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(None, codes)


class NumericAndCodes(nn.Module):
    def __init__(self, model: ExportableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(numeric, codes)
