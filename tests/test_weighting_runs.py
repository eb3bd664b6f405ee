"""Weighting strategies in whole runs: TensorBoard curves, optimizer groups, checkpoints, backward modes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillab.checkpoint import load_checkpoint
from distillab.config import config_dir
from distillab.weighting import Learnable
from tests.conftest import scalars
from tests.test_teacher import build

WEIGHTINGS = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))
GRADIENT_LEVEL = {"upgrad", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl_g", "dualproj", "graddrop", "aligned_mtl"}
EXTRA = {
    "schedule": ["weighting.schedules={kd: {kind: linear, epochs: 5}}"],
    "dot": ["optim=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.lr=0.01"],  # DOT keeps the momenta
}
CONSTANT = {"fixed", "dot"}  # weights that never move


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_strategy_trains_kd_and_logs_every_terms_weight_each_logged_step(weighting: str, tiny_run) -> None:
    metrics, run_dir = tiny_run("loss=kd", f"weighting={weighting}", "trainer.max_epochs=3", *EXTRA.get(weighting, []))
    assert metrics["status"] == "completed" and metrics["best_val_acc"] > 30  # it trained (10 classes: chance is 10)
    tags = scalars(run_dir)
    n_points = len(tags["loss/total"])
    for term in ("ce", "kd"):
        assert len(tags[f"loss_weight/{term}"]) == n_points and len(tags[f"loss/{term}"]) == n_points
        assert all(math.isfinite(w) and w >= -1e-6 for w in tags[f"loss_weight/{term}"])
    kd = tags["loss_weight/kd"]
    moves = max(kd) - min(kd) > 1e-3
    if weighting not in GRADIENT_LEVEL or weighting in ("pcgrad", "mgda", "upgrad"):
        assert moves == (weighting not in CONSTANT), (weighting, kd[:3], kd[-3:])
    assert set(metrics["final_weights"]) == {"ce", "kd"}


def test_learnable_weights_have_their_own_group_are_optimized_once_and_checkpointed(tmp_path: Path, tiny_run) -> None:
    exp = build(tmp_path / "b", "loss=kd", "weighting=learnable", "weighting.lr=0.05", "optim=adamw")
    groups = {g["name"]: g for g in exp.optim.optimizer.param_groups}
    (s,) = groups["weighting"]["params"]
    assert (
        s is exp.weighting.log_weights
        and groups["weighting"]["lr"] == 0.05
        and groups["weighting"]["weight_decay"] == 0.0
    )
    assert groups["model"]["weight_decay"] == 0.01 and all(p is not s for p in groups["model"]["params"])

    metrics, run_dir = tiny_run("loss=kd", "weighting=learnable", "trainer.max_epochs=3")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    restored = Learnable({"ce": 0.5, "kd": 0.5})
    restored.load_state_dict(state["weighting"])
    assert not torch.allclose(restored.log_weights, torch.log(torch.tensor([0.5, 0.5])))  # they moved
    assert (restored.log_weights.exp() > 0).all()
    last_logged = scalars(run_dir)["loss_weight/kd"][-1]
    assert abs(metrics["final_weights"]["kd"] - restored.log_weights.exp()[1].item()) < 0.05
    assert last_logged > 0


def test_separate_backward_trains_exactly_like_joint(tmp_path: Path) -> None:
    from tests.conftest import run_in

    joint, _ = run_in(tmp_path / "j", "loss=fitnet", "weighting=learnable", "trainer.backward=joint")
    separate, _ = run_in(tmp_path / "s", "loss=fitnet", "weighting=learnable", "trainer.backward=separate")
    assert separate["best_val_acc"] == pytest.approx(joint["best_val_acc"])
    for term, w in joint["final_weights"].items():
        assert separate["final_weights"][term] == pytest.approx(w, rel=1e-4)


def test_per_term_gradient_norms_are_logged_when_asked(tiny_run) -> None:
    _, run_dir = tiny_run("loss=kd", "trainer.grad_norm_every=3")
    tags = scalars(run_dir)
    assert tags["grad_norm/ce"] and tags["grad_norm/kd"] and all(v > 0 for v in tags["grad_norm/kd"])
    _, plain_dir = tiny_run("loss=kd")
    assert not any(t.startswith("grad_norm/") for t in scalars(plain_dir))


def test_staged_run_logs_the_stage(tiny_run) -> None:
    _, run_dir = tiny_run("loss=kd", "weighting=staged", "weighting.stages.0.until.above=50", "trainer.max_epochs=4")
    stage = scalars(run_dir)["weighting/stage"]
    assert stage[0] in (0.0, 1.0) and stage[-1] == 1.0


def test_learnable_reconstruction_run(tiny_run) -> None:
    metrics, run_dir = tiny_run("experiment=denoise", "weighting=learnable")
    assert set(metrics["final_weights"]) == {"l1", "mse", "ssim"}
    assert scalars(run_dir)["loss_weight/mse"][-1] > 1.0  # MSE is small, so its weight ~1/L grows


def test_final_weights_are_the_last_epochs_not_the_last_logging_windows(tmp_path: Path) -> None:
    """With 2 steps an epoch and a point every 5 steps, the last point's window spans epochs 8 and 9: metrics.json's
    final_weights are epoch 9's (the schedule's 9/20 of kd's weight), as its last epoch line shows."""
    from tests.conftest import compose_in, run_in

    overrides = [
        "loss=kd",
        "data.train_subset=100",
        "trainer.max_epochs=9",
        "trainer.log_every=5",
        "weighting=schedule",
        "weighting.schedules={kd: {kind: linear, epochs: 20}}",
    ]
    weights = compose_in(tmp_path / "cfg", *overrides).loss.weights
    metrics, _ = run_in(tmp_path, *overrides)
    assert metrics["steps"] == 18
    assert metrics["final_weights"] == pytest.approx({"ce": weights.ce, "kd": weights.kd * 9 / 20})


def test_a_weighting_that_returns_the_wrong_weights_is_refused_in_one_sentence() -> None:
    """The loop logs the returned weights as loss_weight/<term> by position: a wrong length would put other numbers
    in those tags (a user's weighting returned one weight for two terms and logged train/acc as a weight)."""
    from distillab.build import check_weighting_output
    from distillab.errors import ConfigError
    from distillab.weighting import Fixed

    class OneWeight(Fixed):
        def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return losses.sum(), self.initial[:1].clone()

    class WithGrad(Fixed):
        def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            weights = self.initial * losses
            return weights.sum(), weights

    class InPlace(Fixed):  # a user's: its own buffer, updated in place at every call, returned as it is
        def __init__(self, weights) -> None:
            super().__init__(weights)
            self.register_buffer("w", self.initial.clone())

        def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.w.add_(1.0)
            return (self.w * losses).sum(), self.w

    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    check_weighting_output(Fixed({"ce": 0.1, "kd": 0.9}), losses)  # its buffer, returned, never changed: fine
    with pytest.raises(ConfigError, match=r"^weighting \(OneWeight\) returns weights of shape \(1,\) for 2 terms: "):
        check_weighting_output(OneWeight({"ce": 0.1, "kd": 0.9}), losses)
    with pytest.raises(ConfigError, match=r"^weighting \(WithGrad\) returns weights that require grad: "):
        check_weighting_output(WithGrad({"ce": 0.1, "kd": 0.9}), losses)
    with pytest.raises(ConfigError, match=r"^weighting \(InPlace\) changes the weights it returned at its next call"):
        check_weighting_output(InPlace({"ce": 0.1, "kd": 0.9}), losses)
