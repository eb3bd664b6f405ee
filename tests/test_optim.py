from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillab.config import compose
from distillab.optim import build_optimization


def optimization(tmp_path: Path, *overrides: str, steps_per_epoch: int = 4):
    cfg = compose([f"paths.output_dir={tmp_path}", *overrides])
    param = torch.nn.Parameter(torch.ones(3))
    return build_optimization(cfg.optim, [{"params": [param], "name": "model"}], steps_per_epoch), param


def test_linear_warmup_ramps_the_learning_rate_per_step(tmp_path: Path) -> None:
    optim, _ = optimization(tmp_path, "optim.lr=0.1", "optim.warmup_epochs=1", "optim.warmup_start_factor=0.2")
    seen = []
    for _ in range(6):
        seen.append(optim.learning_rates()["lr"])
        optim.optimizer.step()
        optim.after_step()
    assert seen == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])


def test_warmup_multiplies_the_cosine_schedule_from_its_first_epoch(tmp_path: Path) -> None:
    """The documented convention (docs/config.md, timm's default): warm-up ramps each step and multiplies the
    scheduler, which counts epochs from the first; so the rate at the end of a 5-of-10-epoch warm-up is cosine's
    value at epoch 5, lr * (1 + cos(pi * 5 / 10)) / 2 = lr / 2, not lr."""
    import math

    optim, _ = optimization(
        tmp_path,
        "optim.lr=0.1",
        "optim.warmup_epochs=5",
        "optim/scheduler=cosine",
        "trainer.max_epochs=10",
        steps_per_epoch=2,
    )
    seen = []
    for _epoch in range(10):
        for _step in range(2):
            seen.append(optim.learning_rates()["lr"])
            optim.optimizer.step()
            optim.after_step()
        optim.after_epoch({})
    cosine = [(1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)]
    ramp = [min(0.01 + (1 - 0.01) * s / 10, 1.0) for s in range(20)]  # start factor 0.01 over 5 x 2 steps
    assert seen == pytest.approx([0.1 * ramp[s] * cosine[s // 2] for s in range(20)])
    assert seen[10] == pytest.approx(0.05)  # the first step after the warm-up: half of optim.lr


def test_plateau_halves_the_learning_rate_when_the_monitored_metric_stalls(tmp_path: Path) -> None:
    optim, _ = optimization(
        tmp_path, "optim=sgd", "optim/scheduler=plateau", "optim.lr=0.1", "optim.scheduler.patience=1"
    )
    assert optim.monitor == "val/acc"
    lrs = []
    for acc in [50.0, 60.0, 60.0, 60.0, 60.0]:
        optim.after_epoch({"val/acc": acc, "val/loss": 1.0})
        lrs.append(optim.learning_rates()["lr"])
    # mode=max: two epochs without improvement (patience 1) -> x0.5, then the counter restarts
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])


def test_step_scheduler_and_gradient_clipping(tmp_path: Path) -> None:
    optim, param = optimization(
        tmp_path, "optim/scheduler=step", "optim.scheduler.step_size=2", "optim.grad_clip_norm=1.0"
    )
    param.grad = torch.tensor([3.0, 4.0, 0.0])
    optim.clip()
    assert param.grad.norm().item() == pytest.approx(1.0)
    for _ in range(2):
        optim.optimizer.step()
        optim.after_epoch({})
    assert optim.learning_rates()["lr"] == pytest.approx(1e-4)


def test_cosine_reaches_eta_min_at_the_last_epoch(tmp_path: Path) -> None:
    optim, _ = optimization(tmp_path, "optim/scheduler=cosine", "trainer.max_epochs=4")
    for _ in range(4):
        optim.optimizer.step()
        optim.after_epoch({})
    assert optim.learning_rates()["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "no_scheduler",
    ["optim.scheduler.interval=step", "optim.scheduler=null", "~optim.scheduler"],
    ids=["scheduler=none", "null", "removed"],
)
def test_no_scheduler_keeps_the_learning_rate_and_leaves_optimizer_step_unwrapped(
    no_scheduler: str, tmp_path: Path
) -> None:
    """`optim/scheduler=none` (the default), or the key set to null or removed, as a user would write it."""
    optim, param = optimization(tmp_path, "optim.lr=0.1", no_scheduler)
    assert optim.scheduler is None and optim.state_dict()["scheduler"] is None
    # every torch scheduler replaces the instance's `step` with a wrapper (a Python call per step); none here
    assert "step" not in vars(optim.optimizer)
    for _ in range(3):
        param.grad = torch.ones(3)
        optim.optimizer.step()
        optim.after_step()
        optim.after_epoch({})
    assert optim.learning_rates()["lr"] == 0.1
    assert param.detach().tolist() == pytest.approx([1 - 3 * 0.1] * 3, abs=1e-6)  # Adam's first steps: lr each


def test_a_scheduler_key_without_a_scheduler_is_refused(tmp_path: Path) -> None:
    from distillab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.scheduler has no _target_ .* step_size would be ignored"):
        optimization(tmp_path, "+optim.scheduler.step_size=2")
    with pytest.raises(ConfigError, match=r"optim.scheduler has no _target_ .* monitor would be ignored"):
        optimization(tmp_path, "+optim.scheduler.monitor=val/acc")


def test_the_logged_learning_rate_is_the_one_the_step_used(tmp_path: Path) -> None:
    """TensorBoard's `lr` at step k is the rate step k trained with (read before the warm-up moves it on): a
    2-epoch warm-up of the digits' 23 steps per epoch, from 0.01 x 1e-3, logged every step."""
    from tests.conftest import run_in, scalars

    _, run_dir = run_in(
        tmp_path,
        "loss=ce",
        "trainer.max_epochs=3",
        "trainer.log_every=1",
        "optim.warmup_epochs=2",
    )
    logged = scalars(run_dir)["lr"]
    ramp = [1e-3 * (0.01 + 0.99 * min(s, 46) / 46) for s in range(69)]  # LinearLR over 2 x 23 steps
    assert logged == pytest.approx(ramp, rel=1e-5)
    assert logged[0] == pytest.approx(1e-5)  # the first step's rate: warmup_start_factor x optim.lr


def test_a_schedule_counted_in_epochs_but_stepped_per_batch_is_refused(tmp_path: Path) -> None:
    """cosine's T_max is ${trainer.max_epochs}: under interval=step it would count batches, and the rate would
    restart every max_epochs steps. Refused before training, with the value in batches to give instead."""
    from distillab.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        optimization(tmp_path, "optim/scheduler=cosine", "optim.scheduler.interval=step", "trainer.max_epochs=6")
    assert str(refused.value) == (
        "optim.scheduler.interval=step moves the scheduler every batch, but optim.scheduler.T_max="
        "${trainer.max_epochs} counts epochs (6): give it in batches (6 epochs x 4 batches: "
        "optim.scheduler.T_max=24), or use optim.scheduler.interval=epoch."
    )
    optim, _ = optimization(
        tmp_path, "optim/scheduler=cosine", "optim.scheduler.interval=step", "optim.scheduler.T_max=24"
    )
    assert optim.interval == "step"  # given in batches: accepted


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        (["optim/scheduler=multistep"], "milestones=[150, 180, 210]: its first change comes at epoch 150, after"),
        (["optim/scheduler=step", "optim.scheduler.step_size=6"], "step_size=6: its first change comes at epoch 6"),
        (["optim/scheduler=multistep", "optim.scheduler.milestones=[3,9]"], None),  # epoch 3 < 6: it changes
    ],
)
def test_milestones_after_the_last_epoch_are_said(tmp_path: Path, caplog, overrides: list[str], warned) -> None:
    """A step or multistep schedule whose first change falls after the run's last epoch (a 240-epoch recipe run for
    6) leaves the rate at optim.lr: a warning before training says so."""
    cfg = compose([f"paths.output_dir={tmp_path}", *overrides])
    param = torch.nn.Parameter(torch.ones(3))
    with caplog.at_level("WARNING", logger="distillab"):
        build_optimization(cfg.optim, [{"params": [param]}], 4, epochs=6)
    if warned is None:
        assert not caplog.records
    else:
        assert warned in caplog.text and "the learning rate stays at optim.lr throughout" in caplog.text
