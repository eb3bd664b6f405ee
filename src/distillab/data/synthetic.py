"""Random tensors of any shape, generated from a seed (tests, benchmarks, smoke runs of big configs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from distillab.data.memory import DataModule, RandomCropFlip, TensorLoader
from distillab.errors import ConfigError


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
    augment: bool = False,
) -> DataModule:
    """Each class has a random prototype image; a sample is its class prototype plus Gaussian noise.

    So the labels are learnable (accuracy rises above chance), unlike pure noise. `normalize` (per-channel
    `mean` and `std`) is applied like a real dataset's, so an experiment's settings carry over unchanged;
    so is `augment` (a random crop with 4 pixels of padding and a horizontal flip, fresh every epoch).
    """
    if normalize is not None and not len(normalize["mean"]) == len(normalize["std"]) == in_channels:
        raise ConfigError(f"data.normalize needs one mean and one std per channel ({in_channels}), got {dict(normalize)}.")
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, in_channels, image_size, image_size, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        images = prototypes[labels] + noise * torch.randn(n, in_channels, image_size, image_size, generator=generator)
        if normalize is not None:
            images = (images - torch.tensor(normalize["mean"])[:, None, None]) / torch.tensor(normalize["std"])[:, None, None]
        return images, labels

    x_train, y_train = sample(num_train)
    x_val, y_val = sample(num_val)
    return DataModule(
        train=TensorLoader(x_train, y_train, batch_size, shuffle=True, seed=seed, transform=RandomCropFlip(4) if augment else None),
        val=TensorLoader(x_val, y_val, batch_size),
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        random_inputs=augment,
    )
