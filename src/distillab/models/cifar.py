"""CIFAR networks of the CRD benchmark (RepDistiller; also used by DKD and DIST): ResNets, WRNs, VGGs.

Layer names follow RepDistiller (`layer1..3`, `block1..3`, `block0..4`; `layer1..4` for the bottleneck
ResNet-50 of its `resnetv2.py`), so module paths for feature taps read the same as in the papers' code;
`avgpool` is the pooled embedding before the classifier (the input of RKD, PKT and CRD). Parameter counts
match the published ones (resnet8x4 1.23 M, resnet32x4 7.43 M, resnet50 23.71 M, wrn_40_2 2.26 M,
vgg13 9.46 M for 100 classes).

Residual blocks name the sum before their last ReLU `preact`, a tap alias (`tap_aliases`, read by
`distillab.taps`: the input of `relu_out`), not a module: tapping `layerK.<last block>.preact` gives the
pre-activation stage output that AB (activation boundaries) and RepDistiller's `preact=True` features read. That
last ReLU is not in-place, so the tapped tensor stays intact. The WRNs' `preact` and the VGG blocks' are aliases too.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut; post-activation.
    `preact` (a tap alias): the residual sum before the last ReLU."""

    tap_aliases: ClassVar[dict[str, str]] = {"preact": "relu_out:input"}

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu_out = nn.ReLU()  # not in-place: a tap of its input (`preact`) keeps that tensor

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: depth = 6n + 2 (n basic blocks per stage), stem width `widths[0]`,
    three stages of widths `widths[1:]` (the second and third halve the resolution)."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
            raise InvalidArgument("depth", depth, "6n + 2 for a CIFAR ResNet: 8, 14, 20, 32, 44, 56, 110, ...")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = [
                BasicBlock(in_planes if j == 0 else planes, planes, (1 if i == 0 else 2) if j == 0 else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet(depth: int, num_classes: int = 100, in_channels: int = 3, width_x4: bool = False) -> CifarResNet:
    """resnet8 ... resnet110 (widths 16, 16, 32, 64); `width_x4`: resnet8x4 / resnet32x4 (32, 64, 128, 256)."""
    widths = (32, 64, 128, 256) if width_x4 else (16, 16, 32, 64)
    return CifarResNet(depth, widths, num_classes, in_channels)


class Bottleneck(nn.Module):
    """1x1 reduction, 3x3 (strided), 1x1 expansion to `4 * planes`, each with BatchNorm; an identity (or
    1x1 projection) shortcut; post-activation, as RepDistiller's `resnetv2.Bottleneck`. `preact` (a tap alias):
    the residual sum before the last ReLU."""

    expansion = 4
    tap_aliases: ClassVar[dict[str, str]] = {"preact": "relu_out:input"}

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        self.relu_out = nn.ReLU()  # not in-place: a tap of its input (`preact`) keeps that tensor

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu_out(self.bn3(self.conv3(out)) + shortcut)


class CifarBottleneckResNet(nn.Module):
    """ResNet with bottleneck blocks for 32x32 inputs (RepDistiller's `resnetv2.ResNet`): a stride-1 3x3 stem
    of 64 channels and no max-pooling, four stages `layer1..4` of `num_blocks` bottlenecks (widths 64, 128,
    256, 512, times 4 at the output; the last three halve the resolution), pooling, a linear classifier."""

    def __init__(
        self, num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


def resnet50(num_classes: int = 100, in_channels: int = 3) -> CifarBottleneckResNet:
    """RepDistiller's CIFAR `ResNet50`: bottleneck stages of 3, 4, 6, 3 blocks (23.71 M parameters for 100 classes)."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes, in_channels)


class WideBlock(nn.Module):
    """Pre-activation block of Wide ResNets (BN-ReLU-conv twice), with a 1x1 shortcut when shapes change.
    `preact` (a tap alias) is the first BatchNorm's output before its ReLU (RepDistiller's WRN `preact=True`
    features are those of each stage's first block, `block2.0.preact`, `block3.0.preact`, and the net's `preact`)."""

    tap_aliases: ClassVar[dict[str, str]] = {"preact": "bn1"}

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), nn.ReLU()  # not in-place: a tap of bn1 keeps its tensor
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(planes), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(drop_rate)
        self.shortcut = (
            None if in_planes == planes and stride == 1 else nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis): depth = 6n + 4, stage widths 16k, 32k, 64k. `preact` (a tap alias):
    the last BatchNorm's output before its ReLU."""

    tap_aliases: ClassVar[dict[str, str]] = {"preact": "bn1"}

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
            raise InvalidArgument("depth", depth, "6n + 4 for a WideResNet: 16, 22, 28, 40, ...")
        checks.integer("widen_factor", widen_factor, at_least=1)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for i in range(3):
            stride = 1 if i == 0 else 2
            blocks.append(
                nn.Sequential(
                    *[
                        WideBlock(
                            widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1, drop_rate
                        )
                        for j in range(n)
                    ]
                )
            )
        self.block1, self.block2, self.block3 = blocks
        self.bn1, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU()  # not in-place: a tap of bn1 keeps its tensor
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


_VGG = {  # convolutions per block, as RepDistiller's cfg 'S' (vgg8) and 'B' (vgg13)
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGGBlock(nn.Sequential):
    """A VGG block: conv, BatchNorm, ReLU per convolution (`vgg_block`). Its `preact` (a tap alias) is the input of
    its last module, the last ReLU: the block's output before it, RepDistiller's preact features, which AB reads.
    That ReLU is not in place, so the tapped tensor stays intact."""

    @property
    def tap_aliases(self) -> dict[str, str]:
        return {"preact": f"{len(self) - 1}:input"}


def vgg_block(in_channels: int, widths: list[int]) -> VGGBlock:
    layers: list[nn.Module] = []
    for j, width in enumerate(widths):
        last = j == len(widths) - 1
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=not last)]
        in_channels = width
    return VGGBlock(*layers)


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: five conv blocks (`block0..4`, each with a `preact` tap before its
    last ReLU), max-pooling after the first three, global average pooling, one linear classifier."""

    def __init__(self, depth: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels)
        if depth not in _VGG:
            raise InvalidArgument("depth", depth, f"one of {', '.join(map(str, sorted(_VGG)))} for a CIFAR VGG")
        blocks, channels = [], in_channels
        for widths in _VGG[depth]:
            blocks.append(vgg_block(channels, widths))
            channels = widths[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for block in (self.block0, self.block1, self.block2):
            x = self.pool(block(x))
        x = self.block3(x)  # 4x4 for 32x32 inputs: RepDistiller pools here only for 64x64 ones
        return self.classifier(self.avgpool(self.block4(x)).flatten(1))
