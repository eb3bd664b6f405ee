"""Learnable weights in log space, and Kendall et al.'s uncertainty weighting."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from distillab import checks
from distillab.errors import ConfigError, InvalidArgument
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
            raise ConfigError(
                f"loss.weights {zero} are 0, which a log-space weight cannot start from: give a positive initial "
                "weight."
            )
        self.log_weights = nn.Parameter(self.initial_log_weights().clamp(low, high))

    def initial_log_weights(self) -> Tensor:
        raise NotImplementedError

    def clamped(self) -> Tensor:
        return self.log_weights.clamp(self.low, self.high)


class Learnable(_LogSpace):
    """`w_i = exp(s_i)`, `s_i` initialised at `log(w0_i)`, the configured weight (0 for 1).

    `form: barrier` (default) minimises `sum_i exp(s_i) * L_i - w0_i * s_i`. Its minimum over `s_i` is at
    `w_i = w0_i / L_i`: each weighted term `w_i * L_i` settles at its configured weight, so the weights
    follow the inverse scale of their term (they cannot collapse) while the configured proportions (KD's
    `alpha` against `1 - alpha`) are kept; at that point the model trains on `sum_i w0_i * log L_i`.
    `weighting=uncertainty` (Kendall et al.) is the same update with every `w0_i` replaced by 1: every
    weighted term settles at 1, whatever the configured weights (they only set where it starts). With all
    configured weights 1 the two are the same algorithm under `s -> -s`.
    `form: bare` minimises `sum_i exp(s_i) * L_i`, which always drives every weight to zero (it is here to
    show that; it warns).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        lr: float | None = None,
        log_weight_range: Sequence[float] = (-6.0, 6.0),
        form: str = "barrier",
    ) -> None:
        checks.choice("form", form, ("barrier", "bare"))
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
