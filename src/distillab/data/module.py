"""`DataModule`: what every `data/` config builds, and the loader contract the trainer relies on.

A loader (`train`, `val`; `Loader`) is any iterable of batches with a length:
- each batch is `(inputs, targets)` or `(inputs, targets, index)`, `index` the samples' positions in the
  training set (a CPU LongTensor). Terms with per-sample state (CRD's memory bank) and the teacher-output
  cache read it; every loader distillab builds yields it for the train split.
- `len(loader)` is the number of batches per epoch (progress, per-step schedules, warm-up).
- `loader.set_epoch(epoch)` (or `loader.sampler.set_epoch`), where present, is called before each epoch:
  the order and augmentation of epoch `e` must depend only on (seed, e), so a resumed run sees the
  batches an uninterrupted one would.
- For `trainer.strategy=ddp`, `DataModule.shard` gives each process its part (`TensorLoader.sharded`, or a
  `DistributedSampler` over a DataLoader's dataset).
The facts models are sized from (`in_channels`, `image_size`, `num_classes`) come with the loaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, Subset

from distillab.data.memory import TensorLoader
from distillab.errors import ConfigError


class Loader(Protocol):
    """The loader contract above, as a type: batches and their count per epoch (`set_epoch` is optional, so it is
    looked up where present rather than required here)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass
class DataModule:
    """The two loaders and the shape facts models are built from."""

    train: Loader
    val: Loader
    in_channels: int
    image_size: int
    num_classes: int
    # True when the train inputs differ from epoch to epoch (random augmentation, fresh noise):
    # anything cached per sample (teacher outputs) would then be wrong.
    random_inputs: bool = False
    # Inputs per training sample in a batch (2 with `data/augment=weak_and_strong`: a weak and a strong view, stacked).
    views_per_sample: int = 1

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            try:
                empty = len(getattr(self, split)) == 0
            except TypeError:  # an iterable without a length: nothing to check up front
                continue
            if empty:
                raise ConfigError(
                    f"The {split} split of the data is empty: the dataset must give at least one {split} sample "
                    "(check its size settings)."
                )

    @property
    def train_targets(self) -> Tensor:
        """The label of every training sample, by the sample index the train loader yields as a batch's
        third element (all samples, also when this process serves a DDP shard)."""
        source = self.train if isinstance(self.train, TensorLoader) else getattr(self.train, "dataset", None)
        targets = getattr(source, "targets", None)
        if targets is None:
            raise ConfigError(
                "This data's train loader does not expose its samples' targets, which this loss needs: use an "
                "in-memory or torchvision data config."
            )
        return torch.as_tensor(targets)

    def shard(self, rank: int, world: int) -> DataModule:
        """This rank's share. Train: every rank gets the same number of batches (the last `n mod world`
        samples of each epoch's shuffle are left out, as DistributedSampler(drop_last=True) does); val:
        disjoint parts that together cover every sample exactly once."""
        for split in ("train", "val"):
            loader = getattr(self, split)
            size = len(loader.dataset) if isinstance(loader, DataLoader) else getattr(loader, "dataset_size", None)  # type: ignore[arg-type]
            if size is not None and size < world:
                raise ConfigError(
                    f"The {split} split has {size} samples for {world} processes: each process needs at least one "
                    "(use fewer processes or more data)."
                )
        return replace(
            self, train=_shard(self.train, rank, world, train=True), val=_shard(self.val, rank, world, train=False)
        )


def _shard(loader: Any, rank: int, world: int, train: bool) -> Any:
    if isinstance(loader, TensorLoader):
        return loader.sharded(rank, world, even=train)
    if isinstance(loader, DataLoader):
        options = dict(
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers,
        )
        dataset = loader.dataset
        if train:
            seed = getattr(loader.sampler, "seed", 0)
            sampler: DistributedSampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
            return DataLoader(dataset, sampler=sampler, **options)  # type: ignore[arg-type]
        return DataLoader(Subset(dataset, range(rank, len(dataset), world)), shuffle=False, **options)  # type: ignore[arg-type]
    raise ConfigError(
        f"trainer.strategy=ddp cannot split a {type(loader).__name__} between processes: use a TensorLoader or a "
        "DataLoader."
    )
