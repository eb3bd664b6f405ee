"""Data that fits in memory, served as whole batches sliced from tensors (on the training device)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from distillab import checks

# A transform of a whole batch: (inputs, generator) -> inputs. `random` tells whether it draws from the
# generator (random augmentation, fresh noise): then the inputs change from epoch to epoch.
BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class GaussianNoise:
    """Adds fresh noise of standard deviation `std` to each batch (denoising inputs)."""

    random = True

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x + self.std * noise.to(x.device, non_blocking=True)


def views_of(transform: BatchTransform | None) -> int | None:
    """How many distinct views of a sample a random `transform` can give, when that set is finite and numbered
    (`CropFlip`: its `views`, `with_views` and `render`); None for any other random transform."""
    return getattr(transform, "views", None) if getattr(transform, "random", transform is not None) else None


class Compose:
    """Batch transforms applied in order; random if any of them is. Its views are finite (`views`) when its only
    random transform has finite views."""

    def __init__(self, *transforms: BatchTransform | None) -> None:
        self.transforms = [t for t in transforms if t is not None]
        self.random = any(getattr(t, "random", False) for t in self.transforms)
        randoms = [t for t in self.transforms if getattr(t, "random", False)]
        self._viewed = randoms[0] if len(randoms) == 1 and views_of(randoms[0]) else None
        self.views = views_of(self._viewed)
        self.copies = math.prod(getattr(t, "copies", 1) for t in self.transforms)  # inputs per sample (MLKD: 2)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x

    def with_views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        views = None
        for transform in self.transforms:
            if transform is self._viewed:
                x, views = transform.with_views(x, generator)  # type: ignore[attr-defined]
            else:
                x = transform(x, generator)
        assert views is not None, "with_views needs finite views (Compose.views)"
        return x, views

    def render(self, x: Tensor, views: Tensor) -> Tensor:
        for transform in self.transforms:
            if transform is self._viewed:
                x = transform.render(x, views)  # type: ignore[attr-defined]
            else:
                x = transform(x, torch.Generator())  # not random: draws nothing
        return x


class TensorLoader:
    """Batches by one indexing operation on in-memory tensors: no per-item `__getitem__`, no workers.

    Yields `(inputs, targets, indices)` (a transform with `copies` > 1 stacks that many views of each sample:
    the targets and indices are repeated to match), and each sample's view number as a fourth tensor when the
    transform's views are finite (`views`: random crop and flip), which the teacher's per-view output cache looks
    up. The shuffle order and the transform's random draws of epoch `e` come from one CPU generator seeded by
    `(seed, e)`, so a resumed run sees the same batches, augmented the same way, as an uninterrupted one.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        checks.seed("seed", seed)
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.transform = drop_last, transform
        self.epoch = 0
        self.rank, self.world, self.even = 0, 1, False  # see `sharded`

    @property
    def random(self) -> bool:
        """Whether the inputs differ from epoch to epoch (a random transform)."""
        return bool(getattr(self.transform, "random", self.transform is not None))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sharded(self, rank: int, world: int, even: bool) -> TensorLoader:
        """A copy serving every `world`-th sample of each epoch's order, from `rank` on (DDP). `even`:
        every rank gets the same count (the order's last `n mod world` samples are left out)."""
        shard = copy.copy(self)
        shard.rank, shard.world, shard.even = rank, world, even
        return shard

    def _samples(self) -> int:
        n = len(self.inputs)
        return n // self.world if self.even else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        n = self._samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def dataset_size(self) -> int:
        return len(self.inputs)

    @property
    def views(self) -> int | None:
        """The number of distinct views of a sample the transform gives, when finite and numbered; else None."""
        return views_of(self.transform)

    def batch(self, index: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
        x, y = self.inputs[index.to(self.inputs.device)], self.targets[index.to(self.targets.device)]
        if self.views is not None:
            x, views = self.transform.with_views(x, generator)  # type: ignore[union-attr]
            return x, y, index, views
        if self.transform is not None:
            x = self.transform(x, generator)
            copies = getattr(self.transform, "copies", 1)
            if copies > 1:  # several views of each sample, stacked view by view (`strong.WeakAndStrong`)
                y, index = y.repeat(copies), index.repeat(copies)
        return x, y, index

    def render(self, index: Tensor, views: Tensor) -> Tensor:
        """Sample `index[i]` in view number `views[i]`, for each i (the per-view teacher cache's build)."""
        return self.transform.render(self.inputs[index.to(self.inputs.device)], views)  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.inputs)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world > 1:
            order = order[: n - n % self.world if self.even else n][self.rank :: self.world]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.batch(order[start : start + self.batch_size], generator)

    def in_order(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, ...]]:
        """Every sample once, by index, through the transform (which must not be random: teacher caching)."""
        generator = torch.Generator().manual_seed(0)
        size = batch_size or self.batch_size
        for start in range(0, len(self.inputs), size):
            yield self.batch(torch.arange(start, min(start + size, len(self.inputs))), generator)
