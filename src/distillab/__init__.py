"""distillab: several losses at once, and knowledge distillation, from Hydra configs."""

__version__ = "0.1.0"
