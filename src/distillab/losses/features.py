"""Distillation from intermediate features, read through forward-hook taps by module path."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.base import LossTerm, in_float32, linear_classifier
from distillab.objective import Outputs
from distillab.projectors import SHAPE_ARGUMENTS

# A projector config instantiated with `_partial_: true`: called as factory(student_shape, teacher_shape).
ProjectorFactory = Callable[[Sequence[int], Sequence[int]], nn.Module]


def projector_arg(projector: Any) -> ProjectorFactory:
    """A term's `projector` argument: a `_partial_: true` projector config (its keys are checked now)."""
    return checks.factory("projector", projector, "a projector config: projector=conv1x1, conv3x3, ...")


def build_projector(factory: ProjectorFactory, in_shape: Sequence[int], out_shape: Sequence[int]) -> nn.Module:
    """The projector between two feature shapes; an argument it refuses is named as the term's `projector.<key>`,
    and the shapes it refuses (which the term gives it, from the layers it taps) as the term's `projector`."""
    try:
        return factory(in_shape, out_shape)
    except InvalidArgument as error:
        if error.argument in SHAPE_ARGUMENTS:
            built = getattr(factory, "func", factory)
            refused = InvalidArgument("projector", getattr(built, "__name__", str(built)), error.valid, error.why)
            raise refused from error
        raise error.named("projector") from error


def one_path(layer: str, name: str) -> str:
    """One module path (a non-empty string; not a list)."""
    if not isinstance(layer, str) or not layer:
        raise InvalidArgument(name, layer, "one module path such as features.3")
    return layer


def _as_list(layers: str | Sequence[str], name: str = "layers") -> list[str]:
    """One module path or a list of them (non-empty strings)."""
    paths = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise InvalidArgument(name, layers, "a module path such as features.3, or a list of them")
    return paths


def sum_of(losses: Sequence[Tensor]) -> Tensor:
    """The sum of per-pair losses (a tensor even for one pair)."""
    return sum(losses[1:], losses[0])


def common_size(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The smaller size in each dimension: (8, 2) and (4, 4) -> (4, 2)."""
    return tuple(min(x, y) for x, y in zip(a, b))


def pool_to_common(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool two feature maps (B, C, H, W) to their common size, the smaller per dimension, as
    RepDistiller and mdistiller pool the larger map (theirs assume square maps; on square maps this is
    the same). A map already of that size is left as it is."""
    size = common_size(fs.shape[2:], ft.shape[2:])

    def pooled(f: Tensor) -> Tensor:
        return f if tuple(f.shape[2:]) == size else F.adaptive_avg_pool2d(f, (size[0], size[1]))

    return pooled(fs), pooled(ft)


class _LayerPairs(LossTerm):
    """A term over pairs of (student layer, teacher layer), summed over the pairs."""

    needs_teacher = True

    def __init__(self, student_layers: str | Sequence[str], teacher_layers: str | Sequence[str]) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = (
            _as_list(student_layers, "student_layers"),
            _as_list(teacher_layers, "teacher_layers"),
        )
        if len(self.student_taps) != len(self.teacher_taps):
            raise InvalidArgument(
                "teacher_layers",
                self.teacher_taps,
                f"one teacher layer for each student layer ({len(self.student_taps)})",
                why=f"it pairs {len(self.student_taps)} student layers with {len(self.teacher_taps)} teacher layers",
            )

    def pairs(self, outputs: Outputs) -> list[tuple[Tensor, Tensor]]:
        return [
            (outputs.student.features[s], outputs.teacher.features[t])
            for s, t in zip(self.student_taps, self.teacher_taps)
        ]


class FeatureMSE(_LayerPairs):
    """FitNets (Romero et al. 2015): MSE between projected student features and teacher features.

    One projector per (student layer, teacher layer) pair; the loss is the sum over pairs of the mean
    squared error over all elements. With one pair and `projector=conv3x3` this is the PyTorch KD
    tutorial's regressor.
    """

    def __init__(
        self, student_layers: str | Sequence[str], teacher_layers: str | Sequence[str], projector: ProjectorFactory
    ) -> None:
        super().__init__(student_layers, teacher_layers)
        self.make_projector = projector_arg(projector)
        self.projectors = nn.ModuleList()

    def setup(self, outputs: Outputs) -> None:
        for s, t in zip(self.student_taps, self.teacher_taps):
            shapes = outputs.student.features[s].shape[1:], outputs.teacher.features[t].shape[1:]
            self.projectors.append(build_projector(self.make_projector, *shapes))

    def forward(self, outputs: Outputs) -> Tensor:
        losses = [
            F.mse_loss(projector(outputs.student.features[s]), outputs.teacher.features[t])
            for projector, s, t in zip(self.projectors, self.student_taps, self.teacher_taps)
        ]
        return sum_of(losses)


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
        self.student_taps, self.teacher_taps = (
            _as_list(student_layer, "student_layer"),
            _as_list(teacher_layer, "teacher_layer"),
        )
        self.make_projector = None if projector is None else projector_arg(projector)
        self.projector: nn.Module | None = None
        self.pool_student = self.pool_teacher = 1

    def setup(self, outputs: Outputs) -> None:
        ds = outputs.student.features[self.student_taps[0]][0].numel()
        dt = outputs.teacher.features[self.teacher_taps[0]][0].numel()
        if self.make_projector is not None:
            self.projector = build_projector(self.make_projector, (ds,), (dt,))
        elif dt % ds == 0:
            self.pool_teacher = dt // ds
        elif ds % dt == 0:
            self.pool_student = ds // dt
        else:
            raise InvalidArgument(
                "projector",
                None,
                "a projector config such as ${projector} (with projector=linear) that maps one width to the other",
                why=f"the student's width {ds} and the teacher's {dt} are not multiples of each other, so average "
                "pooling cannot match them",
            )

    @staticmethod
    def _flat(x: Tensor, pool: int) -> Tensor:
        x = x.flatten(1).to(torch.promote_types(x.dtype, torch.float32))  # pooled in float32 under bf16 autocast
        return F.avg_pool1d(x.unsqueeze(1), pool).squeeze(1) if pool > 1 else x

    def forward(self, outputs: Outputs) -> Tensor:
        s = self._flat(outputs.student.features[self.student_taps[0]], self.pool_student)
        t = self._flat(outputs.teacher.features[self.teacher_taps[0]], self.pool_teacher)
        if self.projector is not None:
            s = self.projector(s)
        return cosine_distance(s, t)


@in_float32
def cosine_distance(s: Tensor, t: Tensor) -> Tensor:
    """1 - cosine similarity per sample, mean over the batch."""
    return (1 - F.cosine_similarity(s, t, dim=1)).mean()


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko & Komodakis 2017: channel mean of squared activations, flattened, L2-normalised per sample."""
    return F.normalize(feature.pow(2).mean(1).flatten(1), dim=1)


class AttentionTransfer(_LayerPairs):
    """Attention transfer: sum over layer pairs of the mean squared difference of attention maps
    (mean over batch and positions). Maps of unequal spatial size: the *features* are pooled to their
    common size first (`pool_to_common`), then the attention maps are formed, as RepDistiller's and
    mdistiller's `at`. No parameters.
    """

    def forward(self, outputs: Outputs) -> Tensor:
        return sum_of([attention_transfer(fs, ft) for fs, ft in self.pairs(outputs)])


@in_float32
def attention_transfer(fs: Tensor, ft: Tensor) -> Tensor:
    """One layer pair: features pooled to their common size, then the mean squared difference of the maps."""
    fs, ft = pool_to_common(fs, ft)
    return (attention_map(fs) - attention_map(ft)).pow(2).mean()


class SelfDistillation(LossTerm):
    """No teacher: each shallow student feature, through its projector, learns the student's own deepest
    feature (detached, so the deep layer is not pulled towards the shallow ones). MSE summed over layers.
    """

    def __init__(self, shallow_layers: str | Sequence[str], deep_layer: str, projector: ProjectorFactory) -> None:
        super().__init__()
        self.shallow, self.deep = _as_list(shallow_layers, "shallow_layers"), one_path(deep_layer, "deep_layer")
        self.student_taps = [*self.shallow, deep_layer]
        self.make_projector = projector_arg(projector)
        self.projectors = nn.ModuleList()

    def setup(self, outputs: Outputs) -> None:
        target_shape = outputs.student.features[self.deep].shape[1:]
        for layer in self.shallow:
            self.projectors.append(
                build_projector(self.make_projector, outputs.student.features[layer].shape[1:], target_shape)
            )

    def forward(self, outputs: Outputs) -> Tensor:
        target = outputs.student.features[self.deep].detach()
        losses = [
            F.mse_loss(p(outputs.student.features[layer]), target) for p, layer in zip(self.projectors, self.shallow)
        ]
        return sum_of(losses)


@in_float32
def neuron_selectivity_transfer(fs: Tensor, ft: Tensor) -> Tensor:
    """NST (Huang & Wang 2017): squared MMD with the polynomial kernel k(x, y) = (x . y)^2 between the
    student's and the teacher's channels, each channel's spatial map L2-normalised; kernel values are
    averaged over the batch and all channel pairs (the teacher-teacher part is a constant)."""
    fs, ft = pool_to_common(fs, ft)
    fs, ft = F.normalize(fs.flatten(2), dim=2), F.normalize(ft.flatten(2), dim=2)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.transpose(1, 2)).pow(2).mean()

    return kernel(ft, ft).detach() + kernel(fs, fs) - 2 * kernel(fs, ft)


class NST(_LayerPairs):
    """Neuron selectivity transfer; see `neuron_selectivity_transfer`. RepDistiller: the three stage outputs,
    weight 50."""

    def forward(self, outputs: Outputs) -> Tensor:
        losses = [neuron_selectivity_transfer(fs, ft) for fs, ft in self.pairs(outputs)]
        return sum_of(losses)


class VID(_LayerPairs):
    """Variational information distillation (Ahn et al. 2019): per layer pair, a 1x1-conv regressor predicts
    the teacher's features as the mean of a Gaussian whose per-channel variance is learned
    (softplus(log_scale) + eps, starting at `init_variance`); the loss is its negative log-likelihood up to
    a constant, `0.5 * ((mean - t)^2 / var + log var)`, averaged over all elements, summed over pairs.
    RepDistiller: the three stage outputs, hidden width = the teacher's, weight 1."""

    def __init__(
        self,
        student_layers: str | Sequence[str],
        teacher_layers: str | Sequence[str],
        init_variance: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(student_layers, teacher_layers)
        self.init_variance = checks.number("init_variance", init_variance, above=0)
        self.eps = checks.number("eps", eps, above=0, below=self.init_variance)
        self.regressors, self.log_scales = nn.ModuleList(), nn.ParameterList()

    def setup(self, outputs: Outputs) -> None:
        for fs, ft in self.pairs(outputs):
            cs, ct = fs.shape[1], ft.shape[1]
            self.regressors.append(
                nn.Sequential(
                    nn.Conv2d(cs, ct, 1, bias=False),
                    nn.ReLU(),
                    nn.Conv2d(ct, ct, 1, bias=False),
                    nn.ReLU(),
                    nn.Conv2d(ct, ct, 1, bias=False),
                ).to(fs.device)
            )
            inverse_softplus = math.log(math.expm1(self.init_variance - self.eps))
            self.log_scales.append(nn.Parameter(torch.full((ct,), inverse_softplus, device=fs.device)))

    def forward(self, outputs: Outputs) -> Tensor:
        losses = []
        for (fs, ft), regressor, log_scale in zip(self.pairs(outputs), self.regressors, self.log_scales):
            fs, ft = pool_to_common(fs, ft)
            variance = (F.softplus(log_scale) + self.eps).view(1, -1, 1, 1)
            losses.append((0.5 * ((regressor(fs) - ft).pow(2) / variance + variance.log())).mean())
        return sum_of(losses)


class ClassAttentionTransfer(LossTerm):
    """CAT-KD (Guo et al., CVPR 2023): the student's class activation maps learn the teacher's. A network's CAMs
    are its last feature map through its linear classifier, position by position (`W f[:, :, h, w]`, no bias: the
    authors' networks swap pooling-then-`fc` for a bias-free 1x1 conv then pooling, with the teacher's `fc.weight`
    as that conv); both are average-pooled to `resolution` x `resolution`, optionally L2-normalised per map
    (`normalize`, off in CAT-KD), and compared by the mean squared error, as the authors' `CAT_loss`. Here the
    student keeps its classifier's bias in its logits; the CAMs are the same.

    `student_layer`/`teacher_layer` tap the last feature maps, `student_classifier`/`teacher_classifier` name the
    `nn.Linear` classifiers (module paths) whose weights make the maps; the student's classifier learns through
    this term too. No parameters of its own."""

    needs_teacher = True
    fuses = False  # it reads the networks' classifiers

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        student_classifier: str = "fc",
        teacher_classifier: str = "fc",
        resolution: int = 2,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.student_layer = one_path(student_layer, "student_layer")
        self.teacher_layer = one_path(teacher_layer, "teacher_layer")
        self.student_taps, self.teacher_taps = [self.student_layer], [self.teacher_layer]
        self.student_classifier = one_path(student_classifier, "student_classifier")
        self.teacher_classifier = one_path(teacher_classifier, "teacher_classifier")
        self.resolution = checks.integer("resolution", resolution, at_least=1)
        self.normalize = checks.flag("normalize", normalize)
        self.classifiers: tuple[nn.Linear, nn.Linear] | None = None  # a tuple: not registered as this term's modules

    def bind_models(self, student: nn.Module, teachers: Sequence[nn.Module]) -> None:
        self.classifiers = (
            linear_classifier(student, self.student_classifier, "student_classifier", "student"),
            linear_classifier(teachers[0], self.teacher_classifier, "teacher_classifier", "teacher"),
        )

    def setup(self, outputs: Outputs) -> None:
        assert self.classifiers is not None, "bind_models first"
        for role, feature, classifier in (
            ("student", outputs.student.features[self.student_layer], self.classifiers[0]),
            ("teacher", outputs.teacher.features[self.teacher_layer], self.classifiers[1]),
        ):
            if feature.dim() != 4 or feature.shape[1] != classifier.in_features:
                raise InvalidArgument(
                    f"{role}_layer",
                    self.student_layer if role == "student" else self.teacher_layer,
                    f"the (C, H, W) map that the {role}'s global pooling feeds to its classifier (C = "
                    f"{classifier.in_features}; this one gives {tuple(feature.shape[1:])})",
                )
        if self.classifiers[0].out_features != self.classifiers[1].out_features:
            raise InvalidArgument(
                "teacher_classifier",
                self.teacher_classifier,
                "a classifier over the student's classes (give both networks the data's classes)",
                why=f"CAT-KD compares one class activation map per class, and the student's classifier has "
                f"{self.classifiers[0].out_features} classes, the teacher's {self.classifiers[1].out_features}",
            )

    def forward(self, outputs: Outputs) -> Tensor:
        assert self.classifiers is not None, "bind_models first"
        student_fc, teacher_fc = self.classifiers
        return class_attention_transfer(
            outputs.student.features[self.student_layer],
            student_fc.weight,
            outputs.teacher.features[self.teacher_layer],
            teacher_fc.weight.detach(),
            self.resolution,
            self.normalize,
        )


def class_activation_maps(feature: Tensor, weight: Tensor, resolution: int) -> Tensor:
    """(B, K, r, r): the classifier's weight (K, C) applied at every position of the (B, C, H, W) map, pooled to
    r x r (pooling first is the same map: both are linear; it is cheaper with K > C)."""
    pooled = F.adaptive_avg_pool2d(feature, resolution)
    return torch.einsum("kc,bchw->bkhw", weight, pooled)


@in_float32
def class_attention_transfer(
    f_s: Tensor, w_s: Tensor, f_t: Tensor, w_t: Tensor, resolution: int, normalize: bool
) -> Tensor:
    cam_s, cam_t = class_activation_maps(f_s, w_s, resolution), class_activation_maps(f_t, w_t, resolution)
    if normalize:
        cam_s, cam_t = F.normalize(cam_s.flatten(2), dim=2), F.normalize(cam_t.flatten(2), dim=2)
    return F.mse_loss(cam_s, cam_t)
