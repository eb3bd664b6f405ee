"""What a run is scored on: validation metrics, the validation loss, and the value to monitor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


class Task:
    """Metrics are accumulated as per-batch sums (tensors, no device sync) and reduced once per epoch.

    `val/loss` is the task's own loss (cross-entropy, MSE), not the weighted training objective, so it
    stays comparable across weightings and distillation methods.
    """

    #: metric the best checkpoint and ReduceLROnPlateau follow, e.g. "val/acc"
    monitor: str
    #: "max" or "min"
    mode: str

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Cheap per-batch sums logged as `train/<name>`."""
        raise NotImplementedError

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


def _count(targets: Tensor) -> Tensor:
    return torch.tensor(float(targets.shape[0]), device=targets.device)


class Classification(Task):
    """Accuracy in percent (0-100) and mean cross-entropy."""

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        super().__init__(monitor, mode)

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"correct": (out.argmax(1) == targets).sum(), "n": _count(targets)}

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        loss = F.cross_entropy(out.float(), targets, reduction="sum")
        return {**self.train_sums(out, targets), "loss": loss}

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = {"acc": 100.0 * sums["correct"] / sums["n"]}
        if "loss" in sums:
            metrics["loss"] = sums["loss"] / sums["n"]
        return metrics


class Reconstruction(Task):
    """PSNR (dB, over all pixels), SSIM (mean per image, validation only) and mean squared error.

    SSIM is torchmetrics' Gaussian-window SSIM: its window is set by `ssim_sigma` alone (2 * int(3.5 sigma + 0.5) + 1
    pixels, 11 at the usual 1.5; the images are reflect-padded), which is why there is no window-size key.
    """

    def __init__(self, monitor: str = "val/psnr", mode: str = "max", data_range: float = 1.0, ssim_sigma: float = 1.5) -> None:
        super().__init__(monitor, mode)
        self.data_range, self.ssim_sigma = data_range, ssim_sigma

    def train_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        squared_error = F.mse_loss(out.float(), targets, reduction="sum")
        return {"squared_error": squared_error, "pixels": torch.tensor(float(targets.numel()), device=targets.device)}

    def val_sums(self, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
        ssim = structural_similarity_index_measure(
            out.float(), targets, data_range=self.data_range, sigma=self.ssim_sigma, reduction="sum"
        )
        return {**self.train_sums(out, targets), "ssim": ssim, "n": _count(targets)}

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        mse = sums["squared_error"] / sums["pixels"]
        metrics = {"psnr": 10.0 * math.log10(self.data_range**2 / max(mse, 1e-12))}
        if "ssim" in sums:
            metrics["ssim"] = sums["ssim"] / sums["n"]
            metrics["loss"] = mse
        return metrics
