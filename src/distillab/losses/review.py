"""ReviewKD (Chen et al. 2021, "Distilling Knowledge via Knowledge Review"): attention-based fusion of the
student's features from deep to shallow, each fused level matched to a teacher feature by the hierarchical
context loss. As dvlab-research/ReviewKD (`CIFAR-100/model/reviewkd.py`) and mdistiller's `ReviewKD`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.losses.features import _LayerPairs
from distillab.objective import Outputs

Size = tuple[int, int]


def _as_map(feature: Tensor) -> Tensor:
    """(B, C) -> (B, C, 1, 1); (B, C, H, W) unchanged (`ReviewKD.setup` refuses other shapes)."""
    return feature[:, :, None, None] if feature.dim() == 2 else feature


def hcl_loss(fstudent: Sequence[Tensor], fteacher: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss, summed over the (student, teacher) pairs.

    Per pair: the MSE (mean over all elements) of the full maps, weight 1, plus the MSE of both maps
    average-pooled to 4x4, 2x2 and 1x1 with weights 1/2, 1/4, 1/8 (halving for each level that applies;
    a level applies only when it is smaller than the map), divided by the sum of the applied weights.
    The reference tests the level against the height only (its maps are square); here against the smaller
    side, which is the same on square maps.
    """
    loss_all: Tensor | float = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h, w = fs.shape[2:]
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= min(h, w):
                continue
            cnt /= 2.0
            loss = (
                loss
                + F.mse_loss(F.adaptive_avg_pool2d(fs, (level, level)), F.adaptive_avg_pool2d(ft, (level, level))) * cnt
            )
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all  # type: ignore[return-value]


class ABF(nn.Module):
    """Attention-based fusion: a 1x1 conv (+BN) of the student feature to `mid_channel`; with `fuse`, the
    deeper level's fused map (resized, nearest, to this level's size) is mixed in with two per-pixel
    sigmoid attention maps from a 1x1 conv of both; the result is resized to the teacher's size (`out_shape`)
    and a 3x3 conv (+BN) maps it to the teacher's channels. Returns (output, fused map for the next level)."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        first, second = (
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
        )
        nn.init.kaiming_uniform_(first.weight, a=1)
        nn.init.kaiming_uniform_(second.weight, a=1)
        self.conv1 = nn.Sequential(first, nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(second, nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None

    def forward(
        self, x: Tensor, y: Tensor | None = None, shape: Size | None = None, out_shape: Size | None = None
    ) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            assert y is not None and shape is not None, (
                "a fusing ABF needs the deeper level's map and this level's size"
            )
            y = F.interpolate(y, shape, mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if out_shape is not None and tuple(x.shape[2:]) != tuple(out_shape):
            x = F.interpolate(x, out_shape, mode="nearest")
        return self.conv2(x), x


class ReviewKD(_LayerPairs):
    """ReviewKD: `hcl_loss(ABF-fused student features, teacher features)`.

    `student_layers` / `teacher_layers`: module paths, shallow to deep, ending with the pooled embedding
    (on the CIFAR ResNets: `[layer1, layer2, layer3, avgpool]` for the student and the teacher's
    pre-activation stage outputs `[layer1.<last>.preact, ..., avgpool]`, as the reference). (B, C) features
    are read as (B, C, 1, 1). `setup` reads, per level, the student's channels (`in_channels`) and spatial
    size (`shapes`), the teacher's channels (`out_channels`) and spatial size (`out_shapes`); all ABFs
    work at `min(max_mid_channel, channels of the deepest student feature)` channels.

    The student features are taken deep to shallow: the deepest goes through its ABF alone, each shallower
    one is fused with the fused map of the level below it. Each level's output has the teacher feature's
    shape. Normalisation (see `hcl_loss`): per level, MSE as a mean over elements, averaged over the pyramid
    of pooled sizes with weights 1, 1/2, 1/4, 1/8; summed over the levels. The reference's warm-up
    (weight x min(epoch / 20, 1)) is not applied here: use `weighting=schedule`.
    """

    def __init__(
        self, student_layers: str | Sequence[str], teacher_layers: str | Sequence[str], max_mid_channel: int = 512
    ) -> None:
        super().__init__(student_layers, teacher_layers)
        self.max_mid_channel = checks.integer("max_mid_channel", max_mid_channel, at_least=1)
        self.abfs = nn.ModuleList()  # deep to shallow, as the reference after its `[::-1]`
        self.shapes: list[Size] = []  # student spatial sizes, deep to shallow
        self.out_shapes: list[Size] = []  # teacher spatial sizes, deep to shallow

    def _features(self, outputs: Outputs) -> tuple[list[Tensor], list[Tensor]]:
        """Student and teacher features, shallow to deep, as (B, C, H, W)."""
        pairs = self.pairs(outputs)
        return [_as_map(fs) for fs, _ in pairs], [_as_map(ft).detach() for _, ft in pairs]

    def setup(self, outputs: Outputs) -> None:
        for role, taps, features in (
            ("student", self.student_taps, outputs.student.features),
            ("teacher", self.teacher_taps, outputs.teacher.features),
        ):
            for i, path in enumerate(taps):
                if features[path].dim() not in (2, 4):
                    raise InvalidArgument(
                        f"{role}_layers[{i}]",
                        path,
                        "a layer whose output is (B, C, H, W) or (B, C), e.g. a stage's output or the pooled embedding",
                        why=f"it gives a feature of shape {tuple(features[path].shape)}",
                    )
        student, teacher = self._features(outputs)
        in_channels, out_channels = [f.shape[1] for f in student], [f.shape[1] for f in teacher]
        mid_channel = min(self.max_mid_channel, in_channels[-1])
        last = len(in_channels) - 1
        abfs = [
            ABF(c, mid_channel, out_channels[i], fuse=i < last).to(student[i].device) for i, c in enumerate(in_channels)
        ]
        self.abfs.extend(abfs[::-1])
        self.shapes = [tuple(f.shape[2:]) for f in student[::-1]]  # type: ignore[misc]
        self.out_shapes = [tuple(f.shape[2:]) for f in teacher[::-1]]  # type: ignore[misc]

    def fuse(self, student: Sequence[Tensor]) -> list[Tensor]:
        """The ABF outputs, shallow to deep, from the student features (shallow to deep)."""
        x = list(student)[::-1]
        out, residual = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for features, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, residual = abf(features, residual, shape, out_shape)
            results.insert(0, out)
        return results

    def forward(self, outputs: Outputs) -> Tensor:
        student, teacher = self._features(outputs)
        return hcl_loss(self.fuse(student), teacher)
