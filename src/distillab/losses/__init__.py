"""Loss terms. Each is an `nn.Module` whose `forward(outputs: Outputs)` returns a scalar tensor;
`LossTerm` adds the optional hooks (teacher needed, feature taps, shape-dependent set-up)."""

from distillab.losses.base import LossTerm
from distillab.losses.contrastive import CRD
from distillab.losses.features import (
    NST,
    VID,
    AttentionTransfer,
    ClassAttentionTransfer,
    Cosine,
    FeatureMSE,
    SelfDistillation,
)
from distillab.losses.init_staged import FSP, ActivationBoundaries, FactorTransfer
from distillab.losses.logits import CTKD, DIST, DKD, KD, MLKD, NKD, TTM, WTTM, MultiTeacherKD
from distillab.losses.relational import CC, PKT, RKD, SP
from distillab.losses.review import ReviewKD
from distillab.losses.simkd import SimKD
from distillab.losses.task import L1, MSE, SSIM, CrossEntropy, Focal

__all__ = [
    "CC",
    "CRD",
    "CTKD",
    "DIST",
    "DKD",
    "FSP",
    "KD",
    "L1",
    "MLKD",
    "MSE",
    "NKD",
    "NST",
    "PKT",
    "RKD",
    "SP",
    "SSIM",
    "TTM",
    "VID",
    "WTTM",
    "ActivationBoundaries",
    "AttentionTransfer",
    "ClassAttentionTransfer",
    "Cosine",
    "CrossEntropy",
    "FactorTransfer",
    "FeatureMSE",
    "Focal",
    "LossTerm",
    "MultiTeacherKD",
    "ReviewKD",
    "SelfDistillation",
    "SimKD",
]
