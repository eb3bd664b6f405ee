"""Any map-style dataset as a `DataModule`: a torchvision dataset class (CIFAR-10/100, MNIST, SVHN, STL10, ...)
or your own `torch.utils.data.Dataset`, named in YAML by `_target_` with `_partial_: true` (distillab calls
it, adding `transform=` where the class takes one).

Held in memory (`in_memory: true`, the default): each split is decoded once into one tensor on the training
device (uint8 for images: CIFAR-100's train split is 150 MB), and batches are gathered, augmented
(`augment`, on whole batches: `data.augment_on=device`) and normalised there: no workers, no per-image
work, and without augmentation the teacher's outputs can be cached. `augment_on: workers` (or
`in_memory: false`) serves the train split through DataLoader workers with torchvision's per-image
transforms instead. Either way the order and the augmentation of epoch `e` depend only on (seed, e).

Images of many sizes (ImageNet) cannot be held as one tensor: `transforms` gives each split its own per-image
torchvision transforms (RandomResizedCrop and flip; Resize and CenterCrop), run from disk in DataLoader workers
(`in_memory: false`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from distillab import checks
from distillab.data.augment import CropFlip, ToFloat
from distillab.data.memory import BatchTransform, Compose, TensorLoader
from distillab.data.module import DataModule
from distillab.data.subset import Subset as SubsetSpec
from distillab.data.subset import stratified_indices
from distillab.distributed import resolve_device
from distillab.errors import ConfigError, InvalidArgument, first_line

log = logging.getLogger(__name__)


class WithIndex(Dataset):
    """Items `(input, target, index)`: the sample index lets loss terms keep state per training sample
    (CRD's memory bank), as `TensorLoader` batches do. `targets` is passed through."""

    def __init__(self, dataset: Dataset, targets: Sequence[int] | Tensor | np.ndarray) -> None:
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index][:2]
        return x, y, index


def targets_of(dataset: Any) -> np.ndarray:
    """Every sample's label: `targets` or `labels` (torchvision's names), else read item by item."""
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            return np.asarray(values)
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def _as_tensor(item: Any) -> Tensor:
    """An item's input as a tensor: PIL images as uint8 (C, H, W), numpy arrays and tensors as they are."""
    if isinstance(item, Tensor):
        return item
    if isinstance(item, np.ndarray):
        return torch.from_numpy(item)
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(item)


def _stored_images(dataset: Any, in_channels: int) -> Tensor | None:
    """torchvision keeps decoded images in `data` (uint8: N x H x W x C for CIFAR, N x C x H x W for SVHN
    and STL10, N x H x W for MNIST): use it as (N, C, H, W) without touching an item."""
    data = getattr(dataset, "data", None)
    if (
        not isinstance(data, (np.ndarray, Tensor))
        or data.dtype not in (np.uint8, torch.uint8)
        or len(data) != len(dataset)
    ):
        return None
    images = torch.as_tensor(data)
    if images.dim() == 3:
        return images.unsqueeze(1)
    if images.dim() == 4 and images.shape[1] != in_channels and images.shape[-1] == in_channels:
        return images.permute(0, 3, 1, 2).contiguous()
    return images if images.dim() == 4 else None


def decode(dataset: Any, in_channels: int, num_workers: int) -> tuple[Tensor, Tensor]:
    """Every sample of `dataset` (no transform) as one inputs tensor and one targets tensor, on the CPU."""
    stored = _stored_images(dataset, in_channels)
    if stored is not None:
        return stored, torch.as_tensor(targets_of(dataset))
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=lambda items: items)
    inputs, targets = [], []
    for items in loader:
        inputs += [_as_tensor(item[0]) for item in items]
        targets += [item[1] for item in items]
    return torch.stack(inputs), torch.as_tensor(targets)


# What torchvision's datasets that cannot download expect under their root, named when a split is missing.
EXPECTED_FILES = {
    "ImageNet": (
        "ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_{split}.tar from image-net.org (torchvision cannot download "
        "them; it unpacks them there on first use), or the meta.bin and {split}/ folder unpacked from them"
    ),
}


def _make(factory: Any, split: str, transform: Callable | None, data_root: str | None = None) -> Any:
    """Call the split's dataset factory (a `_partial_` config), passing `transform` where it takes one.
    `data_root`: `data.root`, named in the message when the factory reads it and the dataset is not there."""
    if not callable(factory):
        raise InvalidArgument(
            split, factory, "a dataset: a `_target_` class with `_partial_: true`, e.g. torchvision.datasets.CIFAR10"
        )
    name = getattr(getattr(factory, "func", factory), "__name__", str(factory))
    try:
        parameters = inspect.signature(factory).parameters
        # ImageNet passes `transform` on through **kwargs
        takes_transform = "transform" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    except (TypeError, ValueError):
        takes_transform = False
    keywords = getattr(factory, "keywords", {})
    try:
        return factory(transform=transform) if takes_transform and transform is not None else factory()
    except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found or corrupted"; URLError is an OSError
        root, download = keywords.get("root", "its root"), keywords.get("download", False)
        if "download" not in keywords and name in EXPECTED_FILES:  # a dataset torchvision cannot download
            named = data_root is not None and str(root) == str(data_root)
            where, fix = (
                (f"data.root={root}", "set data.root to the folder that holds them")
                if named
                else (str(root), f"put them there, or point data.{split}.root at them")
            )
            expected = EXPECTED_FILES[name].format(split=keywords.get("split", split))
            raise ConfigError(
                f"{name} ({split} split) was not found under {where}: torchvision's {name} expects {expected}; {fix}."
            ) from error
        how = f"the download failed ({first_line(error)})" if download else "data.download is false"
        raise ConfigError(
            f"{name} ({split} split) was not found under {root} and {how}: put torchvision's {name} files there, point "
            "paths.data_dir at them, or run with data.download=true on a machine with internet."
        ) from error
    except TypeError as error:
        raise InvalidArgument(
            split, name, f"the keys {name} takes", why=f"it could not be built: {first_line(error)}"
        ) from error


def _pil_transforms(
    image_size: int,
    augment: CropFlip | None,
    normalize: Mapping[str, Sequence[float]] | None,
    transforms: Mapping[str, Sequence[Callable]] | None = None,
) -> tuple[Callable, Callable]:
    """torchvision's per-image transforms for worker processes: crop and flip (`CropFlip`'s), or each split's own
    `transforms`, then to a tensor and normalised."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), *([T.Normalize(normalize["mean"], normalize["std"])] if normalize else [])]
    if transforms is not None:
        return T.Compose([*transforms.get("train", ()), *tail]), T.Compose([*transforms.get("val", ()), *tail])
    train = [T.RandomCrop(image_size, padding=augment.padding), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(train + tail), T.Compose(tail)


def dataset_data(
    train: Any,
    val: Any,
    batch_size: int,
    in_channels: int,
    image_size: int,
    num_classes: int,
    normalize: Mapping[str, Sequence[float]] | None = None,
    augment: BatchTransform | None = None,
    augment_on: str | None = None,
    in_memory: bool = True,
    num_workers: int = 2,
    seed: int = 0,
    split_seed: int = 0,
    train_subset: SubsetSpec = None,
    device: str = "cpu",
    download: bool = True,
    root: str | None = None,
    transforms: Mapping[str, Sequence[Callable]] | None = None,
) -> DataModule:
    """`train`, `val`: dataset factories (`_partial_` configs). `augment`: a batch transform of the train split
    (the `data/augment` group: `CropFlip`, the CIFAR recipe's; `WeakAndStrong`, MLKD's two views stacked), or
    None; `augment_on`: `device` (default when `in_memory`) or `workers` (torchvision's per-image crop and flip,
    for `CropFlip` only).
    `normalize`: per-channel `mean` and `std` of the train split (after scaling uint8 to [0, 1]).
    `train_subset`: a class-stratified part of the train split (drawn with `split_seed`); `download` and `root` are
    read by the factories through `${data.download}` and `${data.root}` (`root`, where a data config has one, is
    named when the dataset is not there).
    `transforms`: `{train: [...], val: [...]}`, per-image torchvision transforms of each split before ToTensor and
    `normalize` (ImageNet's RandomResizedCrop + flip, Resize + CenterCrop), for images of different sizes: read
    from disk in DataLoader workers (`in_memory: false`), instead of `augment`."""
    checks.integer("batch_size", batch_size, at_least=1)
    checks.flag("in_memory", in_memory)
    checks.integer("num_workers", num_workers, at_least=0)
    checks.augment(augment)
    if augment_on not in (None, "device", "workers"):
        raise InvalidArgument("augment_on", augment_on, "device, workers or null (device when in_memory is true)")
    if augment_on == "device" and not in_memory:
        raise InvalidArgument(
            "augment_on",
            augment_on,
            "workers, or in_memory=true: device augmentation works on the dataset held in memory",
        )
    if augment is not None and not isinstance(augment, CropFlip) and (augment_on == "workers" or not in_memory):
        raise InvalidArgument(
            "augment",
            type(augment).__name__,
            "crop_flip for torchvision's per-image transforms in workers; others run on whole batches of the data "
            "held in memory (in_memory=true, augment_on=device)",
        )
    if normalize is not None and not (
        len(normalize.get("mean", ())) == len(normalize.get("std", ())) == in_channels
        and all(s > 0 for s in normalize["std"])
    ):
        raise InvalidArgument(
            "normalize",
            dict(normalize),
            f"{{mean: [...], std: [...]}} with {in_channels} values each (std > 0), or null",
        )
    if transforms is not None:
        if not set(transforms) <= {"train", "val"}:
            raise InvalidArgument("transforms", sorted(transforms), "{train: [...], val: [...]}, each split's own")
        if in_memory:
            raise InvalidArgument(
                "in_memory", in_memory, "false with per-image transforms (data.transforms): images read from disk"
            )
        if augment is not None:
            raise InvalidArgument(
                "augment", type(augment).__name__, "null with data.transforms: the train split's are its augmentation"
            )
    on_workers = augment is not None and (augment_on == "workers" or not in_memory)
    crop_flip = augment if isinstance(augment, CropFlip) else None  # (the only one workers run: checked above)
    train_tf, val_tf = (
        _pil_transforms(image_size, crop_flip, normalize, transforms) if not in_memory or on_workers else (None, None)
    )
    train_set = _make(train, "train", train_tf, root)
    val_set = _make(val, "val", val_tf if not in_memory else None, root)
    keep = stratified_indices(targets_of(train_set), train_subset, split_seed)
    if keep is not None:
        train_set = Subset(train_set, keep.tolist())
    target = resolve_device(device)
    to_float = ToFloat(normalize["mean"], normalize["std"]) if normalize else ToFloat()

    def in_memory_loader(dataset: Any, shuffle: bool, transform: BatchTransform | None) -> TensorLoader:
        x, y = decode(dataset, in_channels, num_workers)
        return TensorLoader(
            x.to(target), y.to(target), batch_size, shuffle=shuffle, seed=seed, transform=Compose(transform, to_float)
        )

    # splits served by workers: page-locked batches, so the trainer's non_blocking copies overlap compute
    options: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    if in_memory and not on_workers:
        train_loader: Any = in_memory_loader(train_set, shuffle=True, transform=augment)
    else:
        # The sampler's order depends only on (seed, epoch) (the trainer calls set_epoch).
        indexed = WithIndex(train_set, targets_of(train_set))
        train_loader = DataLoader(
            indexed, sampler=DistributedSampler(indexed, num_replicas=1, rank=0, shuffle=True, seed=seed), **options
        )
    val_loader = (
        in_memory_loader(val_set, shuffle=False, transform=None)
        if in_memory
        else DataLoader(val_set, shuffle=False, **options)
    )
    return DataModule(
        train=train_loader,
        val=val_loader,
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        random_inputs=augment is not None or bool(transforms and transforms.get("train")),  # (assumed random)
        views_per_sample=getattr(augment, "copies", 1),
    )
