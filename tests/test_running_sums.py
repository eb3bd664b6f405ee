"""The loop's running sums: a step's record is held and summed with the next ones on the device, and what
comes out equals the per-step values summed one by one, also across a checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillab.objective import ModelOutput, Outputs
from distillab.tasks import Classification
from distillab.training.stages import Stage, StepOutput
from distillab.training.state import HOLD_BYTES, RunningSums


def first(records: list) -> torch.Tensor:
    """Sums the first tensor of each record (the others stand for held outputs)."""
    return torch.stack([r[0] for r in records]).sum(0)


TAGS = ["loss/total", "loss/a", "loss/b", "loss_weight/a", "loss_weight/b", "train/correct"]


def main_stage() -> Stage:
    return Stage("main", 1, None, nn.Identity(), TAGS, [], main=True, task=Classification())  # type: ignore[arg-type]


def steps(n: int, classes: int = 7, seed: int = 0):
    """`n` steps' outputs (the last batch smaller, logits with a graph) and, per step, what it should add:
    total, the two terms, the weights as they were at that step, the number of correct predictions."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.5, 2.0])
    for i in range(n):
        batch = 3 if i == n - 1 else 5
        logits = torch.randn(batch, classes, generator=g, requires_grad=True)
        targets = torch.randint(0, classes, (batch,), generator=g)
        values = torch.stack([logits.square().mean(), logits.abs().mean()])
        total = (weights * values).sum()
        expected = [total.item(), *values.tolist(), *weights.tolist(), (logits.argmax(1) == targets).sum().item()]
        outputs = Outputs(inputs=torch.zeros(batch), targets=targets, student=ModelOutput(logits))
        yield StepOutput(total, values, weights, outputs), batch, expected
        weights = weights * 1.5  # new weights each step, as a weighting returns them (see `Weighting`)


def test_held_records_add_up_to_the_per_step_values() -> None:
    stage, sums = main_stage(), RunningSums()
    expected = torch.zeros(len(TAGS), dtype=torch.float64)
    held = []
    for i, (out, batch, values) in enumerate(steps(37)):
        sums.add(stage.record(out, None), TAGS, batch, stage.summarise)
        expected += torch.tensor(values, dtype=torch.float64)
        held.append(len(sums.pending))
        assert not any(t.requires_grad for record in sums.pending for t in record)  # no graph is kept alive
        if i == 9:  # a logging point in the middle of a group
            sums.flush(summarise=stage.summarise)
            point, point_steps, point_samples = sums.pop("point")
            assert point_steps == 10 and point_samples == 50 and len(point) == len(TAGS)
    sums.flush(summarise=stage.summarise)
    epoch, epoch_steps, epoch_samples = sums.pop("epoch")
    assert (epoch_steps, epoch_samples) == (37, 36 * 5 + 3)
    assert max(held) > 1  # records really were held and summed together
    got = torch.tensor([epoch[t] for t in TAGS], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    assert epoch["train/correct"] == expected[-1]  # a count: exact


def test_a_checkpoint_between_held_records_resumes_bit_identically() -> None:
    stage = main_stage()
    whole, interrupted = RunningSums(), RunningSums()
    for i, (out, batch, _) in enumerate(steps(29)):
        record = stage.record(out, None)
        whole.add(record, TAGS, batch, stage.summarise)
        interrupted.add(record, TAGS, batch, stage.summarise)
        if i == 20:
            assert interrupted.pending  # the checkpoint falls inside a group of held records
            resumed = RunningSums()
            resumed.load_state_dict(interrupted.state_dict())
            interrupted = resumed
    for sums in (whole, interrupted):
        sums.flush(summarise=stage.summarise)
    assert interrupted.pop("epoch") == whole.pop("epoch")


@pytest.mark.parametrize("pixels", [8, 256])
def test_held_records_stay_under_the_memory_bound(pixels: int) -> None:
    """Small records are held up to HOLD_STEPS at a time; large ones (images) fewer, never more than
    HOLD_BYTES in all (a record larger than that alone is summed at once)."""
    sums, held = RunningSums(), []
    for _ in range(20):
        record = (torch.ones(3), torch.randn(16, 3, pixels, pixels))
        sums.add(record, ["a", "b", "c"], 16, first)
        held.append(sum(t.nbytes for record in sums.pending for t in record))
    assert max(held) <= HOLD_BYTES
    assert max(held) > 0 if pixels == 8 else max(held) == 0
    sums.flush(summarise=first)
    assert sums.pop("epoch")[0] == {"a": 20.0, "b": 20.0, "c": 20.0}


def test_a_checkpoint_from_before_held_records_resumes_under_the_memory_bound() -> None:
    """Checkpoints written before records were held have no `pending` or `hold`: the hold is then worked
    out from the first record after the resume, as in a fresh run."""
    old = RunningSums()
    old.add((torch.ones(3),), ["a", "b", "c"], 16)
    state = {k: v for k, v in old.state_dict().items() if k not in ("pending", "hold")}
    state["device_total"], state["steps"] = torch.ones(3), 1
    sums = RunningSums()
    sums.load_state_dict(state)
    for _ in range(3):
        sums.add((torch.ones(3), torch.randn(16, 3, 256, 256)), ["a", "b", "c"], 16, first)
        assert not sums.pending  # each large record summed at once, not 16 of them held
    sums.flush(summarise=first)
    assert sums.pop("epoch")[0] == {"a": 4.0, "b": 4.0, "c": 4.0}


def test_the_default_summarise_refuses_a_stages_records() -> None:
    """Flushing main-training records without `Stage.summarise` would broadcast the totals onto every tag."""
    stage, sums = main_stage(), RunningSums()
    out, batch, _ = next(steps(1))
    sums.add(stage.record(out, None), TAGS, batch, stage.summarise)
    with pytest.raises(ValueError, match="records of one tensor"):
        sums.flush()


def test_the_training_accuracy_takes_the_first_of_tied_maxima_as_argmax_does() -> None:
    """A prediction is the first class of the highest logit (`argmax`'s convention), also where logits tie (as
    all-equal logits do at initialisation): by hand, then on bf16 logits rounded to integers, a third of whose rows
    tie, against float32 `argmax` (bf16 runs the reduction's bf16 kernel)."""
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 5.0, 1.0], [4.0, 4.0, 0.0]])
    targets = torch.tensor([2, 0, 1, 1])  # by hand: class 1 (wrong), 0 (right), 1 (right), 0 (wrong)
    assert Classification().train_sums(logits, targets)["correct"].item() == 2
    g = torch.Generator().manual_seed(0)
    coarse = (torch.randn(4096, 10, generator=g) * 2).round().to(torch.bfloat16)
    targets = torch.randint(0, 10, (4096,), generator=g)
    tied = (coarse == coarse.max(1, keepdim=True).values).sum(1) > 1
    assert tied.float().mean() > 0.2
    expected = (coarse.float().argmax(1) == targets).sum().item()
    assert Classification().train_sums(coarse, targets)["correct"].item() == expected
