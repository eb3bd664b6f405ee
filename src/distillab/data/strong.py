"""A strong view of each training image, for methods that distil on a weak and a strong view of every sample
(MLKD): the weak view is CIFAR's crop and flip, the strong one the same followed by the RandAugment variant that
MLKD's authors use (FixMatch's: two operations drawn from fourteen at a random magnitude each, then Cutout)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import Tensor

from distillab import checks
from distillab.data.augment import CropFlip

Op = Callable[[Image.Image, float], Image.Image]


def _affine(matrix: Callable[[Image.Image, float], tuple[float, ...]]) -> Op:
    return lambda img, v: img.transform(img.size, Image.Transform.AFFINE, matrix(img, v))


# (operation, lowest magnitude, highest magnitude): the list of the authors' `augment_list` (Jin-Ying/Multi-Level-
# Logit-Distillation, mdistiller/dataset/cifar100.py), through the same PIL calls.
OPS: list[tuple[Op, float, float]] = [
    (lambda img, v: ImageOps.autocontrast(img), 0, 1),
    (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    (lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    (lambda img, v: ImageOps.equalize(img), 0, 1),
    (lambda img, v: img, 0, 1),
    (lambda img, v: ImageOps.posterize(img, max(1, int(v))), 4, 8),
    (lambda img, v: img.rotate(v), -30, 30),
    (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    (_affine(lambda img, v: (1, v, 0, 0, 1, 0)), -0.3, 0.3),  # shear x
    (_affine(lambda img, v: (1, 0, 0, v, 1, 0)), -0.3, 0.3),  # shear y
    (lambda img, v: ImageOps.solarize(img, int(v)), 0, 256),
    (_affine(lambda img, v: (1, 0, v * img.size[0], 0, 1, 0)), -0.3, 0.3),  # translate x (a fraction of the width)
    (_affine(lambda img, v: (1, 0, 0, 0, 1, v * img.size[1])), -0.3, 0.3),  # translate y
]
CUTOUT_FILL = (125, 123, 114)  # the authors' grey


def cutout(img: Image.Image, fraction: float, centre: tuple[float, float]) -> Image.Image:
    """A square of side `fraction` x the width, at `centre` (pixels), clipped to the image, painted grey."""
    if fraction <= 0:
        return img
    w, h = img.size
    side = fraction * w
    x0, y0 = int(max(0, centre[0] - side / 2)), int(max(0, centre[1] - side / 2))
    img = img.copy()
    fill = CUTOUT_FILL if img.mode == "RGB" else CUTOUT_FILL[0]
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), fill)
    return img


class RandAugmentCutout:
    """`n` operations of `OPS` drawn with replacement, each at a magnitude uniform in its range, then Cutout of
    a square up to half the width at a uniform centre: per image, with draws from the loader's generator (so
    an epoch's strong views depend only on (seed, epoch)). Runs through PIL on the CPU, as the authors' does:
    uint8 images as they are; float images (synthetic data) through a per-image [0, 1] rescaling and back."""

    random = True

    def __init__(self, n: int = 2) -> None:
        self.n = checks.integer("n", n, at_least=0, at_most=len(OPS))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        device, out = x.device, []
        for image in x.cpu():
            ops = torch.randint(len(OPS), (self.n,), generator=generator).tolist()
            magnitudes = torch.rand(self.n, generator=generator).tolist()
            fraction, cx, cy = torch.rand(3, generator=generator).tolist()
            low, high = (image.min(), image.max()) if image.is_floating_point() else (None, None)
            as_uint8 = image if low is None else ((image - low) / (high - low).clamp_min(1e-12) * 255).round().byte()
            img = Image.fromarray(as_uint8.permute(1, 2, 0).squeeze(2).numpy())
            for op, magnitude in zip(ops, magnitudes):
                fn, lo, hi = OPS[op]
                img = fn(img, lo + (hi - lo) * magnitude)
            w, h = img.size
            img = cutout(img, fraction * 0.5, (cx * w, cy * h))
            back = torch.from_numpy(np.asarray(img).copy()).reshape(image.shape[1], image.shape[2], -1)
            back = back.permute(2, 0, 1)
            out.append(back if low is None else back.float() / 255 * (high - low) + low)
        return torch.stack(out).to(device, non_blocking=True)


class WeakAndStrong:
    """Two views of every image, stacked: the weak one (crop and flip) first, then the strong one (its own crop and
    flip, then `RandAugmentCutout`), so a batch of n images becomes 2n inputs (`copies = 2`: the loader repeats the
    targets and indices to match)."""

    random = True
    copies = 2

    def __init__(self, padding: int = 4, n: int = 2) -> None:
        self.crop_flip, self.strong = CropFlip(padding), RandAugmentCutout(n)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        weak = self.crop_flip(x, generator)
        return torch.cat([weak, self.strong(self.crop_flip(x, generator), generator)])
