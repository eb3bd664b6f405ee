"""Data that fits in memory, served as whole batches sliced from tensors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from distillab.errors import ConfigError

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class DataModule:
    """What a `data/` config builds: the two loaders and the shape facts models are built from."""

    train: Iterable
    val: Iterable
    in_channels: int
    image_size: int
    num_classes: int
    # True when the train inputs differ from epoch to epoch (random augmentation, fresh noise):
    # anything cached per sample (teacher outputs) would then be wrong.
    random_inputs: bool = False

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            try:
                empty = len(getattr(self, split)) == 0  # type: ignore[arg-type]
            except TypeError:  # an iterable without a length: nothing to check up front
                continue
            if empty:
                raise ConfigError(f"The {split} split of the data is empty: the dataset must give at least one {split} sample (check its size settings).")

    @property
    def train_targets(self) -> Tensor:
        """The label of every training sample, by the sample index the train loader yields as a batch's
        third element (all samples, also when this process serves a DDP shard)."""
        source = self.train if isinstance(self.train, TensorLoader) else getattr(self.train, "dataset", None)
        targets = getattr(source, "targets", None)
        if targets is None:
            raise ConfigError("This data's train loader does not expose its samples' targets, which this loss needs: use an in-memory or torchvision data config.")
        return torch.as_tensor(targets)


class GaussianNoise:
    """Adds fresh noise of standard deviation `std` to each batch (denoising inputs)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x + self.std * torch.randn(x.shape, generator=generator, dtype=x.dtype)


class RandomCropFlip:
    """The CIFAR augmentation on a batch of tensors: zero-pad by `padding`, crop back to the original size
    at a random offset, and flip horizontally with probability 1/2, drawn per sample."""

    def __init__(self, padding: int = 4) -> None:
        self.padding = padding

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, [self.padding] * 4)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator).tolist()
        flips = torch.rand(n, generator=generator).lt(0.5).tolist()
        crops = [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
        return torch.stack([c.flip(-1) if flip else c for c, flip in zip(crops, flips)])


class TensorLoader:
    """Batches by one indexing operation on in-memory tensors: no per-item `__getitem__`, no workers.

    Yields `(inputs, targets, indices)`. The shuffle order of epoch `e` depends only on `(seed, e)`,
    so a resumed run sees the same batches as an uninterrupted one.
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
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.transform = drop_last, transform
        self.epoch = 0
        self.rank, self.world, self.even = 0, 1, False  # see `sharded`

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

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.inputs)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world > 1:
            order = order[: n - n % self.world if self.even else n][self.rank :: self.world]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.inputs[index]
            if self.transform is not None:
                x = self.transform(x, generator)
            yield x, self.targets[index], index
