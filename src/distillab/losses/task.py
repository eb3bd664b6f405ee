"""Losses between the student's output and the targets: classification and image reconstruction."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from distillab.objective import Outputs


class CrossEntropy(nn.Module):
    """Cross-entropy of the student's logits against the labels, mean over the batch."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Outputs) -> Tensor:
        return F.cross_entropy(outputs.student.out, outputs.targets, label_smoothing=self.label_smoothing)


class L1(nn.Module):
    """Mean absolute error between the reconstruction and the target image."""

    def forward(self, outputs: Outputs) -> Tensor:
        return F.l1_loss(outputs.student.out, outputs.targets)


class MSE(nn.Module):
    """Mean squared error between the reconstruction and the target image."""

    def forward(self, outputs: Outputs) -> Tensor:
        return F.mse_loss(outputs.student.out, outputs.targets)


class SSIM(nn.Module):
    """`1 - SSIM` (torchmetrics' Gaussian-window SSIM, mean over the batch): 0 for a perfect reconstruction.
    The Gaussian's `sigma` sets the window (11 pixels at 1.5); computed in float32 also under autocast."""

    def __init__(self, data_range: float = 1.0, sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range, self.sigma = data_range, sigma

    def forward(self, outputs: Outputs) -> Tensor:
        ssim = structural_similarity_index_measure(
            outputs.student.out.float(), outputs.targets.float(), data_range=self.data_range, sigma=self.sigma
        )
        return 1.0 - ssim
