"""Losses between the student's output and the targets: classification and image reconstruction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distillab import checks
from distillab.errors import ConfigError, InvalidArgument
from distillab.losses.base import LossTerm, in_float32
from distillab.objective import Outputs


class CrossEntropy(LossTerm):
    """Cross-entropy of the student's logits against the labels, mean over the batch."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = checks.number("label_smoothing", label_smoothing, at_least=0, at_most=1)

    def setup(self, outputs: Outputs) -> None:
        out = outputs.student.out
        if out.dim() < 2 or out.shape[1] < 2:  # softmax over one class is 1: the loss is 0 whatever the model does
            raise ConfigError(
                f"cross-entropy needs a score per class, but the student gives {tuple(out.shape[1:])} per sample, "
                "over which it is 0 whatever the model does: use this task's loss (loss=combined, with l1, mse and "
                "ssim, for a reconstruction) or a student with one output per class."
            )

    def forward(self, outputs: Outputs) -> Tensor:
        return F.cross_entropy(outputs.student.out, outputs.targets, label_smoothing=self.label_smoothing)


_l1, _mse = in_float32(F.l1_loss), in_float32(F.mse_loss)  # reduced in float32 under bf16 autocast


class L1(LossTerm):
    """Mean absolute error between the reconstruction and the target image."""

    def forward(self, outputs: Outputs) -> Tensor:
        return _l1(outputs.student.out, outputs.targets)


class MSE(LossTerm):
    """Mean squared error between the reconstruction and the target image."""

    def forward(self, outputs: Outputs) -> Tensor:
        return _mse(outputs.student.out, outputs.targets)


class SSIM(LossTerm):
    """`1 - SSIM` (torchmetrics' Gaussian-window SSIM, mean over the batch): 0 for a perfect reconstruction.
    The Gaussian's `sigma` sets the window (11 pixels at 1.5); computed in float32 also under autocast."""

    def __init__(self, data_range: float = 1.0, sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range = checks.number("data_range", data_range, above=0)
        self.sigma = checks.number("sigma", sigma, above=0, at_most=10)

    def forward(self, outputs: Outputs) -> Tensor:
        from torchmetrics.functional.image import structural_similarity_index_measure

        ssim = structural_similarity_index_measure(
            outputs.student.out.float(), outputs.targets.float(), data_range=self.data_range, sigma=self.sigma
        )
        assert isinstance(ssim, Tensor)  # a tuple only with return_full_image
        return 1.0 - ssim


class Focal(LossTerm):
    """Focal loss (Lin et al. 2017), multi-class: `-alpha_y (1 - p_y)^gamma log p_y`, mean over the batch, from
    the log-softmax (exact for confident predictions). `gamma=0` without `alpha` is cross-entropy; `alpha`: one
    weight per class (null: 1 for all). A task term: on its own (`loss=focal`) or next to distillation terms."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None) -> None:
        super().__init__()
        self.gamma = checks.number("gamma", gamma, at_least=0, at_most=10)
        if alpha is not None and (
            not isinstance(alpha, (list, tuple))
            or not alpha
            or not all(checks.is_number(a) and 0 <= a < math.inf for a in alpha)
        ):
            raise InvalidArgument("alpha", alpha, "null or a list of finite numbers >= 0, one per class")
        # a buffer: on the run's device with the term, not copied from the host every step (not in checkpoints)
        self.register_buffer("alpha", None if alpha is None else torch.tensor([float(a) for a in alpha]), False)
        self.alpha: Tensor | None

    def setup(self, outputs: Outputs) -> None:
        classes = outputs.student.out.shape[1]
        if self.alpha is not None and len(self.alpha) != classes:
            raise InvalidArgument(
                "alpha", self.alpha.tolist(), f"a list of {classes} weights, one per class of this data"
            )

    def forward(self, outputs: Outputs) -> Tensor:
        logits, targets = outputs.student.out, outputs.targets
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        # log p_t = -log(1 + sum_(j != t) exp(z_j - z_t)), as softplus(logsumexp(...)): exact for a confident
        # prediction, where log_softmax's z_t - logsumexp(z) loses it (at a lead of 17, log p_t = -4e-8 is below
        # float32's spacing at 17); 1 - p_t as -expm1(log p_t) likewise. Where that still underflows to 0 (a lead
        # of ~100), the clamp keeps (1 - p_t)^gamma's derivative finite for 0 < gamma < 1 (an infinite slope at 0
        # times a zero gradient is NaN); such a sample adds 0 either way.
        shifted = (z - z.gather(1, targets[:, None])).scatter(1, targets[:, None], float("-inf"))
        log_pt = -F.softplus(torch.logsumexp(shifted, dim=1))
        remaining = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
        loss = -(remaining**self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.device)[targets]
        return loss.mean()
