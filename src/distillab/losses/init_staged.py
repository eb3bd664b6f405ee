"""Methods with an init stage (RepDistiller's `init()`, 30 epochs): part of the network is trained on the
method's own loss before the main training starts (`distillab.init_stage` runs it).

- FSP (Yim et al. 2017): the student's feature layers learn the teacher's "flow" (Gram matrices between
  consecutive layers); afterwards RepDistiller trains with CE alone (weight 0 here: the term is still logged).
- AB (Heo et al. 2019): the student's feature layers (through connectors) learn the teacher's activation
  boundaries, on pre-ReLU features; afterwards CE alone, as FSP.
- FT (Kim et al. 2018): a paraphraser (autoencoder of a teacher feature) is trained first; then the student,
  through a translator, matches the paraphraser's factors (weight 200 in RepDistiller).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.features import (
    ProjectorFactory,
    _LayerPairs,
    build_projector,
    pool_to_common,
    projector_arg,
    sum_of,
)
from distillab.objective import Outputs


def fsp_matrices(features: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices (B, C_{i+1}, C_i) between consecutive feature maps: `mean_hw(top_c * bottom_c')`, the
    larger map average-pooled to the smaller's size first."""
    matrices = []
    for bottom, top in zip(features[:-1], features[1:]):
        bottom, top = pool_to_common(bottom, top)
        matrices.append(torch.einsum("bthw,bchw->btc", top, bottom) / (top.shape[2] * top.shape[3]))
    return matrices


class FSP(_LayerPairs):
    """Flow of solution procedure: the sum over consecutive layer pairs of the mean squared difference of the
    student's and the teacher's FSP matrices (`fsp_matrices`). Layers are listed in order (RepDistiller: the
    stem output and every stage output) and each student layer needs its teacher layer's channel count.
    Init stage: the whole student (only its feature layers receive gradients) learns this loss."""

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str],
        init_epochs: int = 30,
        init_lr: float | None = None,
    ) -> None:
        super().__init__(student_layers, teacher_layers)
        if len(self.student_taps) < 2:
            raise InvalidArgument(
                "student_layers",
                self.student_taps,
                "at least two student layers, and as many teacher layers",
                why="FSP relates consecutive layers",
            )
        self.set_init_stage(init_epochs, init_lr)

    def setup(self, outputs: Outputs) -> None:
        for i, ((fs, ft), s, t) in enumerate(zip(self.pairs(outputs), self.student_taps, self.teacher_taps)):
            if fs.shape[1] != ft.shape[1]:
                raise InvalidArgument(
                    f"teacher_layers[{i}]",
                    t,
                    f"a teacher layer with student layer {s}'s {fs.shape[1]} channels (FSP does not apply to this "
                    "pair)",
                    why=f"FSP compares matrices of equal size, and it has {ft.shape[1]} channels",
                )

    def forward(self, outputs: Outputs) -> Tensor:
        pairs = self.pairs(outputs)
        student, teacher = fsp_matrices([fs for fs, _ in pairs]), fsp_matrices([ft for _, ft in pairs])
        return sum_of([(s - t).pow(2).mean() for s, t in zip(student, teacher)])

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student]

    def init_loss(self, outputs: Outputs) -> Tensor:
        return self(outputs)


def activation_boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """AB's alternative L2 (summed over elements): where the teacher's neuron is off (`target <= 0`), push the
    student's pre-activation below `-margin`; where it is on, above `margin`."""
    off = (source + margin).pow(2) * ((source > -margin) & (target <= 0))
    on = (source - margin).pow(2) * ((source <= margin) & (target > 0))
    return (off + on).sum()


class ActivationBoundaries(_LayerPairs):
    """Activation boundaries on pre-ReLU features (taps such as `layer1.0.preact`), as RepDistiller's ABLoss:
    pair i of n gets weight `2^(i - n + 1)` (the deepest 1), each pair's summed `activation_boundary_loss`
    is divided by the batch size and multiplied by 3/1000, and the pairs are summed. A student feature
    goes through a connector (`projector`, e.g. conv1x1 with BatchNorm) unless it already has the
    teacher's shape. Init stage: the student and the connectors learn this loss."""

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str],
        projector: ProjectorFactory,
        margin: float = 1.0,
        init_epochs: int = 30,
        init_lr: float | None = None,
    ) -> None:
        super().__init__(student_layers, teacher_layers)
        self.make_projector, self.margin = projector_arg(projector), checks.number("margin", margin, above=0)
        self.set_init_stage(init_epochs, init_lr)
        self.connectors = nn.ModuleList()

    def setup(self, outputs: Outputs) -> None:
        for fs, ft in self.pairs(outputs):
            same = fs.shape[1:] == ft.shape[1:]
            self.connectors.append(
                nn.Identity()
                if same
                else build_projector(self.make_projector, fs.shape[1:], ft.shape[1:]).to(fs.device)
            )

    def forward(self, outputs: Outputs) -> Tensor:
        pairs = self.pairs(outputs)
        n, batch = len(pairs), pairs[0][0].shape[0]
        losses = [
            2.0 ** (i - n + 1) * activation_boundary_loss(connector(fs), ft, self.margin) / batch * 3 / 1000
            for i, ((fs, ft), connector) in enumerate(zip(pairs, self.connectors))
        ]
        return sum_of(losses)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student, self.connectors]

    def init_loss(self, outputs: Outputs) -> Tensor:
        return self(outputs)


def _conv_stack(channels: Sequence[int], conv: type[nn.Module], batch_norm: bool) -> nn.Sequential:
    """3x3 convolutions (padding 1) between consecutive `channels`, each followed by (BatchNorm and) LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: Tensor) -> Tensor:
    """FT's factor of a feature map: channel mean of squares, flattened, L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


class FactorTransfer(_LayerPairs):
    """Factor transfer on one layer pair (RepDistiller: the last stage outputs). A paraphraser (encoder C -> C,
    C -> rC, rC -> rC and its mirror decoder, no BatchNorm) learns to reconstruct the teacher's feature in
    the init stage (MSE); afterwards it is frozen and its encoder gives the teacher's factor. A translator
    (the same encoder shape with BatchNorm, student C -> teacher rC) gives the student's. The loss is the
    mean absolute difference of their `factor`s (the larger map pooled to the smaller's size)."""

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        rate: float = 0.5,
        init_epochs: int = 30,
        init_lr: float | None = None,
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.rate = checks.number("rate", rate, above=0, at_most=4)
        self.set_init_stage(init_epochs, init_lr)
        self.encoder: nn.Module | None = None
        self.decoder: nn.Module | None = None
        self.translator: nn.Module | None = None

    def setup(self, outputs: Outputs) -> None:
        ((fs, ft),) = self.pairs(outputs)
        c_s, c_t = fs.shape[1], ft.shape[1]
        hidden = max(1, int(c_t * self.rate))
        self.encoder = _conv_stack([c_t, c_t, hidden, hidden], nn.Conv2d, batch_norm=False).to(ft.device)
        self.decoder = _conv_stack([hidden, hidden, c_t, c_t], nn.ConvTranspose2d, batch_norm=False).to(ft.device)
        self.translator = _conv_stack([c_s, c_s, hidden, hidden], nn.Conv2d, batch_norm=True).to(fs.device)

    def forward(self, outputs: Outputs) -> Tensor:
        assert self.encoder is not None and self.translator is not None, "setup() builds the paraphraser and translator"
        ((fs, ft),) = self.pairs(outputs)
        with torch.no_grad():  # the paraphraser is trained in the init stage only
            factor_t = self.encoder(ft)
        factor_s, factor_t = pool_to_common(self.translator(fs), factor_t)
        return (factor(factor_s) - factor(factor_t)).abs().mean()

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        assert self.encoder is not None and self.decoder is not None
        return [self.encoder, self.decoder]

    def init_loss(self, outputs: Outputs) -> Tensor:
        assert self.encoder is not None and self.decoder is not None
        ((_, ft),) = self.pairs(outputs)
        return F.mse_loss(self.decoder(self.encoder(ft)), ft)
