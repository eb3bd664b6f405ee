"""Cached teacher outputs: the same values the teacher computes, one teacher pass instead of one per step,
and refused where the inputs change between epochs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from distillab.data import DataModule, GaussianNoise, TensorLoader
from distillab.errors import ConfigError
from distillab.models.tutorial import DeepNN
from distillab.taps import FeatureTaps
from distillab.teacher_outputs import build_teacher_cache, wants_cache
from tests.conftest import run_in, scalars


def tiny_data(transform=None, random_inputs: bool = False, n: int = 20) -> DataModule:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    train = TensorLoader(x, y, batch_size=6, shuffle=True, transform=transform)
    return DataModule(
        train=train, val=TensorLoader(x, y, 6), in_channels=1, image_size=8, num_classes=10, random_inputs=random_inputs
    )


def test_cached_logits_and_features_equal_what_the_teacher_computes_for_each_shuffled_batch() -> None:
    torch.manual_seed(0)
    data, teacher = tiny_data(), DeepNN(num_classes=10, in_channels=1, image_size=8).eval()
    taps = FeatureTaps(teacher, ["features"])
    cache = build_teacher_cache(100, data, [teacher], [taps], required=True)
    assert cache is not None
    for x, _, index in data.train:  # shuffled batches, looked up by their sample indices
        (cached,) = cache.lookup(index)
        with torch.no_grad():
            logits = teacher(x)
        assert torch.allclose(cached.out, logits, atol=1e-5)
        assert torch.allclose(cached.features["features"], taps.pop()["features"], atol=1e-5)


def test_inputs_that_change_every_epoch_turn_auto_off_and_refuse_true(caplog) -> None:
    teacher = [DeepNN(num_classes=10, in_channels=1, image_size=8)]
    noisy = tiny_data(transform=GaussianNoise(0.1), random_inputs=True)
    with caplog.at_level(logging.INFO):
        assert wants_cache("auto", noisy, teacher) is False
    assert "training inputs change every epoch" in caplog.text
    with pytest.raises(
        ConfigError, match=r"teacher.cache_outputs=true cannot be used here: the training inputs change every epoch"
    ):
        wants_cache(True, noisy, teacher)
    with pytest.raises(ConfigError, match="teacher.cache_outputs='sometimes' is not valid: use auto, true or false."):
        wants_cache("sometimes", tiny_data(), teacher)
    assert wants_cache("auto", tiny_data(), teacher) and not wants_cache("auto", tiny_data(), [])


def test_the_memory_budget_is_respected() -> None:
    data, teacher = tiny_data(n=200), DeepNN(num_classes=10, in_channels=1, image_size=8).eval()
    taps = FeatureTaps(teacher, ["features"])  # 32 x 2 x 2 floats + 10 logits per sample: 208 * 4 bytes * 200 = 0.16 MB
    assert build_teacher_cache(0.1, data, [teacher], [taps]) is None  # auto: falls back to running the teacher
    with pytest.raises(ConfigError, match=r"needs 0 MB but teacher.cache_budget_mb=0.1"):
        build_teacher_cache(0.1, data, [teacher], [taps], required=True)
    cache = build_teacher_cache(0.2, data, [teacher], [taps])
    assert (
        cache is not None
        and cache.outputs[0].out.shape == (200, 10)
        and cache.outputs[0].features["features"].shape == (200, 32, 2, 2)
    )


@pytest.mark.parametrize("loss", ["kd", "fitnet"])
def test_a_run_with_the_cache_runs_the_teacher_once_per_sample_and_learns_the_same(
    loss: str, tmp_path: Path, monkeypatch
) -> None:
    calls = []
    original = DeepNN.forward
    monkeypatch.setattr(DeepNN, "forward", lambda self, x: calls.append(len(x)) or original(self, x))
    run_in(tmp_path / "warm-up", f"loss={loss}")  # trains the shared teacher if no earlier test did
    calls.clear()
    cached, _ = run_in(tmp_path / "a", f"loss={loss}", "teacher.cache_outputs=true")
    # the dry run on one batch (64), the teacher's validation accuracy (360), one pass over the 1437
    # training images, then nothing
    assert sum(calls) == 64 + 360 + 1437
    calls.clear()
    plain, _ = run_in(tmp_path / "b", f"loss={loss}", "teacher.cache_outputs=false")
    assert sum(calls) == 64 + 360 + 2 * 1437  # the teacher on every step of both epochs
    assert cached["best_val_acc"] == pytest.approx(plain["best_val_acc"], abs=0.6)  # at most two of 360 images differ


# Per augmented view: random crop (padding 4) and flip have 9 x 9 offsets x 2 flips = 162 views of each sample.


def cropped_data(n: int, batch_size: int) -> DataModule:
    from distillab.data.augment import CropFlip

    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))
    train = TensorLoader(x, y, batch_size, shuffle=True, transform=CropFlip(4))
    return DataModule(train=train, val=TensorLoader(x, y, batch_size), in_channels=1, image_size=8, num_classes=10)


def test_every_view_is_the_augmentation_itself_and_its_cached_row_the_teachers_output_on_it() -> None:
    torch.manual_seed(0)
    data = cropped_data(10, 4)
    loader: TensorLoader = data.train  # type: ignore[assignment]
    teacher = DeepNN(num_classes=10, in_channels=1, image_size=8).eval()
    cache = build_teacher_cache(100, data, [teacher], [FeatureTaps(teacher, [])], required=True)
    assert cache is not None and cache.views == 162 == loader.views and cache.outputs[0].out.shape == (10 * 162, 10)
    seen = set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for xb, _, index, views in loader:  # the batch as training sees it, with each sample's view number
            for i, v in zip(index.tolist(), views.tolist()):
                assert torch.equal(
                    loader.render(torch.tensor([i]), torch.tensor([v]))[0], xb[(index == i).nonzero()[0, 0]]
                )
            (looked_up,) = cache.lookup(index, views)
            with torch.no_grad():
                assert torch.allclose(looked_up.out, teacher(xb), atol=1e-5)
            seen.update(views.tolist())
    assert len(seen) > 20  # many views were drawn, each looked up exactly


def test_views_need_logits_alone_and_a_budget_that_holds_them() -> None:
    data = cropped_data(20, 8)
    teacher = [DeepNN(num_classes=10, in_channels=1, image_size=8).eval()]
    assert wants_cache("auto", data, teacher) and not wants_cache("auto", data, teacher, features=True)
    with pytest.raises(ConfigError, match="reads the teachers' features, which are not cached per augmented view"):
        wants_cache(True, data, teacher, features=True)
    # 20 x 162 x 10 logits: 0.124 MB in float32, 0.062 MB in float16
    taps = [FeatureTaps(teacher[0], [])]
    exact = build_teacher_cache(0.15, data, teacher, taps)
    assert exact is not None and exact.outputs[0].out.dtype == torch.float32
    half = build_teacher_cache(0.1, data, teacher, taps)
    assert half is not None and half.outputs[0].out.dtype == torch.float16
    index, views = torch.arange(20), torch.randint(0, 162, (20,))
    rounded, logits = half.lookup(index, views)[0].out, exact.lookup(index, views)[0].out
    assert rounded.dtype == torch.float32 and torch.allclose(rounded, logits, rtol=2**-11, atol=1e-6)  # float16
    assert build_teacher_cache(0.05, data, teacher, taps) is None
    with pytest.raises(ConfigError, match="needs 0 MB for the teacher's logits on all 162 views of 20 samples"):
        build_teacher_cache(0.05, data, teacher, taps, required=True)


@pytest.mark.slow
def test_a_run_with_the_view_cache_gives_the_losses_of_the_teacher_run_every_step(tmp_path: Path, caplog) -> None:
    common = ["data=synthetic", "data/augment=crop_flip", "data.num_train=96", "data.batch_size=32",
              "data.image_size=16",
              "loss=kd", "model/student=resnet8", "model/teacher=resnet8", "trainer.max_epochs=2",
              "trainer.log_every=1", "teacher.max_epochs=1"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        _, cached = run_in(tmp_path / "cached", *common, "teacher.cache_outputs=true")
    assert "teacher logits cached per augmented view: 162 views (crop offsets x flips) x 96 samples" in caplog.text
    assert "of float32 on cpu" in caplog.text
    _, live = run_in(tmp_path / "live", *common, "teacher.cache_outputs=false")
    a, b = scalars(cached), scalars(live)
    for tag in ("loss/kd", "loss/ce", "loss/total"):
        assert len(a[tag]) == 6 and a[tag] == pytest.approx(b[tag], rel=1e-5), tag


def test_the_view_cache_is_built_when_it_pays_kept_and_found_again_by_its_content(tmp_path: Path, caplog) -> None:
    data = cropped_data(12, 4)
    teacher = DeepNN(num_classes=10, in_channels=1, image_size=8).eval()
    taps, store = [FeatureTaps(teacher, [])], tmp_path / "teacher_views"
    caplog.set_level(logging.INFO)
    assert build_teacher_cache(10, data, [teacher], taps, epochs=2, store=store) is None
    assert "2 epochs see each sample 2 times, fewer than its 162 views" in caplog.text and not store.exists()
    built = build_teacher_cache(10, data, [teacher], taps, epochs=240, store=store)
    (kept,) = store.glob("*.pt")
    assert built is not None and f"kept in {kept}" in caplog.text
    again = build_teacher_cache(10, data, [teacher], taps, epochs=2, store=store)  # a short run reuses it
    assert again is not None and torch.equal(again.outputs[0].out, built.outputs[0].out)
    assert f"loaded from {kept}" in caplog.text
    with torch.no_grad():
        teacher.classifier[-1].bias.add_(1.0)  # other weights: another file
    assert build_teacher_cache(10, data, [teacher], taps, epochs=240, store=store) is not None
    assert len(list(store.glob("*.pt"))) == 2


def test_a_kept_view_cache_is_reused_only_in_the_precision_the_budget_gives(tmp_path: Path) -> None:
    data, teacher = cropped_data(12, 4), DeepNN(num_classes=10, in_channels=1, image_size=8).eval()
    taps, store = [FeatureTaps(teacher, [])], tmp_path / "teacher_views"
    # 12 x 162 x 10 logits: 0.074 MB in float32, 0.037 MB in float16
    half = build_teacher_cache(0.05, data, [teacher], taps, epochs=240, store=store)
    assert half is not None and half.outputs[0].out.dtype == torch.float16
    full = build_teacher_cache(10, data, [teacher], taps, epochs=2, store=store)  # fits float32: not the half file
    assert full is None  # (a short run builds nothing, and the float16 file is not passed off as float32)
    full = build_teacher_cache(10, data, [teacher], taps, epochs=240, store=store)
    assert full is not None and full.outputs[0].out.dtype == torch.float32
    assert sorted(p.name.rsplit("-", 1)[1] for p in store.glob("*.pt")) == ["float16.pt", "float32.pt"]
