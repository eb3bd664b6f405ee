"""Learnable weights in log space, and Kendall et al.'s uncertainty weighting."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.weighting.base import Weighting


class _LogSpace(Weighting):
    """One parameter `s_i` per term, trained with the model, clamped to `log_weight_range`."""

    def __init__(
        self, weights: Mapping[str, float], lr: float | None = None, log_weight_range: Sequence[float] = (-6.0, 6.0)
    ) -> None:
        super().__init__(weights, lr)
        bounds = list(log_weight_range) if isinstance(log_weight_range, (list, tuple)) else []
        if (
            len(bounds) != 2
            or not all(checks.is_number(b) and math.isfinite(b) for b in bounds)
            or not bounds[0] < bounds[1]
            or max(map(abs, bounds)) > 30
        ):
            raise InvalidArgument(
                "log_weight_range", log_weight_range, "[low, high] with low < high, both finite and within [-30, 30]"
            )
        low, high = (float(v) for v in bounds)
        self.low, self.high = low, high
        if (self.initial == 0).any():
            zero = [n for n, w in zip(self.names, self.initial.tolist()) if w == 0]
            raise InvalidArgument(
                "weights",
                dict(weights),
                "positive initial weights",
                why=f"the weights of {zero} are 0, which a log-space weight cannot start from",
            )
        self.log_weights = nn.Parameter(self.initial_log_weights().clamp(low, high))

    def initial_log_weights(self) -> Tensor:
        raise NotImplementedError

    def clamped(self) -> Tensor:
        return self.log_weights.clamp(self.low, self.high)


class Learnable(_LogSpace):
    """Learnable weights in log space, `s_i` initialised at `log(w0_i)`, the configured weight (0 for 1).

    `form: bounded` (default): the weights are the configured total `W = sum_i w0_i` shared out by a softmax,
    `w_i = W * softmax(s)_i` (at the start `w_i = w0_i`), and `sum_i w_i * L_i - sum_i w0_i * log softmax(s)_i`
    is minimised. Over the simplex its minimum is at `p_i = w0_i / (W * L_i + lambda)`, `lambda` making them sum
    to 1: terms of equal loss keep their configured weights, a term with a larger loss gets less, and nothing
    collapses (the log barrier) or explodes (the sum is fixed). Every weight stays in (0, W) whatever the
    losses do; when a term goes to 0 (training CE on 100 labels), its weight rises to `W * w0_i / lambda` and
    the others keep at least `w0_j / (1 + L_j)`. Two terms of weight 1 with L = (0, 1): w = (sqrt 2, 2 - sqrt 2).
    The barrier adds a constant-sign term, so `loss/total` stays >= 0 for non-negative losses.

    `form: barrier` minimises `sum_i exp(s_i) * L_i - w0_i * s_i`, whose minimum is at `w_i = w0_i / L_i`: each
    weighted term settles at its configured weight, so a weight grows without bound (up to the clamp,
    `exp(6)` = 403) as its term goes to 0; `loss/total` can become negative. `weighting=uncertainty`
    (Kendall et al.) is this update with every `w0_i` replaced by 1. `form: bare` minimises
    `sum_i exp(s_i) * L_i`, which always drives every weight to zero (it is here to show that; it warns).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        lr: float | None = None,
        log_weight_range: Sequence[float] = (-6.0, 6.0),
        form: str = "bounded",
    ) -> None:
        checks.choice("form", form, ("bounded", "barrier", "bare"))
        if form == "bare":
            warnings.warn(
                "weighting.form=bare minimises sum(exp(s) * L): every weight collapses towards zero.", stacklevel=2
            )
        super().__init__(weights, lr, log_weight_range)
        self.form = form

    def initial_log_weights(self) -> Tensor:
        return self.initial.log()

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        s = self.clamped()
        if self.form == "bounded":
            log_p = torch.log_softmax(s, 0)
            weights = self.initial.sum() * log_p.exp()
            return (weights * losses).sum() - (self.initial * log_p).sum(), weights.detach()
        weights = s.exp()
        total = (weights * losses).sum()
        if self.form == "barrier":
            total = total - (self.initial * s).sum()
        return total, weights.detach()


class Uncertainty(_LogSpace):
    """Kendall, Gal & Cipolla 2018: `sum_i exp(-s_i) * L_i + s_i`, `s_i` a log-variance.

    The effective weight is `exp(-s_i)` (times 1/2 with `half: true`, the regression form
    `1/(2 sigma^2) L + log sigma`); its optimum is `1 / L_i` (`1 / (2 L_i)`), so the total becomes a sum
    of log-losses and can be negative. `s_i` starts at `-log(initial weight)`.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        lr: float | None = None,
        log_weight_range: Sequence[float] = (-6.0, 6.0),
        half: bool = False,
    ) -> None:
        self.scale = 0.5 if checks.flag("half", half) else 1.0
        super().__init__(weights, lr, log_weight_range)

    def initial_log_weights(self) -> Tensor:
        return -(self.initial / self.scale).log()

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        s = self.clamped()
        weights = self.scale * torch.exp(-s)
        return (weights * losses + self.scale * s).sum(), weights.detach()
