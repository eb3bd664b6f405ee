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
from tests.conftest import run_in


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
