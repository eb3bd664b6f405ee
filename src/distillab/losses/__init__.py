"""Loss terms. Each is an `nn.Module` whose `forward(outputs: Outputs)` returns a scalar tensor."""

from distillab.losses.task import L1, MSE, SSIM, CrossEntropy

__all__ = ["CrossEntropy", "L1", "MSE", "SSIM"]
