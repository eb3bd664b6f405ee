"""What a run is scored on: validation metrics, the validation loss, and the value to monitor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distillab import checks
from distillab.errors import InvalidArgument


class Task:
    """Metrics are accumulated as sums over samples (tensors, no device sync) plus the number of samples (counted
    on the host), and reduced once per logged point or epoch: `reduce(sums, samples)`.

    `val/loss` is the task's own loss (cross-entropy, MSE), not the weighted training objective, so it
    stays comparable across weightings and distillation methods.
    """

    #: metric the best checkpoint and ReduceLROnPlateau follow, e.g. "val/acc"
    monitor: str
    #: "max" or "min"
    mode: str
    #: the names `train_sums` returns, in order
    train_sum_names: tuple[str, ...] = ()

    def __init__(self, monitor: str, mode: str) -> None:
        if mode not in ("max", "min"):
            raise InvalidArgument("mode", mode, "max or min")
        self.monitor, self.mode = monitor, mode

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Sums over the samples given, logged as `train/<name>` once reduced. The loop calls it on several
        steps' outputs and targets concatenated (`Stage.summarise`), so each sum must add up per sample."""
        raise NotImplementedError

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def reduce(self, sums: dict[str, float], samples: int) -> dict[str, float]:
        raise NotImplementedError

    @property
    def metrics(self) -> tuple[str, ...]:
        """The `val/<name>` metrics this task reports (known before training: a staged weighting's metric is
        checked against them)."""
        raise NotImplementedError

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


class Classification(Task):
    """Accuracy in percent (0-100) and mean cross-entropy."""

    train_sum_names = ("correct",)

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        super().__init__(monitor, mode)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("acc", "loss")

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        # `max(1)`'s indices are `argmax(1)`'s (the first of tied maxima); on the held batches (hundreds of rows)
        # it takes about 0.6x argmax's instructions on the CPU (torch 2.14). A count: exact up to 2**24 samples per call
        return {"correct": (out.max(1).indices == targets).sum(dtype=torch.float32)}

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {**self.train_sums(out, targets), "loss": F.cross_entropy(out.float(), targets, reduction="sum")}

    def reduce(self, sums: dict[str, float], samples: int) -> dict[str, float]:
        metrics = {"acc": 100.0 * sums["correct"] / samples}
        if "loss" in sums:
            metrics["loss"] = sums["loss"] / samples
        return metrics


class Reconstruction(Task):
    """PSNR (dB, over all pixels), SSIM (mean per image, validation only) and mean squared error.

    SSIM is torchmetrics' Gaussian-window SSIM: its window is set by `ssim_sigma` alone (2 * int(3.5 sigma + 0.5) + 1
    pixels, 11 at the usual 1.5; the images are reflect-padded), which is why there is no window-size key.
    """

    train_sum_names = ("squared_error",)

    def __init__(
        self, monitor: str = "val/psnr", mode: str = "max", data_range: float = 1.0, ssim_sigma: float = 1.5
    ) -> None:
        super().__init__(monitor, mode)
        self.data_range = checks.number("data_range", data_range, above=0, at_most=1e6)
        self.ssim_sigma = checks.number("ssim_sigma", ssim_sigma, above=0, at_most=100)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("psnr", "ssim", "loss")

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Each image's mean squared error, summed (every image has the same number of pixels)."""
        return {"squared_error": (out.float() - targets).pow(2).flatten(1).mean(1).sum()}

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        from torchmetrics.functional.image import structural_similarity_index_measure

        ssim = structural_similarity_index_measure(
            out.float(), targets, data_range=self.data_range, sigma=self.ssim_sigma, reduction="sum"
        )
        assert isinstance(ssim, Tensor)
        return {**self.train_sums(out, targets), "ssim": ssim}

    def reduce(self, sums: dict[str, float], samples: int) -> dict[str, float]:
        mse = sums["squared_error"] / samples
        metrics = {"psnr": 10.0 * math.log10(self.data_range**2 / max(mse, 1e-12))}
        if "ssim" in sums:
            metrics["ssim"] = sums["ssim"] / samples
            metrics["loss"] = mse
        return metrics
