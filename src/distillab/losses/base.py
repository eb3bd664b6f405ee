"""The small interface a loss term may implement beyond `nn.Module.forward(outputs) -> scalar`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from distillab.objective import Outputs

if TYPE_CHECKING:
    from distillab.data import DataModule


class LossTerm(nn.Module):
    """Base class for loss terms.

    - `needs_teacher`: the run must configure a teacher (checked before training).
    - `student_taps` / `teacher_taps`: dotted module paths whose outputs the term reads from
      `outputs.student.features` / `outputs.teacher.features` (the trainer installs the hooks).
    - `bind_data(data)`: called once, before `setup`, with the run's `DataModule`; terms that keep state
      per training sample (CRD's memory bank: one row per `data.train_targets`) size it here.
      Such terms read each batch's sample indices from `outputs.index`.
    - `setup(outputs)`: called once, before the optimizer exists, with the outputs of a dry run on one
      batch; build shape-dependent parts (projectors) here so their parameters are optimized.
    - An init stage (`init_epochs > 0`; FSP, AB, FT): before the main training, `init_modules(student)`
      alone are trained on `init_loss(outputs)` for `init_epochs` epochs (see `distillab.init_stage`),
      with the run's optimizer settings and `init_lr` if set.
    """

    needs_teacher: bool = False
    supports_ddp: bool = True  # False: trainer.strategy=ddp refuses the term before anything is built further
    init_epochs: int = 0
    init_lr: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def bind_data(self, data: DataModule) -> None:
        """Nothing to size by default."""

    def setup(self, outputs: Outputs) -> None:
        """Nothing to set up by default."""

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the init stage trains (only called when `init_epochs > 0`)."""
        raise NotImplementedError

    def init_loss(self, outputs: Outputs) -> Tensor:
        """The init stage's loss (only called when `init_epochs > 0`)."""
        raise NotImplementedError

    def forward(self, outputs: Outputs) -> Tensor:
        raise NotImplementedError
