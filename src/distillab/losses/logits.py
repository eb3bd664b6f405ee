"""Distillation from the teachers' logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distillab.errors import ConfigError
from distillab.losses.base import LossTerm
from distillab.objective import Outputs


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, form: str = "kl") -> Tensor:
    """Hinton et al. 2015, times T^2 so gradients keep their scale as T changes.

    `kl`: KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over the batch ("batchmean";
    plain "mean" would also divide by the class count).
    `soft_ce`: the PyTorch tutorial's soft-target cross-entropy `-sum(p_t * log p_s) / B`; it differs
    from `kl` by the teacher's entropy, a constant, so the gradient is the same.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    if form == "kl":
        loss = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    else:
        loss = -(p_teacher * log_p_student).sum(1).mean()
    return loss * temperature**2


class KD(LossTerm):
    """Hinton knowledge distillation against the (first) teacher's logits."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0, form: str = "kl") -> None:
        super().__init__()
        if form not in ("kl", "soft_ce"):
            raise ConfigError(f"KD form={form!r} is not valid: use 'kl' or 'soft_ce'.")
        self.temperature, self.form = temperature, form

    def forward(self, outputs: Outputs) -> Tensor:
        return hinton_kd(outputs.student.out, outputs.teacher.out, self.temperature, self.form)


class MultiTeacherKD(LossTerm):
    """KD against the weighted average of several teachers' logits (equal weights by default)."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0, teacher_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.teacher_weights = None if teacher_weights is None else torch.tensor([float(w) for w in teacher_weights])

    def setup(self, outputs: Outputs) -> None:
        if self.teacher_weights is not None and len(self.teacher_weights) != len(outputs.teachers):
            raise ConfigError(
                f"loss teacher_weights has {len(self.teacher_weights)} entries for {len(outputs.teachers)} teachers: give one per teacher."
            )

    def forward(self, outputs: Outputs) -> Tensor:
        logits = torch.stack([t.out for t in outputs.teachers])  # (K, B, C)
        if self.teacher_weights is None:
            mean = logits.mean(0)
        else:
            w = self.teacher_weights.to(logits)
            mean = (w[:, None, None] * logits).sum(0) / w.sum()
        return hinton_kd(outputs.student.out, mean, self.temperature)
