"""How named loss terms become one total. Each strategy is an `nn.Module` (see `base.Weighting`)."""

from distillab.weighting.base import Weighting
from distillab.weighting.fixed import Fixed

__all__ = ["Fixed", "Weighting"]
