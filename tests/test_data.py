from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image

from distillab.data.digits import digits, digits_denoising
from distillab.data.memory import DataModule, RandomCropFlip, TensorLoader
from distillab.data.synthetic import synthetic
from distillab.data.vision import torchvision_data
from distillab.errors import ConfigError


def test_digits_is_the_real_bundled_set_split_by_a_fixed_seed() -> None:
    data = digits(batch_size=64, val_fraction=0.2, split_seed=0)
    n_train, n_val = data.train.dataset_size, data.val.dataset_size
    assert n_train + n_val == 1797 and n_val == 360
    assert data.train.inputs.shape[1:] == (1, 8, 8) and (data.in_channels, data.image_size, data.num_classes) == (1, 8, 10)
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
    with pytest.raises(ConfigError, match="data.image_size=32 does not match the digits data"):
        digits(batch_size=8, image_size=32)


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
    full, empty = TensorLoader(torch.ones(3, 1), torch.zeros(3), batch_size=4), TensorLoader(torch.empty(0, 1), torch.empty(0), batch_size=4)
    with pytest.raises(ConfigError, match="The val split of the data is empty"):
        DataModule(train=full, val=empty, in_channels=1, image_size=1, num_classes=2)


def test_denoising_targets_are_clean_and_training_noise_is_fresh_each_epoch() -> None:
    data = digits_denoising(batch_size=2000, noise_std=0.3)
    (noisy0, clean0, index0), = list(data.train)
    assert torch.equal(clean0, data.train.inputs[index0])
    assert 0.25 < (noisy0 - clean0).std().item() < 0.35
    assert clean0.min() >= 0 and clean0.max() <= 1
    data.train.set_epoch(1)
    (noisy1, _, index1), = list(data.train)
    order = torch.argsort(index1)
    assert not torch.allclose(noisy1[order], noisy0[torch.argsort(index0)])
    assert data.random_inputs
    (val_a, _, _), = list(data.val)
    (val_b, _, _), = list(data.val)
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
    """Stands in for a torchvision dataset class (same constructor, PIL images): CIFAR cannot be downloaded here."""

    def __init__(self, root: str, train: bool, download: bool, transform) -> None:
        generator = torch.Generator().manual_seed(int(train))
        self.images = torch.randint(0, 256, (10 if train else 6, 8, 8, 3), dtype=torch.uint8, generator=generator)
        self.transform = transform
        self.targets = [i % 3 for i in range(len(self.images))]  # as torchvision's CIFAR/MNIST classes have

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i].numpy())), self.targets[i]


@pytest.mark.parametrize("augment", [False, True])
def test_torchvision_sets_without_augmentation_are_decoded_once_into_tensors(monkeypatch, augment: bool) -> None:
    monkeypatch.setattr(torchvision.datasets, "TinyImages", TinyImages, raising=False)
    data = torchvision_data("TinyImages", "unused", batch_size=4, normalize={"mean": [0.5] * 3, "std": [0.25] * 3},
                            in_channels=3, image_size=8, num_classes=3, augment=augment, num_workers=0)
    assert isinstance(data.val, TensorLoader) and data.random_inputs is augment
    assert isinstance(data.train, TensorLoader) is not augment  # augmented: a DataLoader re-crops every epoch
    # the tensors are what the per-item transform gives: ToTensor (/255, HWC -> CHW), then (x - 0.5) / 0.25
    raw = TinyImages("unused", False, False, lambda img: img).images
    expected = (raw.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(data.val.inputs, expected)
    assert data.val.targets.tolist() == [i % 3 for i in range(6)]
    # train batches carry each sample's index (per-sample state such as CRD's memory bank), also from workers
    assert data.train_targets.tolist() == [i % 3 for i in range(10)]
    seen = [(y, index) for _, y, index in data.train]
    assert sorted(torch.cat([index for _, index in seen]).tolist()) == list(range(10))
    assert all(y.tolist() == (index % 3).tolist() for y, index in seen)


def test_random_crop_flip_shifts_and_mirrors_each_sample_within_its_padding() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1  # no zeros: padding shows as 0
    out = RandomCropFlip(padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, [2] * 4)
    for i in range(2):  # each output is one of the 5x5 crops of its own padded image, possibly mirrored
        crops = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    many = RandomCropFlip(2)(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(1))
    assert len({tuple(m.flatten().tolist()) for m in many[::2]}) > 10  # offsets and flips vary per sample


def test_synthetic_augment_changes_train_inputs_each_epoch_and_says_so() -> None:
    data = synthetic(batch_size=8, num_train=8, num_val=8, augment=True)
    assert data.random_inputs and not synthetic(batch_size=8, num_train=8, num_val=8).random_inputs
    epochs = []
    for epoch in range(2):
        data.train.set_epoch(epoch)
        x, _, index = next(iter(data.train))
        epochs.append(x[index.argsort()])
    assert not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize(("subset", "size"), [(100, 100), (0.1, 144)])
def test_train_subset_is_stratified_fixed_by_the_split_seed_and_leaves_validation_whole(subset, size) -> None:
    from collections import Counter

    from distillab.config import compose, instantiate

    def build(*overrides: str):
        return instantiate(compose([f"data.train_subset={subset}", *overrides]).data)

    full, part = instantiate(compose([]).data), build()
    counts, full_counts = Counter(part.train.targets.tolist()), Counter(full.train.targets.tolist())
    assert len(part.train.inputs) == size and set(counts) == set(full_counts)
    for label, n in counts.items():  # each class in proportion to its share of the whole split
        assert abs(n - size * full_counts[label] / len(full.train.inputs)) <= 1
    assert torch.equal(part.val.inputs, full.val.inputs)  # scored on the same images
    assert torch.equal(build().train.inputs, part.train.inputs)  # the same subset every run
    other = build("data.split_seed=1").train.inputs
    assert other.shape != part.train.inputs.shape or not torch.equal(other, part.train.inputs)  # another seed, another draw
    rows = {tuple(x.flatten().tolist()) for x in full.train.inputs}
    assert all(tuple(x.flatten().tolist()) in rows for x in part.train.inputs)  # samples of the train split, same normalisation


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "0.0", "true", "abc"])
def test_a_bad_train_subset_is_one_sentence(bad: str) -> None:
    from distillab.config import compose, instantiate

    with pytest.raises(ConfigError, match=r"data\.train_subset=.* is not valid: use a number of training samples"):
        instantiate(compose([f"data.train_subset={bad}"]).data)


def test_a_train_subset_smaller_than_the_classes_is_refused() -> None:
    from distillab.config import compose, instantiate

    with pytest.raises(ConfigError, match=r"data\.train_subset=5 keeps 5 of 1437 training samples, fewer than their 10 classes"):
        instantiate(compose(["data.train_subset=5"]).data)
