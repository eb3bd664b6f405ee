"""Distillation from the teachers' logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.base import LossTerm, in_float32
from distillab.objective import Outputs

if TYPE_CHECKING:
    from distillab.data import DataModule


def at_least_float32(x: Tensor) -> Tensor:
    """Logits as float32 (bf16/fp16 under autocast) or as they are when wider (float64). A dtype test, not
    `torch.promote_types`, which is an operator call per use (two per KD step)."""
    return x if x.is_floating_point() and x.dtype.itemsize >= 4 else x.float()


def standardize(logits: Tensor) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): each row's z-score, `(z - mean) / (1e-7 + std)`, with the
    unbiased std over the classes, as the authors' code; in float32 also under autocast. A student then matches
    the teacher's logit relations, not their range; the temperature becomes a base temperature."""
    z = at_least_float32(logits)
    return (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True))


def maybe_standardized(student_logits: Tensor, teacher_logits: Tensor, on: bool) -> tuple[Tensor, Tensor]:
    return (standardize(student_logits), standardize(teacher_logits)) if on else (student_logits, teacher_logits)


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, form: str = "kl") -> Tensor:
    """Hinton et al. 2015, times T^2 so gradients keep their scale as T changes.

    `kl`: KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over the batch ("batchmean";
    plain "mean" would also divide by the class count).
    `soft_ce`: the PyTorch tutorial's soft-target cross-entropy `-sum(p_t * log p_s) / B`; it differs
    from `kl` by the teacher's entropy, a constant, so the gradient is the same. In float32 also under autocast.
    """
    log_p_student = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    teacher = at_least_float32(teacher_logits) / temperature
    if form == "kl":
        # The teacher's log-probabilities (`log_target`): the same KL as RepDistiller's `F.kl_div(log_p_s, p_t)`,
        # without its per-element `xlogy(p_t, p_t)`, which on the CPU is a scalar loop of `logf` (about an
        # eighth of the framework's per-step work on `benchmarks/overhead.py --tiny`); a teacher probability
        # that underflows to 0 still adds exactly 0.
        loss = F.kl_div(log_p_student, F.log_softmax(teacher, dim=1), reduction="batchmean", log_target=True)
    else:
        loss = -(F.softmax(teacher, dim=1) * log_p_student).sum(1).mean()
    return loss * temperature**2


class KD(LossTerm):
    """Hinton knowledge distillation against the (first) teacher's logits; `logit_standardization`: both
    z-scored first (`standardize`)."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0, form: str = "kl", logit_standardization: bool = False) -> None:
        super().__init__()
        self.temperature = checks.temperature("temperature", temperature)
        self.form = checks.choice("form", form, ("kl", "soft_ce"))
        self.logit_standardization = checks.flag("logit_standardization", logit_standardization)

    def forward(self, outputs: Outputs) -> Tensor:
        s, t = maybe_standardized(outputs.student.out, outputs.teacher.out, self.logit_standardization)
        return hinton_kd(s, t, self.temperature, self.form)


class MultiTeacherKD(LossTerm):
    """KD against the weighted average of several teachers' logits (equal weights by default)."""

    needs_teacher = True
    reads_every_teacher = True

    def __init__(
        self,
        temperature: float = 4.0,
        teacher_weights: Sequence[float] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = checks.temperature("temperature", temperature)
        self.logit_standardization = checks.flag("logit_standardization", logit_standardization)
        if teacher_weights is not None:
            weights = list(teacher_weights) if isinstance(teacher_weights, (list, tuple)) else None
            if (
                not weights
                or any(not checks.is_number(w) or not 0 <= w < float("inf") for w in weights)
                or sum(weights) <= 0
            ):
                raise InvalidArgument(
                    "teacher_weights", teacher_weights, "a list of finite numbers >= 0, one per teacher, not all 0"
                )
            teacher_weights = weights
        # a buffer: on the run's device with the term, not copied from the host every step (not in checkpoints)
        weights_given = None if teacher_weights is None else torch.tensor([float(w) for w in teacher_weights])
        self.register_buffer("teacher_weights", weights_given, False)
        self.teacher_weights: Tensor | None

    def setup(self, outputs: Outputs) -> None:
        if self.teacher_weights is not None and len(self.teacher_weights) != len(outputs.teachers):
            raise InvalidArgument(
                "teacher_weights",
                self.teacher_weights.tolist(),
                "one weight per teacher, or null (equal weights)",
                why=f"it has {len(self.teacher_weights)} entries for {len(outputs.teachers)} teachers",
            )

    def forward(self, outputs: Outputs) -> Tensor:
        logits = torch.stack([t.out for t in outputs.teachers])  # (K, B, C)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # the mean in float32 under bf16
        if self.teacher_weights is None:
            mean = logits.mean(0)
        else:
            w = self.teacher_weights.to(logits)
            mean = (w[:, None, None] * logits).sum(0) / w.sum()
        return hinton_kd(*maybe_standardized(outputs.student.out, mean, self.logit_standardization), self.temperature)


def other_classes(targets: Tensor, num_classes: int) -> Tensor:
    """(B, C - 1) indices of every class but each row's target, in order (a gather index: no device sync)."""
    j = torch.arange(num_classes - 1, device=targets.device)[None, :]
    return j + (j >= targets[:, None]).long()


def dkd(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): `alpha * TCKD + beta * NCKD`, each a KL divergence times T^2,
    summed over classes and averaged over the batch (as the paper's code: `reduction="sum"` / B).

    TCKD compares the binary distributions (p_target, 1 - p_target) of teacher and student; NCKD the
    distributions over the non-target classes alone (the paper's code masks the target logit with -1000,
    which removes it exactly whenever it is less than ~1000 T ahead). Both are computed in log space:
    `log(1 - p_target)` is the log-sum-exp of the other classes' log-probabilities, so the binary KL stays
    exact for any logit gap (a clamp of `1 - p_target` at 1e-12 saturates once the target leads by ~28 T).
    Computed in float32 also under autocast.
    """
    s, t = at_least_float32(student_logits) / temperature, at_least_float32(teacher_logits) / temperature
    others = other_classes(targets, s.shape[1])
    log_p_s, log_p_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)

    def binary(log_p: Tensor) -> Tensor:  # log (p_target, 1 - p_target)
        return torch.cat([log_p.gather(1, targets[:, None]), log_p.gather(1, others).logsumexp(1, keepdim=True)], dim=1)

    tckd = F.kl_div(binary(log_p_s), binary(log_p_t), reduction="batchmean", log_target=True)
    nckd = F.kl_div(
        F.log_softmax(s.gather(1, others), dim=1),
        F.log_softmax(t.gather(1, others), dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (alpha * tckd + beta * nckd) * temperature**2


class DKD(LossTerm):
    """Decoupled knowledge distillation against the (first) teacher's logits; see `dkd`. The paper warms
    the term's weight up linearly over 20 epochs: `weighting=schedule` with `{dkd: {kind: linear, epochs: 20}}`.
    `logit_standardization`: both z-scored first (`standardize`)."""

    needs_teacher = True

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, logit_standardization: bool = False
    ) -> None:
        super().__init__()
        self.alpha = checks.number("alpha", alpha, at_least=0)
        self.beta = checks.number("beta", beta, at_least=0)
        self.temperature = checks.temperature("temperature", temperature)
        self.logit_standardization = checks.flag("logit_standardization", logit_standardization)

    def forward(self, outputs: Outputs) -> Tensor:
        s, t = maybe_standardized(outputs.student.out, outputs.teacher.out, self.logit_standardization)
        return dkd(s, t, outputs.targets, self.alpha, self.beta, self.temperature)


def nkd(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float, gamma: float) -> Tensor:
    """Normalized KD (Yang et al., ICCV 2023), as the authors' `NKDLoss` (yzd-v/cls_KD): the target part
    `-mean(p_t[target] * log p_s[target])` at temperature 1 (the teacher's target probability as the weight),
    plus `gamma * T^2` times the cross-entropy between teacher and student over the non-target classes alone,
    each renormalised (the target removed before the softmax). In float32 also under autocast."""
    s, t = at_least_float32(student_logits), at_least_float32(teacher_logits)
    target = targets[:, None]
    weight = F.softmax(t, dim=1).gather(1, target)
    target_part = -(weight * F.log_softmax(s, dim=1).gather(1, target)).mean()
    others = other_classes(targets, s.shape[1])
    log_q_s = F.log_softmax(s.gather(1, others) / temperature, dim=1)
    q_t = F.softmax(t.gather(1, others) / temperature, dim=1)
    return target_part - gamma * temperature**2 * (q_t * log_q_s).sum(1).mean()


class NKD(LossTerm):
    """Normalized knowledge distillation against the (first) teacher's logits; see `nkd`. Used beside CE, as the
    authors' distiller adds it to the student's own loss."""

    needs_teacher = True

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        super().__init__()
        self.temperature = checks.temperature("temperature", temperature)
        self.gamma = checks.number("gamma", gamma, at_least=0)

    def forward(self, outputs: Outputs) -> Tensor:
        return nkd(outputs.student.out, outputs.teacher.out, outputs.targets, self.temperature, self.gamma)


def _mean_pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over rows of the Pearson correlation between row i of `a` and row i of `b`."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, temperature: float) -> Tensor:
    """DIST (Huang et al. 2022): `T^2 * (beta * (1 - inter) + gamma * (1 - intra))`, where `inter` is the
    Pearson correlation of student and teacher class probabilities per sample (averaged over the batch)
    and `intra` the correlation per class across the batch (averaged over classes)."""
    # In float64: a class whose probability is nearly the same for every sample has a tiny centred vector,
    # whose float32 rounding changes its correlation at the third digit (B x C numbers: the cost is nil).
    p_s = F.softmax(student_logits.double() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.double() / temperature, dim=1)
    inter = 1 - _mean_pearson(p_s, p_t)
    intra = 1 - _mean_pearson(p_s.T, p_t.T)
    return (temperature**2 * (beta * inter + gamma * intra)).to(
        torch.promote_types(student_logits.dtype, torch.float32)
    )


class DIST(LossTerm):
    """Distillation from a stronger teacher by inter- and intra-class Pearson relations; see `dist_loss`."""

    needs_teacher = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = checks.number("beta", beta, at_least=0)
        self.gamma = checks.number("gamma", gamma, at_least=0)
        self.temperature = checks.temperature("temperature", temperature)

    def forward(self, outputs: Outputs) -> Tensor:
        return dist_loss(outputs.student.out, outputs.teacher.out, self.beta, self.gamma, self.temperature)


def transformed_teacher_matching(
    student_logits: Tensor, teacher_logits: Tensor, exponent: float, weighted: bool = False
) -> Tensor:
    """TTM (Zheng & Yang, ICLR 2024), as the authors' `TTM`/`WTTM` (zkxufo/TTM): the teacher's probabilities raised
    to `exponent` (gamma in the paper, `--ttm_l` in their code) and renormalised, matched by KL to the student's
    plain softmax (temperature 1, no T^2), summed over classes and averaged over the batch. Raising to gamma < 1 is
    a teacher temperature of 1 / gamma, and the paper shows that the student's side then carries a Renyi-entropy
    regulariser. WTTM (`weighted`) weighs each sample's KL by the power sum `sum_i p_t,i^gamma`, larger for the
    teacher's less confident samples.

    In log space (`gamma * log p_t`, then a log-sum-exp): the same numbers as the authors' `pow(softmax(t), gamma)`
    wherever theirs are not 0, and still exact where a large logit gap makes their float32 `softmax` underflow.
    In float32 also under autocast."""
    scaled = exponent * F.log_softmax(at_least_float32(teacher_logits), dim=1)
    log_norm = scaled.logsumexp(1)
    kl = F.kl_div(
        F.log_softmax(at_least_float32(student_logits), dim=1),
        scaled - log_norm[:, None],
        reduction="none",
        log_target=True,
    ).sum(1)
    return (log_norm.exp() * kl).mean() if weighted else kl.mean()


class TTM(LossTerm):
    """Transformed teacher matching against the (first) teacher's logits; see `transformed_teacher_matching`.
    Used beside CE, as the authors' script adds it (CE 1 + beta x TTM)."""

    needs_teacher = True
    weighted = False

    def __init__(self, exponent: float = 0.1) -> None:
        super().__init__()
        self.exponent = checks.number("exponent", exponent, above=0, at_most=1)

    def forward(self, outputs: Outputs) -> Tensor:
        return transformed_teacher_matching(outputs.student.out, outputs.teacher.out, self.exponent, self.weighted)


class WTTM(TTM):
    """Weighted transformed teacher matching: TTM with each sample's KL weighed by the teacher's power sum."""

    weighted = True


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; backward multiplies the gradient by `-strength` (Ganin & Lempitsky's gradient
    reversal layer, as CTKD uses it)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength  # type: ignore[attr-defined]
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None  # type: ignore[attr-defined]


def ctkd_strength(epoch: int, ramp_epochs: int, max_strength: float) -> float:
    """CTKD's curriculum: the reversal's strength rises from 0 to `max_strength` along half a cosine over
    `ramp_epochs` epochs and stays there, as the authors' `CosineDecay(0, -1, 10)` read at epochs counted from 1
    (epoch 0 here is their epoch 1: strength 0.0245 of the maximum with 10 ramp epochs)."""
    done = min(epoch + 1, ramp_epochs) / ramp_epochs if ramp_epochs else 1.0
    return max_strength * (1 - math.cos(math.pi * done)) / 2


class CTKD(LossTerm):
    """Curriculum temperature KD (Li et al., AAAI 2023), global temperature, as the authors' code (zhengli97/CTKD):
    Hinton KD (times T^2) at a learnable temperature `T = min_temperature + span * sigmoid(theta)` (theta starts at
    1: T 15.6 with their 1 and 20), where theta's gradient passes a gradient reversal layer: the student lowers the
    KD loss while the temperature raises it, more so as the curriculum's strength grows (`ctkd_strength`, set by
    `set_epoch` at each epoch's start). theta is a parameter of this term, so it is trained by the run's optimizer
    with the student's settings (weight decay included), as theirs; its temperature is logged as
    `temperature/<term>`. `logit_standardization`: both logits z-scored first (`standardize`)."""

    needs_teacher = True

    def __init__(
        self,
        min_temperature: float = 1.0,
        span: float = 20.0,
        max_strength: float = 1.0,
        ramp_epochs: int = 10,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.min_temperature = checks.temperature("min_temperature", min_temperature)
        self.span = checks.number("span", span, above=0, at_most=100 - self.min_temperature)
        self.max_strength = checks.number("max_strength", max_strength, at_least=0)
        self.ramp_epochs = checks.integer("ramp_epochs", ramp_epochs, at_least=0)
        self.logit_standardization = checks.flag("logit_standardization", logit_standardization)
        self.theta = nn.Parameter(torch.ones(()))
        self.strength = ctkd_strength(0, self.ramp_epochs, self.max_strength)

    def set_epoch(self, epoch: int) -> None:
        self.strength = ctkd_strength(epoch, self.ramp_epochs, self.max_strength)

    def temperature(self, theta: Tensor | None = None) -> Tensor:
        """T from `theta` (the parameter itself unless given: the forward passes it through the reversal)."""
        return self.min_temperature + self.span * torch.sigmoid(self.theta if theta is None else theta)

    def scalars(self) -> dict[str, Tensor]:
        return {"temperature": self.temperature().detach()}

    def forward(self, outputs: Outputs) -> Tensor:
        temperature = self.temperature(_ReverseGradient.apply(self.theta, self.strength))
        s, t = maybe_standardized(outputs.student.out, outputs.teacher.out, self.logit_standardization)
        return hinton_kd(s, t, temperature)  # type: ignore[arg-type]


@in_float32
def _class_relation(p_s: Tensor, p_t: Tensor) -> Tensor:
    """MLKD's class-level term: the squared distance of the (C, C) class-correlation matrices `P^T P`, summed, / C."""
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


@in_float32
def _batch_relation(p_s: Tensor, p_t: Tensor) -> Tensor:
    """MLKD's batch-level term: the squared distance of the (B, B) sample-similarity matrices `P P^T`, summed, / B."""
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def _below_median(x: Tensor) -> Tensor:
    """The fraction of `x`'s entries at or below their median (numpy's 50th percentile, linear interpolation):
    on the device, no host read."""
    return (x <= torch.quantile(x, 0.5)).to(x.dtype).mean()


class MLKD(LossTerm):
    """Multi-level logit distillation (Jin et al., CVPR 2023), as the authors' `KD_ours` (Jin-Ying/Multi-Level-Logit-
    Distillation), at each of `temperatures` (theirs: 4, 3, 5, 2, 6): instance level (KD times T^2), batch level
    (`_batch_relation`) and class level (`_class_relation`) between softmax(s / T) and softmax(t / T).

    `views`: the views of each image in a batch, null (default) for as many as the data gives. With 2 the batch
    holds a weak and a strong view of every image, stacked (`data/augment=weak_and_strong`):
    the first half is weak, the second strong. Their loss, kept as written: KD on the weak view at every T times
    the fraction of samples whose teacher confidence is at or below the median (their per-sample mask multiplies a
    batch mean, so it scales it); KD on the strong view at the first three temperatures and, again on the weak
    view, at the last two, unmasked; the class level on the weak view times the fraction of classes at or below
    the median of the teacher's summed probabilities; the batch level on the weak view times the samples'
    fraction; their strong-view class and batch terms are computed but not used, so not here. With `views=1`
    (one view) the strong view is the weak one, as their code with `image_strong = image_weak` would be.
    `logit_standardization`: z-scored logits in the instance level only, as Sun et al.'s version of this code.
    In float32 also under autocast."""

    needs_teacher = True

    def __init__(
        self,
        temperatures: Sequence[float] = (4.0, 3.0, 5.0, 2.0, 6.0),
        views: int | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        values = list(temperatures) if isinstance(temperatures, (list, tuple)) else None
        if not values:
            raise InvalidArgument("temperatures", temperatures, "a list of temperatures, as [4, 3, 5, 2, 6]")
        self.temperatures = [checks.temperature(f"temperatures[{i}]", t) for i, t in enumerate(values)]
        self.views = 1 if views is None else checks.choice("views", views, (1, 2))
        self.views_from_data = views is None
        self.logit_standardization = checks.flag("logit_standardization", logit_standardization)

    def bind_data(self, data: DataModule) -> None:
        if self.views_from_data and data.views_per_sample in (1, 2):
            self.views = data.views_per_sample
        if data.views_per_sample != self.views:
            raise InvalidArgument(
                "views",
                None if self.views_from_data else self.views,
                "null (as the data gives), 2 with data/augment=weak_and_strong (a weak and a strong view of each "
                "sample), or 1 with one view",
                why=f"it is MLKD's number of views of each sample, and the data gives {data.views_per_sample}",
            )

    def forward(self, outputs: Outputs) -> Tensor:
        s, t = at_least_float32(outputs.student.out), at_least_float32(outputs.teacher.out)
        if self.views == 2:
            (s_weak, s_strong), (t_weak, t_strong) = s.chunk(2), t.chunk(2)
        else:
            s_weak, s_strong, t_weak, t_strong = s, s, t, t
        p_teacher = F.softmax(t_weak, dim=1)
        samples = _below_median(p_teacher.max(1).values)
        classes = _below_median(p_teacher.sum(0))
        ls = self.logit_standardization
        kd_weak = maybe_standardized(s_weak, t_weak, ls)  # the instance level's logits, z-scored once
        kd_strong = maybe_standardized(s_strong, t_strong, ls) if self.views == 2 else kd_weak
        total = s.new_zeros(())
        for i, temperature in enumerate(self.temperatures):
            weak = hinton_kd(*kd_weak, temperature)
            strong = hinton_kd(*kd_strong, temperature) if i < 3 and self.views == 2 else weak
            p_s, p_t = F.softmax(s_weak / temperature, dim=1), F.softmax(t_weak / temperature, dim=1)
            total = (
                total
                + samples * weak
                + strong
                + classes * _class_relation(p_s, p_t)
                + samples * _batch_relation(p_s, p_t)
            )
        return total
