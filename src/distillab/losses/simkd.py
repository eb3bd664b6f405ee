"""SimKD (Chen et al., CVPR 2022): the student's last map, through a projector, is classified by the teacher's own
classifier, reused frozen; the only loss is the projected map's distance to the teacher's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.base import LossTerm, in_float32, linear_classifier
from distillab.losses.features import common_size, one_path, pool_to_common
from distillab.objective import Outputs
from distillab.taps import submodule


class PoolTo(nn.Module):
    """Adaptive average pooling to `size`, or nothing while `size` is None (set once the maps' sizes are known);
    the size is part of its state dict, so an exported student pools as the trained one did."""

    def __init__(self) -> None:
        super().__init__()
        self.size: tuple[int, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.size is None else F.adaptive_avg_pool2d(x, self.size)

    def get_extra_state(self) -> Any:
        return {"size": self.size}

    def set_extra_state(self, state: Any) -> None:
        self.size = None if state["size"] is None else (int(state["size"][0]), int(state["size"][1]))


def simkd_projector(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """The authors' bottleneck (DefangChen/SimKD, models/util.py): 1x1 conv to out/factor channels, 3x3 conv,
    1x1 conv to the teacher's channels, each bias-free and followed by BatchNorm and ReLU."""
    mid = max(1, out_channels // factor)
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def reuse_teacher_classifier(
    student: nn.Module, pool: str, classifier: str, teacher_classifier: nn.Linear, factor: int = 2
) -> nn.Sequential:
    """Make `student` a SimKD student, in place: its pooling module `pool` becomes (align, projector, that pooling),
    and its classifier `classifier` becomes `teacher_classifier` (frozen, shared). Returns the new pooling
    module. Training calls this through `SimKD`; to load a SimKD run's `checkpoints/best.pt` into a freshly built
    student, call it the same way on that student (with the teacher's classifier, or any `nn.Linear` of that
    shape, whose weights the checkpoint then fills) before `load_state_dict`."""
    original = linear_classifier(student, classifier, "student_classifier", "student")
    pooling = submodule(
        student,
        pool,
        "student_pool",
        "the module path of the student's global pooling (avgpool), the projector's place",
    )
    head = nn.Sequential(
        PoolTo(),
        simkd_projector(original.in_features, teacher_classifier.in_features, factor).to(original.weight.device),
        pooling,
    )
    student.set_submodule(pool, head)
    student.set_submodule(classifier, teacher_classifier)
    return head


class SimKD(LossTerm):
    """SimKD, as the authors' code: the student's last map (the input of its pooling module `student_pool`) goes
    through the projector (`simkd_projector`, bottleneck `factor`), and the MSE between that and the teacher's last
    map (`teacher_layer`) is the loss (the authors train with it alone: no CE, no KD). Where the maps' sizes
    differ, the larger is average-pooled to the smaller's, per dimension (the student's before the projector).
    The student then predicts through the teacher's classifier: `bind_models` rebuilds the student so
    (`reuse_teacher_classifier`), so its training accuracy, validation and checkpoints are the SimKD student's.
    Runs alone in a fused sweep."""

    needs_teacher = True
    fuses = False  # it rebuilds the student's head

    def __init__(
        self,
        teacher_layer: str,
        student_pool: str = "avgpool",
        student_classifier: str = "fc",
        teacher_classifier: str = "fc",
        factor: int = 2,
    ) -> None:
        super().__init__()
        self.teacher_layer = one_path(teacher_layer, "teacher_layer")
        self.student_pool = one_path(student_pool, "student_pool")
        self.student_classifier = one_path(student_classifier, "student_classifier")
        self.teacher_classifier = one_path(teacher_classifier, "teacher_classifier")
        self.factor = checks.integer("factor", factor, at_least=1)
        self.student_taps = [f"{self.student_pool}.1"]  # the projector's output, inside the rebuilt pooling module
        self.teacher_taps = [self.teacher_layer]
        self.align: tuple[PoolTo] | None = None

    def bind_models(self, student: nn.Module, teachers: Sequence[nn.Module]) -> None:
        classifier = linear_classifier(teachers[0], self.teacher_classifier, "teacher_classifier", "teacher")
        head = reuse_teacher_classifier(student, self.student_pool, self.student_classifier, classifier, self.factor)
        align = head[0]
        assert isinstance(align, PoolTo)
        self.align = (align,)  # in a tuple: the student owns it (and saves it); the term only sets its size

    def setup(self, outputs: Outputs) -> None:
        projected, target = outputs.student.features[self.student_taps[0]], outputs.teacher.features[self.teacher_layer]
        if projected.shape[1] != target.shape[1]:
            raise InvalidArgument(
                "teacher_layer",
                self.teacher_layer,
                f"the map that the teacher pools into its classifier ({projected.shape[1]} channels; this one has "
                f"{target.shape[1]})",
            )
        common = common_size(projected.shape[2:], target.shape[2:])
        if tuple(projected.shape[2:]) != common:
            assert self.align is not None
            self.align[0].size = (common[0], common[1])

    def forward(self, outputs: Outputs) -> Tensor:
        return simkd_loss(outputs.student.features[self.student_taps[0]], outputs.teacher.features[self.teacher_layer])


@in_float32
def simkd_loss(projected: Tensor, target: Tensor) -> Tensor:
    """The MSE of the projected student map and the teacher's, each average-pooled to their common size where
    larger (in a run the student's already is, before its projector)."""
    return F.mse_loss(*pool_to_common(projected, target))
