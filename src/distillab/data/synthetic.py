"""Random tensors of any shape, generated from a seed (tests, benchmarks, smoke runs of big configs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from distillab import checks
from distillab.data.memory import BatchTransform, TensorLoader
from distillab.data.module import DataModule
from distillab.data.subset import Subset, stratified_indices
from distillab.errors import InvalidArgument


def synthetic(
    batch_size: int,
    num_train: int = 256,
    num_val: int = 128,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    noise: float = 1.0,
    seed: int = 0,
    normalize: Mapping[str, Sequence[float]] | None = None,
    augment: BatchTransform | None = None,
    train_subset: Subset = None,
    split_seed: int = 0,
) -> DataModule:
    """Each class has a random prototype image; a sample is its class prototype plus Gaussian noise.

    So the labels are learnable (accuracy rises above chance), unlike pure noise. `normalize` (per-channel
    `mean` and `std`) is applied like a real dataset's, so an experiment's settings carry over unchanged;
    so is `augment` (a batch transform, the `data/augment` group: crop_flip's padding is zeros of the normalised
    images; weak_and_strong stacks two views of every image) and `train_subset`.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("num_train", num_train),
        ("num_val", num_val),
        ("in_channels", in_channels),
        ("image_size", image_size),
        ("num_classes", num_classes),
    ):
        checks.integer(name, value, at_least=1)
    checks.number("noise", noise, at_least=0, at_most=1e3)
    checks.augment(augment)
    if normalize is not None and not (len(normalize.get("mean", ())) == len(normalize.get("std", ())) == in_channels):
        raise InvalidArgument(
            "normalize", dict(normalize), f"{{mean: [...], std: [...]}} with {in_channels} values each, or null"
        )
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, in_channels, image_size, image_size, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        images = prototypes[labels] + noise * torch.randn(n, in_channels, image_size, image_size, generator=generator)
        if normalize is not None:
            images = (images - torch.tensor(normalize["mean"])[:, None, None]) / torch.tensor(normalize["std"])[
                :, None, None
            ]
        return images, labels

    x_train, y_train = sample(num_train)
    x_val, y_val = sample(num_val)
    keep = stratified_indices(y_train.numpy(), train_subset, split_seed)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    return DataModule(
        train=TensorLoader(x_train, y_train, batch_size, shuffle=True, seed=seed, transform=augment),
        val=TensorLoader(x_val, y_val, batch_size),
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        random_inputs=augment is not None,
        views_per_sample=getattr(augment, "copies", 1),
    )
