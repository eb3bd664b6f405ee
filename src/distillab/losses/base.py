"""The small interface a loss term may implement beyond `nn.Module.forward(outputs) -> scalar`."""

from __future__ import annotations

from torch import Tensor, nn

from distillab.objective import Outputs


class LossTerm(nn.Module):
    """Base class for loss terms.

    - `needs_teacher`: the run must configure a teacher (checked before training).
    - `student_taps` / `teacher_taps`: dotted module paths whose outputs the term reads from
      `outputs.student.features` / `outputs.teacher.features` (the trainer installs the hooks).
    - `setup(outputs)`: called once, before the optimizer exists, with the outputs of a dry run on one
      batch; build shape-dependent parts (projectors) here so their parameters are optimized.
    """

    needs_teacher: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def setup(self, outputs: Outputs) -> None:
        """Nothing to set up by default."""

    def forward(self, outputs: Outputs) -> Tensor:
        raise NotImplementedError
