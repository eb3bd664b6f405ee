"""Learnable maps from a student feature into the teacher's feature space.

A projector config is a `_partial_` constructor: the loss term that owns it calls it with the two
feature shapes (without the batch dimension) found by a dry run on one batch, so no width or size is
ever typed by hand. Conv projectors pool to the target's spatial size when the student's is larger.

A projector that cannot map these shapes refuses its `in_shape` (`InvalidArgument`); the term that calls it
(`distillab.losses.features.build_projector`) turns that into a refusal of its own `projector` argument, since
the shapes come from the layers it taps, not from a key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument

Shape = Sequence[int]
SHAPE_ARGUMENTS = ("in_shape", "out_shape")  # given by the term from the dry run, not by a config key


def refuse_shapes(in_shape: Shape, why: str, valid: str) -> InvalidArgument:
    """A projector's refusal of the feature shapes it was given (see the module's docstring)."""
    return InvalidArgument("in_shape", tuple(in_shape), valid, why=why)


def _spatial_match(x: Tensor, size: Shape) -> Tensor:
    return x if tuple(x.shape[2:]) == tuple(size) else F.adaptive_avg_pool2d(x, (size[0], size[1]))


class Identity(nn.Module):
    """No parameters: the student feature must already have the teacher's shape."""

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        super().__init__()
        if tuple(in_shape) != tuple(out_shape):
            raise refuse_shapes(
                in_shape,
                f"Identity cannot map a student feature of shape {tuple(in_shape)} to the teacher's {tuple(out_shape)}",
                "a learnable projector such as projector=conv1x1, conv3x3, linear or mlp",
            )

    def forward(self, x: Tensor) -> Tensor:
        return x


class _Conv(nn.Module):
    kernel_size = 1

    def __init__(self, in_shape: Shape, out_shape: Shape, batch_norm: bool = False) -> None:
        checks.flag("batch_norm", batch_norm)
        super().__init__()
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise refuse_shapes(
                in_shape,
                f"{type(self).__name__} needs feature maps (C, H, W), and the student's feature has shape "
                f"{tuple(in_shape)}, the teacher's {tuple(out_shape)}",
                "projector=linear or mlp for flat features, or tap token features as maps (e.g. blocks.3:map)",
            )
        if in_shape[1] < out_shape[1] or in_shape[2] < out_shape[2]:
            raise refuse_shapes(
                in_shape,
                f"a conv projector cannot enlarge the student's {tuple(in_shape[1:])} map to the teacher's "
                f"{tuple(out_shape[1:])}",
                "an earlier student layer or a later teacher layer, or projector=linear",
            )
        self.out_size = tuple(out_shape[1:])
        conv = nn.Conv2d(
            in_shape[0], out_shape[0], self.kernel_size, padding=self.kernel_size // 2, bias=not batch_norm
        )
        self.body = nn.Sequential(conv, nn.BatchNorm2d(out_shape[0])) if batch_norm else conv

    def forward(self, x: Tensor) -> Tensor:
        return self.body(_spatial_match(x, self.out_size))


class Conv1x1(_Conv):
    """1x1 convolution (FitNets-style channel map), optional BatchNorm."""

    kernel_size = 1


class Conv3x3(_Conv):
    """3x3 convolution with padding 1: the PyTorch KD tutorial's regressor."""

    kernel_size = 3


class ConvReg(nn.Module):
    """RepDistiller's regressor between feature maps (FitNets' hint regressor, AB's connector): a 3x3 stride-2
    convolution when the student's map is twice the teacher's size, a 4x4 stride-2 transposed convolution
    when it is half, else a valid convolution of kernel `1 + size difference` (1x1 for equal sizes); then
    BatchNorm and, with `relu`, a ReLU."""

    def __init__(self, in_shape: Shape, out_shape: Shape, relu: bool = True) -> None:
        checks.flag("relu", relu)
        super().__init__()
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise refuse_shapes(
                in_shape,
                f"ConvReg needs feature maps (C, H, W), and the student's feature has shape {tuple(in_shape)}, the "
                f"teacher's {tuple(out_shape)}",
                "projector=linear or mlp for flat features, or layers that give feature maps",
            )
        (s_c, s_h, s_w), (t_c, t_h, t_w) = in_shape, out_shape
        conv: nn.Module
        if s_h == 2 * t_h:
            conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise refuse_shapes(
                in_shape,
                f"ConvReg maps a student map of size {(s_h, s_w)} to the teacher's {(t_h, t_w)} only when it is "
                "larger, equal, or exactly half",
                "other layers, or another projector such as projector=linear",
            )
        self.body = nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU()] if relu else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Linear(nn.Module):
    """Flatten, one linear layer to the teacher feature's size, reshape to its shape. Its size is the product of
    both features' sizes (65 x 192 tokens to 197 x 384: 944 million parameters), so one over `max_parameters` is
    refused before it is allocated."""

    def __init__(self, in_shape: Shape, out_shape: Shape, max_parameters: int = 50_000_000) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        checks.integer("max_parameters", max_parameters, at_least=1)
        n_in, n_out = math.prod(in_shape), math.prod(out_shape)
        if (n_in + 1) * n_out > max_parameters:
            raise InvalidArgument(
                "max_parameters",
                max_parameters,
                f"a limit of at least {(n_in + 1) * n_out:,}, or a projector that maps position by position "
                "(projector=conv1x1)",
                why=f"a linear map from the student's feature of shape {tuple(in_shape)} to the teacher's "
                f"{tuple(out_shape)} would have {(n_in + 1) * n_out:,} parameters",
            )
        self.body = nn.Linear(n_in, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1)).view(x.shape[0], *self.out_shape)


class MLP(nn.Module):
    """Flatten, Linear-ReLU-Linear with `hidden` units, reshape to the teacher feature's shape."""

    def __init__(self, in_shape: Shape, out_shape: Shape, hidden: int = 256) -> None:
        checks.integer("hidden", hidden, at_least=1)
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.body = nn.Sequential(
            nn.Linear(math.prod(in_shape), hidden), nn.ReLU(), nn.Linear(hidden, math.prod(out_shape))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1)).view(x.shape[0], *self.out_shape)
