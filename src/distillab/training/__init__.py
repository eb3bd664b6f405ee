"""The one generic training loop, split by job: `loop` (the Trainer: stages, epochs, validation), `stages`
(init stages and the main training), `step` (one optimizer step and its backward), `state` (progress and
running sums), `checkpoints` (save and exact restore), `progress` (the bar or the periodic log line), `evaluate`
(validation), `pictures` (images for TensorBoard)."""

from distillab.training.evaluate import evaluate
from distillab.training.loop import Trainer
from distillab.training.state import FitResult

__all__ = ["FitResult", "Trainer", "evaluate"]
