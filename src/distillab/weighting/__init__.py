"""How named loss terms become one total. Each strategy is an `nn.Module` (see `base.Weighting`)."""

from distillab.weighting.base import Weighting
from distillab.weighting.epochwise import DWA, Scheduled, Staged
from distillab.weighting.fixed import Fixed
from distillab.weighting.gradnorm import GradNorm
from distillab.weighting.learnable import Learnable, Uncertainty

__all__ = ["DWA", "Fixed", "GradNorm", "Learnable", "Scheduled", "Staged", "Uncertainty", "Weighting"]
