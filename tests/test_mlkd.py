"""MLKD (loss=mlkd) and the weak-and-strong views it distils on (data/augment=weak_and_strong)."""

from __future__ import annotations

import pytest
import torch

from distillab.data.augment import CropFlip
from distillab.data.memory import Compose, TensorLoader
from distillab.data.strong import CUTOUT_FILL, RandAugmentCutout, WeakAndStrong
from distillab.errors import ConfigError
from distillab.losses import MLKD
from distillab.objective import ModelOutput, Outputs
from tests.loss_references import reference


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("gap", [0.0, 30.0, 500.0])
def test_mlkd_on_two_views_matches_the_authors_loss_written_out_in_float64(gap: float, standardize: bool) -> None:
    """Three images in a weak and a strong view (six rows, weak first), the label ahead by 0, 30 or 500: the value
    and the student's gradient are the authors' KD_ours (`tests/loss_references.py`, numpy's percentile for the
    masks, their strong part reading the weak logits at T 2 and 6)."""
    g = torch.Generator().manual_seed(int(gap) + standardize)
    targets = torch.tensor([0, 3, 7, 0, 3, 7])
    student = torch.randn(6, 10, generator=g, dtype=torch.float64)
    student[torch.arange(6), targets] += gap
    student.requires_grad_()
    teacher = 3 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    o = Outputs(inputs=teacher, targets=targets, student=ModelOutput(student, {}), teachers=[ModelOutput(teacher, {})])
    term = MLKD(views=2, logit_standardization=standardize)
    value, expected = term(o), reference(term, o)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9)
    (grad,) = torch.autograd.grad(value, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    assert torch.isfinite(grad).all() and torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-12)
    one_view = Outputs(teacher[:3], targets[:3], ModelOutput(student[:3], {}), [ModelOutput(teacher[:3], {})])
    assert MLKD(views=1)(one_view).item() != pytest.approx(value.item())  # the strong half is read


def test_weak_and_strong_views_double_the_batch_with_targets_and_indices_repeated() -> None:
    """The loader stacks a weak view (the same crop and flip `CropFlip` draws first from the epoch's generator) and a
    strong view of each sample, and repeats targets and indices to match; an epoch's views depend only on
    (seed, epoch)."""
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(6)
    loader = TensorLoader(x, y, batch_size=4, shuffle=True, seed=3, transform=Compose(WeakAndStrong()))
    first = next(iter(loader))
    inputs, targets, index = first
    assert inputs.shape == (8, 3, 8, 8) and inputs.dtype == torch.uint8
    assert (
        torch.equal(targets[:4], targets[4:]) and torch.equal(index[:4], index[4:]) and torch.equal(y[index], targets)
    )
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 0)
    order = torch.randperm(6, generator=generator)[:4]
    assert torch.equal(inputs[:4], CropFlip(4)(x[order], generator))  # the weak view, from the same draws
    assert not torch.equal(inputs[4:], inputs[:4])
    again = next(iter(TensorLoader(x, y, batch_size=4, shuffle=True, seed=3, transform=Compose(WeakAndStrong()))))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_cutout_paints_the_authors_grey_square_and_nothing_else() -> None:
    """With no operation drawn (n=0), the strong view is the image with one grey square (the authors' (125, 123,
    114)) of side at most half the width; float images come back in their own range."""
    x = torch.full((1, 3, 16, 16), 7, dtype=torch.uint8)
    out = RandAugmentCutout(n=0)(x, torch.Generator().manual_seed(5))
    painted = (out[0] != 7).any(0)
    assert painted.any() and painted.sum() <= 9 * 9
    assert all(out[0, c][painted].eq(v).all() for c, v in enumerate(CUTOUT_FILL))
    rows, cols = painted.nonzero().T
    assert painted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one filled rectangle
    floats = torch.rand(2, 1, 8, 8) * 4 - 2
    back = RandAugmentCutout(n=2)(floats, torch.Generator().manual_seed(1))
    assert back.dtype == torch.float32 and back.min() >= floats.min() - 1e-6 and back.max() <= floats.max() + 1e-6


def test_views_that_do_not_match_the_data_are_refused_and_teachers_train_on_one_view(tmp_path) -> None:
    from types import SimpleNamespace

    from distillab.config import compose
    from distillab.teacher import cache_key, training_config

    with pytest.raises(
        ConfigError,
        match=r"^views=2 is not valid \(it is MLKD's number of views of each sample, and the data gives 1\)",
    ):
        MLKD(views=2).bind_data(SimpleNamespace(views_per_sample=1))
    MLKD(views=2).bind_data(SimpleNamespace(views_per_sample=2))
    for given in (1, 2):  # views: null (loss=mlkd's default) reads the data's
        term = MLKD()
        term.bind_data(SimpleNamespace(views_per_sample=given))
        assert term.views == given
    with pytest.raises(ConfigError, match=r"^views=None is not valid .*the data gives 3\)"):
        MLKD().bind_data(SimpleNamespace(views_per_sample=3))
    cfg = compose(["experiment=cifar100/resnet32x4_resnet8x4/mlkd"])
    assert cfg.data.augment._target_ == "distillab.data.strong.WeakAndStrong" and cfg.loss.views == 2
    plain = compose(["experiment=cifar100/resnet32x4_resnet8x4/kd"])  # crop and flip, one view
    teacher = training_config(cfg, cfg.model.teacher, tmp_path)
    assert teacher.data.augment == {"_target_": "distillab.data.augment.CropFlip", "padding": 4}  # one view
    assert cache_key(teacher) == cache_key(training_config(plain, plain.model.teacher, tmp_path))  # KD's teacher
    with pytest.raises(ConfigError, match=r"augment='WeakAndStrong' is not valid: use crop_flip for torchvision's"):
        from distillab.data.datasets import dataset_data

        dataset_data(None, None, 8, 3, 32, 10, augment=WeakAndStrong(), in_memory=False)
