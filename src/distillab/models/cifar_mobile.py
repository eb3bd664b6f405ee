"""The CRD benchmark's light CIFAR students: MobileNetV2 at half width, ShuffleNetV1 and ShuffleNetV2, as in
RepDistiller.

Module names follow RepDistiller (`blocks.0..6` for MobileNetV2, `layer1..3` for the ShuffleNets), and so do
the CIFAR-specific choices (MobileNetV2 keeps the 1x1 expansion conv even at expansion 1; the ShuffleNets'
stems have stride 1, ShuffleNetV1's is a 1x1 conv). `avgpool` is the pooled embedding before the classifier.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from distillab import checks


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *_conv_bn(in_channels, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, out_channels, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs (RepDistiller's `mobile_half`: expansion 6, width 0.5, 0.81 M parameters
    for 100 classes). Stages `blocks.0..6`; the stem halves the resolution, so does each stage of stride 2."""

    SETTING: tuple[tuple[int | None, int, int, int], ...] = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(
        self, num_classes: int = 100, in_channels: int = 3, expansion: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        channels = int(32 * width_mult)
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, channels, 3, stride=2))
        blocks = []
        for t, c, n, s in self.SETTING:
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn(channels, last, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.avgpool(self.conv2(x)).flatten(1))


def _shuffle(x: Tensor, groups: int = 2) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 basic unit: half the channels pass through, the other half go 1x1, 3x3 depthwise, 1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_conv_bn(half, half, 1), *_conv_bn(half, half, 3, groups=half, relu=False), *_conv_bn(half, half, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, changed = x.chunk(2, dim=1)
        return _shuffle(torch.cat([kept, self.branch(changed)], 1))


class ShuffleDownUnit(nn.Module):
    """ShuffleNetV2 down-sampling unit: two stride-2 branches, concatenated to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, 2, groups=in_channels, relu=False), *_conv_bn(in_channels, mid, 1)
        )
        self.right = nn.Sequential(
            *_conv_bn(in_channels, mid, 1), *_conv_bn(mid, mid, 3, 2, groups=mid, relu=False), *_conv_bn(mid, mid, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return _shuffle(torch.cat([self.left(x), self.right(x)], 1))


class CifarShuffleNetV2(nn.Module):
    """ShuffleNetV2 1.0x for 32x32 inputs (stride-1 stem): stages `layer1..3` of (116, 232, 464) channels
    with 3, 7, 3 units after each down-sampling unit, a 1x1 conv to 1024, pooling, a linear classifier."""

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        units: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, 24, 3))
        stages, channels = [], 24
        for width, n in zip(widths[:3], units):
            stages.append(nn.Sequential(ShuffleDownUnit(channels, width), *[ShuffleUnit(width) for _ in range(n)]))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Sequential(*_conv_bn(channels, widths[3], 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.avgpool(self.conv2(x)).flatten(1))


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 bottleneck as in RepDistiller: grouped 1x1 reduction to a quarter of the width, channel
    shuffle, 3x3 depthwise (strided), grouped 1x1 expansion; added to the input, or at stride 2 concatenated
    with the input's 3x3 average pooling (so `out_channels` counts the branch only). `preact` (a tap alias, the
    input of `relu`) is the sum (or concatenation) before the last ReLU, which is not in-place so that the tapped
    tensor stays intact."""

    tap_aliases: ClassVar[dict[str, str]] = {"preact": "relu:input"}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int | None = None
    ) -> None:
        super().__init__()
        mid = out_channels // 4
        self.first_groups = groups if first_groups is None else first_groups
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, mid, 1, groups=self.first_groups))
        self.conv2 = nn.Sequential(*_conv_bn(mid, mid, 3, stride, groups=mid))
        self.conv3 = nn.Sequential(*_conv_bn(mid, out_channels, 1, groups=groups, relu=False))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(_shuffle(self.conv1(x), self.first_groups)))
        out = out + x if self.shortcut is None else torch.cat([out, self.shortcut(x)], 1)
        return self.relu(out)


class CifarShuffleNetV1(nn.Module):
    """ShuffleNetV1 (3 groups) for 32x32 inputs, RepDistiller's `ShuffleV1`: a stride-1 1x1 stem of 24
    channels, stages `layer1..3` of (240, 480, 960) channels with (4, 8, 4) units each, the first of stride 2
    (its first 1x1 conv ungrouped in `layer1`, as the stem is narrow), pooling, a linear classifier."""

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, 24, 1))
        stages, channels = [], 24
        for i, (width, n) in enumerate(zip(widths, units)):
            blocks = [ShuffleV1Unit(channels, width - channels, 2, groups, first_groups=1 if i == 0 else groups)]
            blocks += [ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.avgpool(x).flatten(1))
