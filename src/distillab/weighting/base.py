"""The interface every weighting strategy implements."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from distillab.errors import ConfigError


class Weighting(nn.Module):
    """Turns the stacked term losses `L` (ordered as `self.names`) into `(total, w)`.

    `w` holds the effective weight of each term at this step, the numbers logged as `weight/<term>`.
    `weights` are the configured weights (the fixed ones, or the initial ones of an adaptive strategy);
    they must be finite and non-negative. A strategy's own parameters go into the optimizer in a group of
    their own, with learning rate `lr` (None: the optimizer's) and no weight decay.
    """

    def __init__(self, weights: Mapping[str, float], lr: float | None = None) -> None:
        super().__init__()
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
                raise ConfigError(f"loss.weights.{name}={value!r} is not a valid weight: use a finite number >= 0.")
        self.names = list(weights)
        self.lr = lr
        self.register_buffer("initial", torch.tensor([float(weights[n]) for n in self.names]))

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def bind(self, student: nn.Module) -> None:
        """Called once with the student before training (strategies that look at its gradients)."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after each epoch with `loss/<term>` epoch means and the `val/...` metrics."""

    def epoch_scalars(self) -> dict[str, float]:
        """Extra values to log after each epoch (e.g. the current stage)."""
        return {}
