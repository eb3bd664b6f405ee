"""Distillation from intermediate features, read through forward-hook taps by module path."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distillab.errors import ConfigError
from distillab.losses.base import LossTerm
from distillab.objective import Outputs

# A projector config instantiated with `_partial_: true`: called as factory(student_shape, teacher_shape).
ProjectorFactory = Callable[[Sequence[int], Sequence[int]], nn.Module]


def _as_list(layers: str | Sequence[str]) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


class FeatureMSE(LossTerm):
    """FitNets (Romero et al. 2015): MSE between projected student features and teacher features.

    One projector per (student layer, teacher layer) pair; the loss is the sum over pairs of the mean
    squared error over all elements. With one pair and `projector=conv3x3` this is the PyTorch KD
    tutorial's regressor.
    """

    needs_teacher = True

    def __init__(self, student_layers: str | Sequence[str], teacher_layers: str | Sequence[str], projector: ProjectorFactory) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = _as_list(student_layers), _as_list(teacher_layers)
        if len(self.student_taps) != len(self.teacher_taps):
            raise ConfigError(
                f"feature distillation pairs student layers {self.student_taps} with teacher layers {self.teacher_taps}: give as many of each."
            )
        self.make_projector = projector
        self.projectors = nn.ModuleList()

    def setup(self, outputs: Outputs) -> None:
        for s, t in zip(self.student_taps, self.teacher_taps):
            shapes = outputs.student.features[s].shape[1:], outputs.teacher.features[t].shape[1:]
            self.projectors.append(self.make_projector(*shapes))

    def forward(self, outputs: Outputs) -> Tensor:
        losses = [
            F.mse_loss(projector(outputs.student.features[s]), outputs.teacher.features[t])
            for projector, s, t in zip(self.projectors, self.student_taps, self.teacher_taps)
        ]
        return sum(losses[1:], losses[0])


class Cosine(LossTerm):
    """Cosine hidden-representation matching: `mean(1 - cos(student, teacher))` over the batch.

    This equals `nn.CosineEmbeddingLoss` with target 1 (the PyTorch tutorial's form). Both features
    are flattened; without a projector the wider one is average-pooled by the integer ratio of the
    two widths (the tutorial pools the teacher's 2048 values to 1024), with one the student's
    flattened feature is mapped to the teacher's width.
    """

    needs_teacher = True

    def __init__(self, student_layer: str, teacher_layer: str, projector: ProjectorFactory | None = None) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = [student_layer], [teacher_layer]
        self.make_projector = projector
        self.projector: nn.Module | None = None
        self.pool_student = self.pool_teacher = 1

    def setup(self, outputs: Outputs) -> None:
        ds = outputs.student.features[self.student_taps[0]][0].numel()
        dt = outputs.teacher.features[self.teacher_taps[0]][0].numel()
        if self.make_projector is not None:
            self.projector = self.make_projector((ds,), (dt,))
        elif dt % ds == 0:
            self.pool_teacher = dt // ds
        elif ds % dt == 0:
            self.pool_student = ds // dt
        else:
            raise ConfigError(
                f"cosine loss: student width {ds} and teacher width {dt} are not multiples of each other, "
                "so average pooling cannot match them: set loss.projector to a projector such as projector=linear."
            )

    @staticmethod
    def _flat(x: Tensor, pool: int) -> Tensor:
        x = x.flatten(1)
        return F.avg_pool1d(x.unsqueeze(1), pool).squeeze(1) if pool > 1 else x

    def forward(self, outputs: Outputs) -> Tensor:
        s = self._flat(outputs.student.features[self.student_taps[0]], self.pool_student)
        t = self._flat(outputs.teacher.features[self.teacher_taps[0]], self.pool_teacher)
        if self.projector is not None:
            s = self.projector(s)
        return (1 - F.cosine_similarity(s, t, dim=1)).mean()


def attention_map(feature: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Zagoruyko & Komodakis 2017: channel mean of squared activations, flattened, L2-normalised per sample."""
    a = feature.pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, tuple(size))
    return F.normalize(a.flatten(1), dim=1)


class AttentionTransfer(LossTerm):
    """Attention transfer: sum over layer pairs of the mean squared difference of attention maps
    (mean over batch and positions). Unequal spatial sizes are pooled to the smaller. No parameters.
    """

    needs_teacher = True

    def __init__(self, student_layers: str | Sequence[str], teacher_layers: str | Sequence[str]) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = _as_list(student_layers), _as_list(teacher_layers)
        if len(self.student_taps) != len(self.teacher_taps):
            raise ConfigError(
                f"attention transfer pairs student layers {self.student_taps} with teacher layers {self.teacher_taps}: give as many of each."
            )

    def forward(self, outputs: Outputs) -> Tensor:
        total = outputs.student.out.new_zeros(())
        for s, t in zip(self.student_taps, self.teacher_taps):
            fs, ft = outputs.student.features[s], outputs.teacher.features[t]
            size = min(fs.shape[2:], ft.shape[2:])
            total = total + (attention_map(fs, size) - attention_map(ft, size)).pow(2).mean()
        return total


class SelfDistillation(LossTerm):
    """No teacher: each shallow student feature, through its projector, learns the student's own deepest
    feature (detached, so the deep layer is not pulled towards the shallow ones). MSE summed over layers.
    """

    def __init__(self, shallow_layers: str | Sequence[str], deep_layer: str, projector: ProjectorFactory) -> None:
        super().__init__()
        self.shallow, self.deep = _as_list(shallow_layers), deep_layer
        self.student_taps = [*self.shallow, deep_layer]
        self.make_projector = projector
        self.projectors = nn.ModuleList()

    def setup(self, outputs: Outputs) -> None:
        target_shape = outputs.student.features[self.deep].shape[1:]
        for layer in self.shallow:
            self.projectors.append(self.make_projector(outputs.student.features[layer].shape[1:], target_shape))

    def forward(self, outputs: Outputs) -> Tensor:
        target = outputs.student.features[self.deep].detach()
        losses = [F.mse_loss(p(outputs.student.features[layer]), target) for p, layer in zip(self.projectors, self.shallow)]
        return sum(losses[1:], losses[0])
