"""Contrastive representation distillation (Tian, Krishnan & Isola 2020), as in the CRD code (RepDistiller).

Each network's embedding (a tapped layer, flattened) goes through its own linear map to `feat_dim` and an L2
normalisation. A memory bank keeps, per training sample, a running average of each network's normalised
embedding. For every sample of a batch the positive is the other network's memory row of the same sample
and the `negatives` are memory rows of samples from other classes (drawn without replacement where there
are enough of them); scores are `exp(e . m / temperature) / Z`, with the constant `Z` fixed on the first
batch as `N x` the mean score (the paper's approximation). The loss is the NCE objective with a uniform
noise distribution `1/N`, in both directions (student anchor against the teacher's memory and the reverse):

    L = -(1/B) sum_i [ log(p_i0 / (p_i0 + K/N)) + sum_k log((K/N) / (p_ik + K/N)) ]   for each direction.

Batches must carry their sample indices (`outputs.index`): every data config here yields them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.data import DataModule
from distillab.errors import ConfigError
from distillab.losses.relational import _Relational
from distillab.objective import Outputs

EPS = 1e-7  # as RepDistiller's ContrastLoss
NO_INDEX = (
    "CRD needs each batch's sample indices, and this data's train loader does not yield them: use a data config whose "
    "train loader yields (inputs, targets, index), as every distillab data config does."
)


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """NCE loss of `scores` (B, 1 + K): column 0 the positive, the rest the negatives, noise 1/n_data each."""
    k = scores.shape[1] - 1
    noise = k / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


class CRD(_Relational):
    """CRD; see the module docstring. RepDistiller: pooled embeddings, `feat_dim` 128, 16384 negatives,
    temperature 0.07, memory momentum 0.5, weight 0.8 (with CE 1). The embeddings' linear maps are trained;
    the memory bank and `Z` are buffers, saved in checkpoints. Not under DDP: the bank is one process's."""

    supports_ddp = False
    targets: Tensor  # buffers, sized by `bind_data`
    memory_student: Tensor
    memory_teacher: Tensor
    z: Tensor

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        feat_dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.feat_dim = checks.integer("feat_dim", feat_dim, at_least=1)
        self.negatives = checks.integer("negatives", negatives, at_least=1)
        self.temperature = checks.number(
            "temperature", temperature, above=0, at_most=100
        )  # exp(score / T) overflows below ~0.012
        self.momentum = checks.number("momentum", momentum, at_least=0, below=1)
        self.embed_student: nn.Module | None = None
        self.embed_teacher: nn.Module | None = None

    def bind_data(self, data: DataModule) -> None:
        targets = data.train_targets
        if targets.dim() != 1 or targets.is_floating_point():
            raise ConfigError(
                "CRD draws its negatives from other classes, so it needs class labels as targets: use a "
                "classification data config."
            )
        targets = targets.long()
        fewest_negatives = len(targets) - int(torch.bincount(targets).max())
        if fewest_negatives < 1:
            raise ConfigError(
                "CRD draws its negatives from other classes, but the training set has only one class: use data with "
                "at least two classes."
            )
        self.without_replacement = self.negatives <= fewest_negatives  # decided once: no host sync per step
        self.register_buffer("targets", targets)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(len(targets), self.feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: not set yet

    def setup(self, outputs: Outputs) -> None:
        f_s, f_t = self.features(outputs)
        if outputs.index is None:
            raise ConfigError(NO_INDEX)
        self.embed_student = nn.Linear(f_s[0].numel(), self.feat_dim).to(f_s.device)
        self.embed_teacher = nn.Linear(f_t[0].numel(), self.feat_dim).to(f_t.device)
        self.to(f_s.device)

    def draw_negatives(self, labels: Tensor) -> Tensor:
        """(B, K) indices of training samples from classes other than each row's label: without replacement
        when every class has K such samples (RepDistiller's `np.random.choice(..., replace=False)`; it decides
        per class, which differs only on data where some classes have fewer than K others)."""
        other_class = self.targets[None, :] != labels[:, None]
        keys = torch.rand(other_class.shape, device=labels.device).masked_fill_(~other_class, 2.0)
        if self.without_replacement:
            return keys.topk(self.negatives, dim=1, largest=False).indices
        return torch.multinomial(other_class.float(), self.negatives, replacement=True)

    def _scores(self, anchor: Tensor, memory: Tensor, rows: Tensor, which: int) -> Tensor:
        scores = torch.exp(torch.bmm(memory[rows], anchor.unsqueeze(2)).squeeze(2) / self.temperature)
        with torch.no_grad():  # set on the first batch, then constant (no host sync to find out which)
            self.z[which] = torch.where(self.z[which] < 0, scores.mean() * len(self.targets), self.z[which])
        return scores / self.z[which].clone()  # a copy: the next direction's update writes into `z`

    def _update(self, memory: Tensor, index: Tensor, embedding: Tensor) -> None:
        mixed = memory[index] * self.momentum + embedding * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(mixed, dim=1))

    def forward(self, outputs: Outputs) -> Tensor:
        assert self.embed_student is not None and self.embed_teacher is not None, "setup() builds the embeddings"
        index = outputs.index
        if index is None:
            raise ConfigError(NO_INDEX)
        f_s, f_t = self.features(outputs)
        with torch.autocast(f_s.device.type, enabled=False):  # exp(score / 0.07) overflows float16
            dtype = self.memory_student.dtype  # float32 unless the whole term was cast
            e_s = F.normalize(self.embed_student(f_s.to(dtype).flatten(1)), dim=1)
            e_t = F.normalize(self.embed_teacher(f_t.to(dtype).flatten(1)), dim=1)
            index = index.to(e_s.device)
            rows = torch.cat([index[:, None], self.draw_negatives(self.targets[index])], dim=1)
            loss = nce_loss(self._scores(e_s, self.memory_teacher, rows, 0), len(self.targets))
            loss = loss + nce_loss(self._scores(e_t, self.memory_student, rows, 1), len(self.targets))
            with torch.no_grad():
                self._update(self.memory_student, index, e_s)
                self._update(self.memory_teacher, index, e_t)
        return loss
