"""torchvision's datasets (CIFAR-10/100, MNIST, Fashion-MNIST), downloaded into `paths.data_dir`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T

from distillab.data.memory import DataModule, TensorLoader
from distillab.distributed import resolve_device
from distillab.errors import ConfigError


def _transforms(image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool) -> tuple:
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    train = [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(train + to_tensor), T.Compose(to_tensor)


class WithIndex(Dataset):
    """A dataset whose items are `(input, target, index)`: the sample index lets loss terms keep state per
    training sample (CRD's memory bank), as `TensorLoader` batches do. `targets` is passed through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.targets = getattr(dataset, "targets", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        x, y = self.dataset[index]
        return x, y, index


def as_tensors(dataset: Dataset, num_workers: int) -> tuple[Tensor, Tensor]:
    """Every (transformed) sample of `dataset`, decoded once into two tensors."""
    batches = list(DataLoader(dataset, batch_size=1024, num_workers=num_workers))
    return torch.cat([x for x, _ in batches]), torch.cat([torch.as_tensor(y) for _, y in batches])


def torchvision_data(
    dataset: str,
    root: str,
    batch_size: int,
    normalize: Mapping[str, Sequence[float]],
    in_channels: int,
    image_size: int,
    num_classes: int,
    download: bool = True,
    augment: bool = False,
    num_workers: int = 2,
    seed: int = 0,
    in_memory: bool = True,
    device: str = "cpu",
) -> DataModule:
    """`dataset` is the class name in `torchvision.datasets` (`CIFAR10`, `MNIST`, ...).

    `in_memory`: a split without random augmentation is decoded and normalised once into tensors on
    `device` (CIFAR-10: 600 MB as float32) and served by `TensorLoader`: no per-item work, no workers,
    no host-to-device copy on a GPU, and its teacher outputs can be cached. An augmented train split is
    served by worker processes with pinned memory (on a GPU) instead.
    """
    cls = getattr(torchvision.datasets, dataset, None)
    if cls is None:
        raise ConfigError(f"data.dataset={dataset!r} is not a dataset class in torchvision.datasets.")
    train_tf, val_tf = _transforms(image_size, normalize["mean"], normalize["std"], augment)
    try:
        train = cls(root, train=True, download=download, transform=train_tf)
        val = cls(root, train=False, download=download, transform=val_tf)
    except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found or corrupted"; URLError is an OSError
        how = f"the download failed ({error})" if download else "data.download is false"
        raise ConfigError(
            f"{dataset} was not found under {root} and {how}: put torchvision's {dataset} files "
            f"there, point paths.data_dir at them, or run with data.download=true on a machine with internet."
        ) from error
    if in_memory:
        target = resolve_device(device)

        def tensor_loader(dataset: Dataset, shuffle: bool) -> TensorLoader:
            x, y = as_tensors(dataset, num_workers)
            return TensorLoader(x.to(target), y.to(target), batch_size, shuffle=shuffle, seed=seed)

    # splits served by workers: page-locked batches, so the trainer's non_blocking copies overlap compute
    loader = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    if in_memory and not augment:
        train_loader = tensor_loader(train, shuffle=True)
    else:
        # The sampler's order depends only on (seed, epoch) (the trainer calls set_epoch), so a resumed
        # run sees the same samples in the same order as an uninterrupted one.
        train = WithIndex(train)
        train_loader = DataLoader(train, sampler=DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=seed), **loader)
    return DataModule(
        train=train_loader,
        val=tensor_loader(val, shuffle=False) if in_memory else DataLoader(val, shuffle=False, **loader),
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        random_inputs=augment,
    )
