"""The fitted preprocessing as a torch module: used to encode training data AND exported.

Running the same module in training and inside the ONNX graph is what makes the served model
take raw features with no chance of a training/serving skew.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import PreprocessingSpec


class FittedPreprocessing(nn.Module):
    """Raw numeric features and string-category codes -> the encoded feature matrix.

    Missing numbers (NaN) get the fitted fill value; continuous columns are standardized;
    categorical columns become one-hot blocks, where an unseen or missing category is all zeros.
    """

    fill: torch.Tensor
    continuous: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, spec: PreprocessingSpec) -> None:
        super().__init__()
        self.numeric_count = len(spec.numeric_columns)
        self.string_count = len(spec.string_columns)
        self.register_buffer("fill", torch.tensor(spec.fill, dtype=torch.float32))
        self.register_buffer("continuous", torch.tensor(spec.continuous, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(spec.scale, dtype=torch.float32))
        self.numeric_categorical = list(spec.numeric_categorical)
        for position, categories in enumerate(spec.numeric_categories):
            self.register_buffer(
                f"numeric_categories_{position}", torch.tensor(categories, dtype=torch.float32)
            )
        for position, names in enumerate(spec.string_categories):
            self.register_buffer(
                f"string_codes_{position}",
                torch.arange(len(names), dtype=torch.float32),
            )

    def forward(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        blocks: list[torch.Tensor] = []
        if numeric is not None and self.numeric_count:
            numeric = torch.where(torch.isnan(numeric), self.fill, numeric)
            if self.continuous.numel():
                selected = numeric.index_select(1, self.continuous)
                blocks.append((selected - self.mean) / self.scale)
            for position, column in enumerate(self.numeric_categorical):
                categories = getattr(self, f"numeric_categories_{position}")
                blocks.append((numeric[:, column : column + 1] == categories).to(torch.float32))
        if codes is not None:
            for position in range(self.string_count):
                arange = getattr(self, f"string_codes_{position}")
                blocks.append((codes[:, position : position + 1] == arange).to(torch.float32))
        return torch.cat(blocks, dim=1)
