"""Constant weights from config."""

from __future__ import annotations

from torch import Tensor

from distillab.weighting.base import Weighting


class Fixed(Weighting):
    """`total = sum_i w_i * L_i` with the configured `w_i`, which never change."""

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.initial
        if weights.dtype != losses.dtype:  # (a `.to` that changes nothing still goes through the dispatcher)
            weights = weights.to(losses.dtype)
        return (weights * losses).sum(), weights
