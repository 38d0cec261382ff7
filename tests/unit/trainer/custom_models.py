"""Custom model entrypoints, as a custom trainer image would provide them."""

from __future__ import annotations

import torch
from torch import nn


class ExportSkewedMLP(nn.Module):
    """Behaves differently while being exported than when run eagerly: the classic way (Python
    state, tracing-time branches) that an export silently stops matching the trained model."""

    def __init__(self, in_features: int, out_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.net(inputs)
        if torch.compiler.is_exporting():
            return logits * 1.5
        return logits


def export_skewed_mlp(in_features: int, out_features: int, hidden: str = "16") -> nn.Module:
    return ExportSkewedMLP(in_features, out_features, int(hidden))


def plain_mlp(in_features: int, out_features: int, hidden: str = "16") -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, int(hidden)), nn.Tanh(), nn.Linear(int(hidden), out_features)
    )
