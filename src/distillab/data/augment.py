"""Batch transforms on the training device: CIFAR's augmentation on whole batches, and uint8 images to
normalised float32, so a dataset held in memory (one uint8 tensor) never goes through per-image PIL work."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distillab import checks


class CropFlip:
    """torchvision's `RandomCrop(size, padding)` + `RandomHorizontalFlip()` on a batch (N, C, H, W), drawn per
    sample: zero padding of `padding` pixels, a crop back to H x W at an offset uniform in
    [0, 2 * padding]^2, and a horizontal flip with probability 1/2. The draws come from the loader's CPU
    generator (seeded by (seed, epoch)); the gathering runs on the batch's device."""

    random = True

    def __init__(self, padding: int = 4) -> None:
        self.padding = checks.integer("padding", padding, at_least=0)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, 2) offsets (row, column) of each crop in the padded image, and (n,) flips."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return offsets, flips

    def apply(self, x: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = self.padding
        offsets, flips = offsets.to(x.device, non_blocking=True), flips.to(x.device, non_blocking=True)
        padded = F.pad(x, [p, p, p, p])
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (n, h)
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (n, w)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
        picked_rows = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        return picked_rows.gather(3, cols[:, None, None, :].expand(n, c, h, w))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.with_views(x, generator)[0]

    # The views are finite and known: (2p+1)^2 offsets x 2 flips (162 for p=4), numbered
    # (row * (2p+1) + column) * 2 + flip, so a teacher's logits can be cached per (sample, view).
    @property
    def views(self) -> int:
        return (2 * self.padding + 1) ** 2 * 2

    def with_views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The augmented batch (the same draws as calling it) and each sample's view number (on the CPU)."""
        offsets, flips = self.draw(len(x), generator)
        views = (offsets[:, 0] * (2 * self.padding + 1) + offsets[:, 1]) * 2 + flips.long()
        return self.apply(x, offsets, flips), views

    def render(self, x: Tensor, views: Tensor) -> Tensor:
        """Each sample of `x` in its view number `views[i]`."""
        side = 2 * self.padding + 1
        place, flips = views // 2, views % 2 == 1
        return self.apply(x, torch.stack([place // side, place % side], 1), flips)


class ToFloat:
    """uint8 images to float32 in [0, 1], then per-channel `(x - mean) / std` (torchvision's ToTensor +
    Normalize, the same operations in the same order); float inputs are only normalised."""

    random = False

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)[:, None, None]
        self._device: torch.device | None = None

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div(255)
        if self.mean is not None and self.std is not None:
            if self._device != x.device:
                self.mean, self.std, self._device = self.mean.to(x.device), self.std.to(x.device), x.device
            x = x.sub(self.mean).div(self.std)
        return x
