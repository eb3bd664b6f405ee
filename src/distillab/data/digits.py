"""scikit-learn's bundled handwritten digits: real data, 1797 images of 8x8, no download."""

from __future__ import annotations

import torch
from torch import Tensor

from distillab import checks
from distillab.data.memory import GaussianNoise, TensorLoader
from distillab.data.module import DataModule
from distillab.data.subset import Subset, stratified_indices
from distillab.errors import ConfigError

_FACTS = {"in_channels": 1, "image_size": 8, "num_classes": 10}


def _check_facts(**declared: int) -> None:
    for key, value in declared.items():
        if value != _FACTS[key]:
            raise ConfigError(f"data.{key}={value} does not match the digits data, whose {key} is {_FACTS[key]}.")


def _split(val_fraction: float, split_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images scaled to [0, 1] and split, stratified by class, with a fixed seed. Both splits keep at
    least one image of each of the 10 classes."""
    checks.number("val_fraction", val_fraction, at_least=10 / 1797, at_most=1 - 10 / 1797)
    checks.integer("split_seed", split_seed)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=val_fraction, random_state=split_seed, stratify=digits.target
    )
    as_images = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731  (N, 1, 8, 8)
    return as_images(x_train), torch.from_numpy(y_train), as_images(x_val), torch.from_numpy(y_val)


def digits(
    batch_size: int,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int = 10,
    train_subset: Subset = None,
) -> DataModule:
    """Classification. Normalised with the mean and std of the (whole) train split, also when `train_subset`
    keeps a part of it (so a teacher trained on the whole split sees inputs scaled as the student's)."""
    _check_facts(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    checks.integer("batch_size", batch_size, at_least=1)
    x_train, y_train, x_val, y_val = _split(val_fraction, split_seed)
    mean, std = x_train.mean(), x_train.std()
    keep = stratified_indices(y_train.numpy(), train_subset, split_seed)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return DataModule(
        train=TensorLoader(x_train, y_train, batch_size, shuffle=True, seed=seed),
        val=TensorLoader(x_val, y_val, batch_size),
        in_channels=1,
        image_size=8,
        num_classes=10,
    )


def digits_denoising(
    batch_size: int,
    noise_std: float = 0.3,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int = 10,
) -> DataModule:
    """Reconstruction: noisy digit in, clean digit (pixels in [0, 1]) out.

    Training inputs get fresh noise every batch; validation noise is drawn once from `split_seed`, so
    every epoch and every run is scored on the same noisy images.
    """
    _check_facts(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    checks.integer("batch_size", batch_size, at_least=1)
    checks.number("noise_std", noise_std, at_least=0, at_most=100)
    x_train, _, x_val, _ = _split(val_fraction, split_seed)
    noisy_val = GaussianNoise(noise_std)(x_val, torch.Generator().manual_seed(split_seed))
    return DataModule(
        train=TensorLoader(x_train, x_train, batch_size, shuffle=True, seed=seed, transform=GaussianNoise(noise_std)),
        val=TensorLoader(noisy_val, x_val, batch_size),
        random_inputs=noise_std > 0,
        **_FACTS,
    )
