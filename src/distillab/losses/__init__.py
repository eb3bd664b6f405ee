"""Loss terms. Each is an `nn.Module` whose `forward(outputs: Outputs)` returns a scalar tensor;
`LossTerm` adds the optional hooks (teacher needed, feature taps, shape-dependent set-up)."""

from distillab.losses.base import LossTerm
from distillab.losses.features import NST, VID, AttentionTransfer, Cosine, FeatureMSE, SelfDistillation
from distillab.losses.logits import DIST, DKD, KD, MultiTeacherKD
from distillab.losses.relational import CC, PKT, RKD, SP
from distillab.losses.task import L1, MSE, SSIM, CrossEntropy

__all__ = [
    "AttentionTransfer",
    "CC",
    "Cosine",
    "CrossEntropy",
    "DIST",
    "DKD",
    "FeatureMSE",
    "KD",
    "L1",
    "LossTerm",
    "MSE",
    "MultiTeacherKD",
    "NST",
    "PKT",
    "RKD",
    "SP",
    "SSIM",
    "SelfDistillation",
    "VID",
]
