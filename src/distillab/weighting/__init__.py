"""How named loss terms become one update. Each strategy is an `nn.Module` (see `base.Weighting`)."""

from distillab.weighting.base import BackwardContext, Weighting
from distillab.weighting.dot import DistillationOriented
from distillab.weighting.epochwise import DWA, Scheduled, Staged
from distillab.weighting.fixed import Fixed
from distillab.weighting.gradnorm import GradNorm
from distillab.weighting.jacobian import JacobianAggregation
from distillab.weighting.learnable import Learnable, Uncertainty

__all__ = [
    "DWA",
    "BackwardContext",
    "DistillationOriented",
    "Fixed",
    "GradNorm",
    "JacobianAggregation",
    "Learnable",
    "Scheduled",
    "Staged",
    "Uncertainty",
    "Weighting",
]
