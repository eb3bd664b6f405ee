"""A training step that does not log reads nothing back from the device (`trainer.nan_policy=stop`, the default,
and `skip_step`, even on the step it skips, after the first): the NaN guard's flags are read with the logged
scalars. On a GPU a host read stalls the queue of kernels; on the CPU it is counted here, every way a tensor's
value can reach Python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_in

OPTIM = str(Path("/optim/"))
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


NAN_TERM = [
    "+loss.terms.bomb={_target_:tests.test_reliability.NaNAtCall,at_call:15}",
    "+loss.weights.bomb=1.0",
    "loss=ce",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss=kd", "weighting=learnable"],
        ["loss=fitnet", "weighting=uncertainty", "optim.grad_clip_norm=5"],
        ["trainer.nan_policy=skip_step", *NAN_TERM],  # a NaN loss at step 15, skipped on the device
    ],
    ids=["kd-learnable", "fitnet-uncertainty-clipped", "skip-step-with-a-nan-step"],
)
def test_a_step_that_does_not_log_makes_no_host_read(overrides: list[str], tmp_path: Path, monkeypatch, caplog) -> None:
    from distillab.training import Trainer

    reads: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            # torch's optimizers keep their step counters on the host even on a GPU (unless `capturable`), so
            # reading them syncs nothing: not counted.
            if f"torch{OPTIM}" not in sys._getframe(1).f_code.co_filename:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps: list[tuple[int, list[str]]] = []
    train_batch = Trainer.train_batch

    def watched(self, members, stages, batches):
        reads.clear()
        train_batch(self, members, stages, batches)
        steps.append((members[0].p.step, list(reads)))

    monkeypatch.setattr(Trainer, "train_batch", watched)
    metrics, run_dir = run_in(tmp_path, *overrides, "trainer.max_epochs=1", "trainer.log_every=10")
    monkeypatch.undo()
    assert metrics["status"] == "completed" and len(steps) >= 23  # (its teacher's steps too, if it was trained)
    quiet = [(step, r) for step, r in steps if step % 10]
    if "trainer.nan_policy=skip_step" in overrides:  # the step that creates the optimizer's state reads its flag
        assert quiet[0] == (1, ["__bool__"])  # once (`masked_step`): skipped, that state is removed
        quiet = quiet[1:]
    assert all(r == [] for _, r in quiet), [(s, r) for s, r in quiet if r]
    logged = [r for step, r in steps if step % 10 == 0]
    assert logged and all(logged)  # a logged step does read: the guard's flags and the scalars, at once
    if "trainer.nan_policy=skip_step" in overrides:  # the skipped step is said when the guard is read
        assert "step 15 skipped: loss terms bomb were non-finite" in caplog.text and metrics["steps"] == 23
        last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
        assert all(torch.isfinite(t).all() for t in last["student"].values())
