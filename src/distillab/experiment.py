"""`Experiment`: everything a run trains, built and on its device (see `distillab.build`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from distillab.data import DataModule
from distillab.objective import ModelOutput, Objective, Outputs
from distillab.optim import Optimization
from distillab.taps import FeatureTaps
from distillab.tasks import Task
from distillab.teacher_outputs import TeacherOutputCache, run_teachers
from distillab.weighting import Weighting


@dataclass
class Experiment:
    """Everything `Trainer.fit_group` needs of one run. `forward` is the one forward pass of a training step."""

    data: DataModule
    task: Task
    student: nn.Module
    objective: Objective
    weighting: Weighting
    optim: Optimization
    student_taps: FeatureTaps
    teachers: list[nn.Module] = field(default_factory=list)
    teacher_taps: list[FeatureTaps] = field(default_factory=list)
    teacher_cache: TeacherOutputCache | None = None  # set once the teachers are trained (teacher.cache_outputs)

    def cached_teacher_outputs(self, index: Tensor | None, view: Tensor | None) -> list[ModelOutput] | None:
        """The teachers' outputs for samples `index` (and augmented `view`) from the teacher cache; None where
        there is no cache (or no index), and the teachers must run."""
        if self.teacher_cache is None or index is None:
            return None
        return self.teacher_cache.lookup(index, view)

    def forward(self, x: Tensor, y: Tensor, index: Tensor | None = None, view: Tensor | None = None) -> Outputs:
        """Student forward (with gradients) and the frozen teachers' outputs with their tapped features:
        looked up in the teacher cache when there is one (`cached_teacher_outputs`), else computed."""
        cached = self.cached_teacher_outputs(index, view)
        return forward_pass(self.student, self.student_taps, self.teachers, self.teacher_taps, x, y, cached, index)


def forward_pass(
    student: nn.Module,
    student_taps: FeatureTaps,
    teachers: list[nn.Module],
    teacher_taps: list[FeatureTaps],
    x: Tensor,
    y: Tensor,
    teacher_outs: list[ModelOutput] | None = None,
    index: Tensor | None = None,
) -> Outputs:
    # The frozen teachers first: their activations are freed before the student's (kept for its backward)
    # are made, so the teachers' convolutions run with the smaller working set (measurably faster on a CPU).
    if teacher_outs is None:
        teacher_outs = run_teachers(teachers, teacher_taps, x) if teachers else []
    out = ModelOutput(student(x), student_taps.pop())
    return Outputs(inputs=x, targets=y, student=out, teachers=teacher_outs, index=index)
