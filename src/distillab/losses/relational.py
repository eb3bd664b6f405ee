"""Relational distillation: the student matches how the teacher relates the samples of a batch to each
other, not the teacher's features themselves (so student and teacher widths may differ, no projector).

Each term reads one tapped layer of each network (`student_layer`, `teacher_layer`), flattened per sample.
Normalisations are those of the papers' code (RepDistiller), stated per term: they set the usual weights
(SP 3000, PKT 30000, RKD distance 25 + angle 50).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.base import LossTerm, in_float32
from distillab.objective import Outputs


@in_float32
def similarity_preserving(f_s: Tensor, f_t: Tensor) -> Tensor:
    """SP (Tung & Mori 2019): batch similarity matrices `G = f f^T`, each row L2-normalised; the squared
    Frobenius norm of their difference divided by B^2."""
    b = f_s.shape[0]
    g_s = F.normalize(f_s.reshape(b, -1) @ f_s.reshape(b, -1).T, dim=1)
    g_t = F.normalize(f_t.reshape(b, -1) @ f_t.reshape(b, -1).T, dim=1)
    return (g_t - g_s).pow(2).sum() / b**2


@in_float32
def probabilistic_transfer(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT (Passalis & Tefas 2018): cosine similarities mapped to [0, 1] and normalised per row into
    conditional probabilities; mean over all B^2 entries of `p_t * log(p_t / p_s)`."""

    def conditional(f: Tensor) -> Tensor:
        f = f.reshape(f.shape[0], -1)
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        similarity = (f @ f.T + 1.0) / 2.0
        return similarity / similarity.sum(1, keepdim=True)

    p_s, p_t = conditional(f_s), conditional(f_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of `e`, 0 on the diagonal."""
    square = (e * e).sum(1)
    d = (square[:, None] + square[None, :] - 2 * e @ e.T).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _angles(e: Tensor) -> Tensor:
    """Entry (i, j, k): cos of the angle at sample i between the directions to samples j and k (0 if j or k is i)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


@in_float32
def relational_kd(f_s: Tensor, f_t: Tensor, distance_weight: float, angle_weight: float) -> Tensor:
    """RKD (Park et al. 2019): smooth-L1 between the students' and teachers' pairwise distances (each
    divided by its mean over distinct pairs) and between their triplet angles (mean over B^3 entries).
    A batch of one sample has no pairs: the loss is 0."""
    b = f_s.shape[0]
    s, t = f_s.reshape(b, -1), f_t.reshape(b, -1)
    if b < 2:  # no pair of samples: no relation to transfer (the reference would give NaN)
        return s.sum() * 0.0
    d_s, d_t = _distances(s), _distances(t)
    # mean over the off-diagonal entries (all > 0 after the clamp), as the reference's `d[d > 0].mean()`
    pairs = b * (b - 1)
    d_s, d_t = d_s / (d_s.sum() / pairs), d_t / (d_t.sum() / pairs)
    return distance_weight * F.smooth_l1_loss(d_s, d_t) + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))


class _Relational(LossTerm):
    needs_teacher = True

    def __init__(self, student_layer: str, teacher_layer: str) -> None:
        super().__init__()
        for name, value in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if not isinstance(value, str) or not value:
                raise InvalidArgument(name, value, "a module path such as layer3 or avgpool")
        self.student_taps, self.teacher_taps = [student_layer], [teacher_layer]

    def features(self, outputs: Outputs) -> tuple[Tensor, Tensor]:
        return outputs.student.features[self.student_taps[0]], outputs.teacher.features[self.teacher_taps[0]]


class SP(_Relational):
    """Similarity-preserving KD; see `similarity_preserving`. RepDistiller: last stage output, weight 3000."""

    def forward(self, outputs: Outputs) -> Tensor:
        return similarity_preserving(*self.features(outputs))


class PKT(_Relational):
    """Probabilistic knowledge transfer; see `probabilistic_transfer`. RepDistiller: pooled embedding, weight 30000."""

    def forward(self, outputs: Outputs) -> Tensor:
        return probabilistic_transfer(*self.features(outputs))


class RKD(_Relational):
    """Relational KD (distance and angle); see `relational_kd`. RepDistiller: pooled embedding, 25 and 50, weight 1."""

    def __init__(
        self, student_layer: str, teacher_layer: str, distance_weight: float = 25.0, angle_weight: float = 50.0
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.distance_weight = checks.number("distance_weight", distance_weight, at_least=0)
        self.angle_weight = checks.number("angle_weight", angle_weight, at_least=0)

    def forward(self, outputs: Outputs) -> Tensor:
        return relational_kd(*self.features(outputs), self.distance_weight, self.angle_weight)


@in_float32
def correlation_congruence(e_s: Tensor, e_t: Tensor) -> Tensor:
    """CC (Peng et al. 2019) as RepDistiller computes it: with `d = |e_s - e_t|` per sample, the mean over
    consecutive samples (i, i+1) of `sum_k d_ik * d_(i+1)k` (a first-order form of the correlation terms);
    0 for a batch of one sample."""
    delta = (e_s - e_t).abs()
    if len(delta) < 2:  # no consecutive pair (the reference would give NaN)
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(1).mean()


class CC(_Relational):
    """Correlation congruence on learned embeddings: each network's flattened feature goes through its own
    linear map to `embedding_dim` (both maps are trained, the teacher stays frozen); see
    `correlation_congruence`. RepDistiller, whose weight 0.02 and CIFAR-100 figures the recipe reproduces,
    trains CC on the plain linear embeddings (its `LinearEmbed`); `normalize: true` L2-normalises them first
    (CRD's `Embed` does), which makes the term 2-22x smaller and turns its gradient. RepDistiller: pooled
    embedding, 128 dimensions, weight 0.02."""

    def __init__(
        self, student_layer: str, teacher_layer: str, embedding_dim: int = 128, normalize: bool = False
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.embedding_dim = checks.integer("embedding_dim", embedding_dim, at_least=1)
        if not isinstance(normalize, bool):
            raise InvalidArgument("normalize", normalize, "true or false")
        self.normalize = normalize
        self.embed_student: nn.Module | None = None
        self.embed_teacher: nn.Module | None = None

    def setup(self, outputs: Outputs) -> None:
        f_s, f_t = self.features(outputs)
        self.embed_student = nn.Linear(f_s[0].numel(), self.embedding_dim).to(f_s.device)
        self.embed_teacher = nn.Linear(f_t[0].numel(), self.embedding_dim).to(f_t.device)

    def forward(self, outputs: Outputs) -> Tensor:
        f_s, f_t = self.features(outputs)
        assert self.embed_student is not None and self.embed_teacher is not None, "setup() builds the embeddings"
        e_s, e_t = self.embed_student(f_s.flatten(1)), self.embed_teacher(f_t.flatten(1))
        if self.normalize:
            e_s, e_t = F.normalize(e_s, dim=1), F.normalize(e_t, dim=1)
        return correlation_congruence(e_s, e_t)
