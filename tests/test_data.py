from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from distillab.data.augment import CropFlip
from distillab.data.datasets import dataset_data
from distillab.data.digits import digits, digits_denoising
from distillab.data.memory import TensorLoader
from distillab.data.module import DataModule
from distillab.data.synthetic import synthetic
from distillab.errors import ConfigError, InvalidArgument
from distillab.instantiate import instantiate


def test_digits_is_the_real_bundled_set_split_by_a_fixed_seed() -> None:
    data = digits(batch_size=64, val_fraction=0.2, split_seed=0)
    n_train, n_val = data.train.dataset_size, data.val.dataset_size
    assert n_train + n_val == 1797 and n_val == 360
    assert data.train.inputs.shape[1:] == (1, 8, 8) and (data.in_channels, data.image_size, data.num_classes) == (
        1,
        8,
        10,
    )
    # stratified: every class appears in the validation split in about its share
    counts = torch.bincount(data.val.targets, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    again = digits(batch_size=64, val_fraction=0.2, split_seed=0)
    assert torch.equal(again.val.inputs, data.val.inputs)
    other = digits(batch_size=64, val_fraction=0.2, split_seed=1)
    assert not torch.equal(other.val.inputs, data.val.inputs)


def test_digits_normalisation_uses_the_train_split_only() -> None:
    data = digits(batch_size=64)
    train = data.train.inputs
    assert abs(train.mean().item()) < 1e-5 and abs(train.std().item() - 1) < 1e-4
    # the validation split is transformed with the train statistics, so it is not exactly standardised
    assert abs(data.val.inputs.mean().item()) > 1e-4


def test_digits_refuses_shape_facts_that_do_not_match() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"^image_size=32 is not valid \(it does not match the digits data, whose image_size is 8\): use 8\.$",
    ):
        digits(batch_size=8, image_size=32)
    with pytest.raises(ConfigError, match=r"^data\.image_size=32 is not valid \(it does not match the digits data"):
        instantiate({"_target_": "distillab.data.digits.digits", "batch_size": 8, "image_size": 32}, key="data")


def test_tensor_loader_covers_every_sample_once_per_epoch_in_a_seeded_order() -> None:
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    epoch0 = torch.cat([b[2] for b in loader])
    assert sorted(epoch0.tolist()) == list(range(10))
    assert torch.equal(torch.cat([b[2] for b in loader]), epoch0)  # same epoch -> same order
    loader.set_epoch(1)
    epoch1 = torch.cat([b[2] for b in loader])
    assert not torch.equal(epoch1, epoch0)
    for xb, yb, index in loader:  # inputs and targets stay paired
        assert torch.equal(xb.squeeze(1).long(), yb) and torch.equal(index, yb)
    assert len(TensorLoader(x, y, batch_size=4, drop_last=True)) == 2


def test_an_empty_split_is_refused_naming_it() -> None:
    full, empty = (
        TensorLoader(torch.ones(3, 1), torch.zeros(3), batch_size=4),
        TensorLoader(torch.empty(0, 1), torch.empty(0), batch_size=4),
    )
    with pytest.raises(ConfigError, match="The val split of the data is empty"):
        DataModule(train=full, val=empty, in_channels=1, image_size=1, num_classes=2)


def test_denoising_targets_are_clean_and_training_noise_is_fresh_each_epoch() -> None:
    data = digits_denoising(batch_size=2000, noise_std=0.3)
    ((noisy0, clean0, index0),) = list(data.train)
    assert torch.equal(clean0, data.train.inputs[index0])
    assert 0.25 < (noisy0 - clean0).std().item() < 0.35
    assert clean0.min() >= 0 and clean0.max() <= 1
    data.train.set_epoch(1)
    ((noisy1, _, index1),) = list(data.train)
    order = torch.argsort(index1)
    assert not torch.allclose(noisy1[order], noisy0[torch.argsort(index0)])
    assert data.random_inputs
    ((val_a, _, _),) = list(data.val)
    ((val_b, _, _),) = list(data.val)
    assert torch.equal(val_a, val_b)  # validation noise is drawn once


def test_synthetic_has_the_requested_shape_and_learnable_labels() -> None:
    data = synthetic(batch_size=16, num_train=64, num_val=32, in_channels=2, image_size=12, num_classes=5, noise=0.1)
    x, y, _ = next(iter(data.train))
    assert x.shape == (16, 2, 12, 12) and y.max() < 5
    # samples of one class are closer to each other than to other classes (low noise)
    inputs, targets = data.train.inputs.flatten(1), data.train.targets
    same = torch.cdist(inputs[targets == targets[0]], inputs[targets == targets[0]]).mean()
    other = torch.cdist(inputs[targets == targets[0]], inputs[targets != targets[0]]).mean()
    assert same < other


class TinyImages:
    """Stands in for a torchvision dataset class (its constructor, PIL images): CIFAR cannot be downloaded here.
    `stored=True` keeps the images in `data` (N x H x W x C uint8) as torchvision's CIFAR does."""

    def __init__(self, root: str, train: bool, download: bool, transform=None, stored: bool = False) -> None:
        generator = torch.Generator().manual_seed(int(train))
        self.images = torch.randint(0, 256, (10 if train else 6, 8, 8, 3), dtype=torch.uint8, generator=generator)
        if stored:
            self.data = self.images.numpy()
        self.transform = transform or (lambda img: img)
        self.targets = [i % 3 for i in range(len(self.images))]  # as torchvision's CIFAR/MNIST classes have

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i].numpy())), self.targets[i]


def tiny_data(augment: bool = False, augment_on=None, stored: bool = False, **options):
    """A small dataset class through `dataset_data`; `augment`: the recipe's crop and flip (data/augment=crop_flip)."""
    factory = functools.partial(TinyImages, "unused", download=False, stored=stored)
    return dataset_data(
        functools.partial(factory, train=True),
        functools.partial(factory, train=False),
        batch_size=4,
        normalize={"mean": [0.5] * 3, "std": [0.25] * 3},
        in_channels=3,
        image_size=8,
        num_classes=3,
        augment=CropFlip(4) if augment else None,
        augment_on=augment_on,
        num_workers=0,
        **options,
    )


def inputs_of(loader) -> torch.Tensor:
    return torch.cat([batch[0] for batch in loader])


@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize(("augment", "augment_on"), [(False, None), (True, None), (True, "workers")])
def test_a_dataset_class_is_held_in_memory_and_normalised_as_torchvisions_transforms_would(
    augment, augment_on, stored
) -> None:
    data = tiny_data(augment, augment_on, stored)
    assert isinstance(data.val, TensorLoader) and data.random_inputs is augment
    assert isinstance(data.train, TensorLoader) is (
        augment_on != "workers"
    )  # workers: a DataLoader re-crops every epoch
    assert data.val.inputs.dtype == torch.uint8  # held as the images are, normalised per batch
    # the batches are what the per-item transform gives: ToTensor (/255, HWC -> CHW), then (x - 0.5) / 0.25
    raw = TinyImages("unused", False, False).images
    expected = (raw.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(inputs_of(data.val), expected, rtol=0, atol=0)
    assert data.val.targets.tolist() == [i % 3 for i in range(6)]
    # train batches carry each sample's index (per-sample state such as CRD's memory bank), also from workers
    assert data.train_targets.tolist() == [i % 3 for i in range(10)]
    seen = [(batch[1], batch[2]) for batch in data.train]  # (in memory and cropped: a 4th, each sample's view)
    assert sorted(torch.cat([index for _, index in seen]).tolist()) == list(range(10))
    assert all(y.tolist() == (index % 3).tolist() for y, index in seen)


class OwnDataset(torch.utils.data.Dataset):
    """A user's own dataset: no `transform` argument, float tensors, labels under `labels`, a `split=` key."""

    def __init__(self, split: str, size: int = 12) -> None:
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.x = torch.randn(size, 2, 5, 5, generator=generator)
        self.labels = np.arange(size) % 4

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.labels[i])


def test_your_own_dataset_class_works_without_code_edits(tmp_path) -> None:
    from distillab.config import compose
    from distillab.instantiate import instantiate

    cfg = compose(["data=synthetic", f"paths.output_dir={tmp_path}"])
    node = {
        "_target_": "distillab.data.datasets.dataset_data",
        "batch_size": 5,
        "in_channels": 2,
        "image_size": 5,
        "num_classes": 4,
        "num_workers": 0,
        "train_subset": 8,
        "train": {"_target_": "tests.test_data.OwnDataset", "_partial_": True, "split": "train"},
        "val": {"_target_": "tests.test_data.OwnDataset", "_partial_": True, "split": "test", "size": 7},
    }
    data = instantiate(node, key="data")
    assert cfg is not None and data.train.dataset_size == 8 and data.val.dataset_size == 7
    assert sorted(torch.bincount(data.train_targets).tolist()) == [
        2,
        2,
        2,
        2,
    ]  # stratified subset, labels from `labels`
    torch.testing.assert_close(inputs_of(data.val), OwnDataset("test", 7).x)  # float inputs as they are (no normalize)


def test_crop_flip_offsets_and_flips_are_uniform_and_each_crop_is_torchvisions() -> None:
    """81 offsets x 2 flips, 16200 draws: a chi-square test against uniform; then each output against
    torchvision's crop and flip of the zero-padded image at the offset it came from."""
    from scipy.stats import chisquare
    from torchvision.transforms import functional as TF

    n, size, p = 16200, 6, 4
    image = (
        torch.arange(size * size, dtype=torch.int32).reshape(1, 1, size, size) + 1
    )  # each pixel says where it came from
    transform = CropFlip(padding=p)
    offsets, flips = transform.draw(n, torch.Generator().manual_seed(0))
    out = transform.apply(image.expand(n, 1, size, size), offsets, flips)
    cells = torch.bincount(offsets[:, 0] * 9 * 2 + offsets[:, 1] * 2 + flips.long(), minlength=162)
    assert chisquare(cells.numpy()).pvalue > 1e-3 and (cells > 0).all()
    padded = TF.pad(image[0], [p, p, p, p])
    for k in range(0, n, 97):
        dy, dx = offsets[k].tolist()
        expected = TF.crop(padded, dy, dx, size, size)
        expected = TF.hflip(expected) if flips[k] else expected
        assert torch.equal(out[k], expected), (dy, dx, bool(flips[k]))


def test_device_augmentation_replays_the_same_draws_for_the_same_seed_and_epoch() -> None:
    a, b = tiny_data(augment=True), tiny_data(augment=True)
    for loader in (a.train, b.train):
        loader.set_epoch(3)
    assert torch.equal(inputs_of(a.train), inputs_of(b.train))
    b.train.set_epoch(4)
    assert not torch.equal(inputs_of(a.train), inputs_of(b.train))


def test_augment_on_device_needs_the_dataset_in_memory() -> None:
    with pytest.raises(ConfigError, match="augment_on='device' is not valid"):
        tiny_data(augment=True, augment_on="device", in_memory=False)


def test_synthetic_augment_changes_train_inputs_each_epoch_and_says_so() -> None:
    data = synthetic(batch_size=8, num_train=8, num_val=8, augment=CropFlip(4))
    assert data.random_inputs and not synthetic(batch_size=8, num_train=8, num_val=8).random_inputs
    epochs = []
    for epoch in range(2):
        data.train.set_epoch(epoch)
        x, _, index, views = next(iter(data.train))  # with each sample's view (offset and flip) number
        assert views.shape == index.shape and views.min() >= 0 and views.max() < 162
        epochs.append(x[index.argsort()])
    assert not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize(("subset", "size"), [(100, 100), (0.1, 144)])
def test_train_subset_is_stratified_fixed_by_the_split_seed_and_leaves_validation_whole(subset, size) -> None:
    from collections import Counter

    from distillab.config import compose
    from distillab.instantiate import instantiate

    def build(*overrides: str):
        return instantiate(compose(["~experiment", f"data.train_subset={subset}", *overrides]).data)

    full, part = instantiate(compose(["~experiment"]).data), build()
    counts, full_counts = Counter(part.train.targets.tolist()), Counter(full.train.targets.tolist())
    assert len(part.train.inputs) == size and set(counts) == set(full_counts)
    for label, n in counts.items():  # each class in proportion to its share of the whole split
        assert abs(n - size * full_counts[label] / len(full.train.inputs)) <= 1
    assert torch.equal(part.val.inputs, full.val.inputs)  # scored on the same images
    assert torch.equal(build().train.inputs, part.train.inputs)  # the same subset every run
    other = build("data.split_seed=1").train.inputs
    assert other.shape != part.train.inputs.shape or not torch.equal(
        other, part.train.inputs
    )  # another seed, another draw
    rows = {tuple(x.flatten().tolist()) for x in full.train.inputs}
    assert all(
        tuple(x.flatten().tolist()) in rows for x in part.train.inputs
    )  # samples of the train split, same normalisation


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "0.0", "true", "abc"])
def test_a_bad_train_subset_is_one_sentence(bad: str) -> None:
    from distillab.config import compose
    from distillab.instantiate import instantiate

    with pytest.raises(ConfigError, match=r"data\.train_subset=.* is not valid: use a number of training samples"):
        instantiate(compose([f"data.train_subset={bad}"]).data, key="data")


def test_a_train_subset_smaller_than_the_classes_is_refused() -> None:
    from distillab.config import compose
    from distillab.instantiate import instantiate

    with pytest.raises(
        ConfigError,
        match=r"data\.train_subset=5 is not valid \(it keeps 5 of 1437 training samples, fewer than their 10 classes, "
        r"and a stratified subset needs at least one sample per class\): use at least 10 samples",
    ):
        instantiate(compose(["data.train_subset=5"]).data, key="data")
