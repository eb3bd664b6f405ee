"""scikit-learn's bundled handwritten digits: real data, 1797 images of 8x8, no download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from distillab import checks
from distillab.data.memory import BatchTransform, GaussianNoise, TensorLoader
from distillab.data.module import DataModule
from distillab.data.subset import Subset, check_subset, stratified_indices
from distillab.errors import InvalidArgument

_FACTS = {"in_channels": 1, "image_size": 8, "num_classes": 10}


def _check_facts(**declared: int) -> None:
    for key, value in declared.items():
        if value != _FACTS[key]:
            raise InvalidArgument(
                key, value, f"{_FACTS[key]}", why=f"it does not match the digits data, whose {key} is {_FACTS[key]}"
            )


def cached(path: Path | None, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """`compute()`, kept in `path` (tensors, written atomically) for the next run: the split and the subset
    are drawn by scikit-learn, whose import costs a run about a second; once drawn they are files."""
    if path is not None and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged cache file is drawn again
            path.unlink(missing_ok=True)
    result = compute()
    if path is not None:
        from distillab.checkpoint import save_atomic

        save_atomic(result, path)
    return result


def _cache_file(cache_dir: str | None, *parts: object) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "data" / ("digits-" + "-".join(map(str, parts)) + ".pt")


def _split(val_fraction: float, split_seed: int, cache_dir: str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images scaled to [0, 1] and split, stratified by class, with a fixed seed. Both splits keep at
    least one image of each of the 10 classes."""
    checks.number("val_fraction", val_fraction, at_least=10 / 1797, at_most=1 - 10 / 1797)
    checks.seed("split_seed", split_seed)
    checks.optional_path("cache_dir", cache_dir)
    split = cached(_cache_file(cache_dir, val_fraction, split_seed), lambda: _draw_split(val_fraction, split_seed))
    return split["x_train"], split["y_train"], split["x_val"], split["y_val"]


def _draw_split(val_fraction: float, split_seed: int) -> dict[str, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=val_fraction, random_state=split_seed, stratify=digits.target
    )
    as_images = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731  (N, 1, 8, 8)
    return {
        "x_train": as_images(x_train),
        "y_train": torch.from_numpy(y_train),
        "x_val": as_images(x_val),
        "y_val": torch.from_numpy(y_val),
    }


def _subset(
    y_train: Tensor, train_subset: Subset, split_seed: int, cache_dir: str | None, val_fraction: float
) -> Tensor | None:
    if train_subset is None:
        return None
    path = _cache_file(cache_dir, val_fraction, split_seed, "subset", train_subset)

    def draw() -> dict[str, Tensor]:
        keep = stratified_indices(y_train.numpy(), train_subset, split_seed)
        return {"keep": torch.arange(len(y_train)) if keep is None else torch.from_numpy(keep)}

    return cached(path, draw)["keep"]


def digits(
    batch_size: int,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int = 10,
    train_subset: Subset = None,
    cache_dir: str | None = None,
    augment: BatchTransform | None = None,
) -> DataModule:
    """Classification. Normalised with the mean and std of the (whole) train split, also when `train_subset`
    keeps a part of it (so a teacher trained on the whole split sees inputs scaled as the student's).
    `augment`: a batch transform of the training inputs (the `data/augment` group), none by default."""
    _check_facts(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    checks.integer("batch_size", batch_size, at_least=1)
    checks.augment(augment)
    x_train, y_train, x_val, y_val = _split(val_fraction, split_seed, cache_dir)
    mean, std = x_train.mean(), x_train.std()
    check_subset(train_subset)
    keep = _subset(y_train, train_subset, split_seed, cache_dir, val_fraction)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return DataModule(
        train=TensorLoader(x_train, y_train, batch_size, shuffle=True, seed=seed, transform=augment),
        val=TensorLoader(x_val, y_val, batch_size),
        in_channels=1,
        image_size=8,
        num_classes=10,
        random_inputs=augment is not None,
        views_per_sample=getattr(augment, "copies", 1),
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
    cache_dir: str | None = None,
) -> DataModule:
    """Reconstruction: noisy digit in, clean digit (pixels in [0, 1]) out.

    Training inputs get fresh noise every batch; validation noise is drawn once from `split_seed`, so
    every epoch and every run is scored on the same noisy images.
    """
    _check_facts(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    checks.integer("batch_size", batch_size, at_least=1)
    checks.number("noise_std", noise_std, at_least=0, at_most=100)
    x_train, _, x_val, _ = _split(val_fraction, split_seed, cache_dir)
    noisy_val = GaussianNoise(noise_std)(x_val, torch.Generator().manual_seed(split_seed))
    return DataModule(
        train=TensorLoader(x_train, x_train, batch_size, shuffle=True, seed=seed, transform=GaussianNoise(noise_std)),
        val=TensorLoader(noisy_val, x_val, batch_size),
        random_inputs=noise_std > 0,
        **_FACTS,
    )
