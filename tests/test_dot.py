"""DOT (weighting=dot) against the authors' DistillationOrientedTrainer, written out from megvii-research/mdistiller's
engine/dot.py, on a student layer both losses reach and a projector only the distillation term reaches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distillab.errors import ConfigError, InvalidArgument
from distillab.weighting import BackwardContext, DistillationOriented


class Toy(nn.Module):
    """A student (reached by both losses) and a projector (reached by the distillation term only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(4, 3)
        self.projector = nn.Linear(3, 3)

    def losses(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE and the distillation term, each its own graph (the projector is not in CE's)."""
        z = self.student(x)
        ce = nn.functional.cross_entropy(z, y)
        kd = (self.projector(z) - target).pow(2).mean()
        return ce, kd


def authors_dot(model: Toy, batches, lrs, weights, m_task: float, m_kd: float, wd: float) -> None:
    """Their step_kd() then step(): buffers per parameter; `p in kd_params` decides each rule, as `check_in` does."""
    task_buf: dict[int, torch.Tensor] = {}
    kd_buf: dict[int, torch.Tensor] = {}
    params = list(model.parameters())
    for (x, y, t), lr in zip(batches, lrs):
        losses = model.losses(x, y, t)
        loss_ce, loss_kd = weights[0] * losses[0], weights[1] * losses[1]
        kd_grads = torch.autograd.grad(loss_kd, params, retain_graph=True, allow_unused=True)
        task_grads = torch.autograd.grad(loss_ce, params, allow_unused=True)
        kd_params = [p for p, g in zip(params, kd_grads) if g is not None]
        task_params = [p for p, g in zip(params, task_grads) if g is not None]
        with torch.no_grad():
            for p, g in zip(params, task_grads):  # dot(): the task loop
                if g is None:
                    continue
                d_p = g.add(p, alpha=wd)
                if id(p) not in task_buf:
                    task_buf[id(p)] = d_p.clone()
                elif any(p is q for q in kd_params):
                    task_buf[id(p)].mul_(m_task).add_(d_p)
                else:
                    task_buf[id(p)].mul_((m_kd + m_task) / 2).add_(d_p)
                p.add_(task_buf[id(p)], alpha=-lr)
            for p, g in zip(params, kd_grads):  # dot(): the kd loop
                if g is None:
                    continue
                d_p = g
                if id(p) not in kd_buf:
                    kd_buf[id(p)] = d_p.clone()
                elif any(p is q for q in task_params):
                    kd_buf[id(p)].mul_(m_kd).add_(d_p)
                else:
                    kd_buf[id(p)].mul_((m_kd + m_task) / 2).add_(d_p.add(p, alpha=wd))
                p.add_(kd_buf[id(p)], alpha=-lr)


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g), torch.randn(8, 3, generator=g))
        for _ in range(n)
    ]


def test_dot_updates_as_the_authors_trainer_with_plain_sgd_applying_the_learning_rate() -> None:
    """Six steps with a learning rate that changes (a schedule): the weighting's backward leaves the sum of the two
    momentum buffers in .grad and SGD(momentum=0) subtracts lr times it; the parameters match the authors' update
    (their kd-only parameters take the weight decay and the mean momentum; so does ours) to float rounding. The
    projector keeps one buffer; a second run restored from the weighting's state_dict continues identically."""
    weights, lrs, data = (0.1, 0.9), [0.05, 0.05, 0.05, 0.005, 0.005, 0.005], batches(6)
    expected = Toy()
    authors_dot(expected, data, lrs, weights, 0.9 - 0.075, 0.9 + 0.075, 5e-4)

    def ours(model: Toy, weighting: DistillationOriented, steps) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0, weight_decay=0)
        ctx = BackwardContext(shared=list(model.student.parameters()), own={"kd": list(model.projector.parameters())})
        for (x, y, t), lr in steps:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            ctx.terms = model.losses(x, y, t)  # as the stage sets them: each term's own graph
            losses = torch.stack(list(ctx.terms))
            total, _ = weighting(losses)
            assert weighting.backward(total, losses, ctx) is None
            opt.step()

    model, weighting = Toy(), DistillationOriented({"ce": weights[0], "kd": weights[1]})
    ours(model, weighting, list(zip(data, lrs))[:3])
    # params: the student's weight and bias (both losses), then the projector's (the distillation's only)
    assert all(b is not None for b in weighting.task_buffers[:2]) and weighting.task_buffers[2:] == [None, None]
    assert all(b is not None for b in weighting.distill_buffers)
    resumed_model, resumed = copy.deepcopy(model), DistillationOriented({"ce": weights[0], "kd": weights[1]})
    resumed.load_state_dict(copy.deepcopy(weighting.state_dict()))
    ours(model, weighting, list(zip(data, lrs))[3:])
    ours(resumed_model, resumed, list(zip(data, lrs))[3:])
    for (name, p), q, r in zip(model.named_parameters(), expected.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(p, r, rtol=0, atol=0, msg=name)
    plain = Toy()  # and it is not SGD with one momentum: DOT moved the parameters elsewhere
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for (x, y, t), lr in zip(data, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        (torch.tensor(weights) * torch.stack(plain.losses(x, y, t))).sum().backward()
        opt.step()
    assert (plain.student.weight - model.student.weight).abs().max() > 1e-4


def test_dot_refuses_an_optimizer_with_its_own_momentum_16_mixed_skip_step_and_a_task_list_it_cannot_use() -> None:
    weighting = DistillationOriented({"ce": 0.1, "kd": 0.9})
    p = [nn.Parameter(torch.zeros(2))]
    plain = {"precision": "32", "nan_policy": "stop"}
    with pytest.raises(
        ConfigError, match=r"plain SGD, and it is SGD with momentum 0.9 and weight decay 0: use optim=sgd"
    ):
        weighting.check_training(torch.optim.SGD(p, lr=0.1, momentum=0.9), plain)
    with pytest.raises(ConfigError, match=r"plain SGD, and it is Adam, not SGD"):
        weighting.check_training(torch.optim.Adam(p), plain)
    with pytest.raises(ConfigError, match=r"trainer.precision=16-mixed"):
        weighting.check_training(torch.optim.SGD(p, lr=0.1), {**plain, "precision": "16-mixed"})
    with pytest.raises(ConfigError, match=r"use trainer.nan_policy=stop"):
        weighting.check_training(torch.optim.SGD(p, lr=0.1), {**plain, "nan_policy": "skip_step"})
    weighting.check_training(torch.optim.SGD(p, lr=0.1), {**plain, "precision": "bf16-mixed"})
    for bad in (["nope"], ["ce", "kd"], "ce"):
        with pytest.raises(InvalidArgument, match="task_terms"):
            DistillationOriented({"ce": 0.1, "kd": 0.9}, task_terms=bad)


def test_dot_runs_alone_in_a_fused_sweep_and_the_method_recipe_sets_plain_sgd() -> None:
    from distillab.config import compose
    from distillab.fused_sweep import alone_reason

    cfg = compose(["~experiment", "loss=kd", "weighting=dot"])
    assert (
        alone_reason(cfg)
        == "weighting DistillationOriented decides the gradient in a backward of its own (gradient-level)"
    )
    recipe = compose(["experiment=cifar100/resnet32x4_resnet8x4/dot"])
    assert recipe.optim.momentum == 0 and recipe.optim.weight_decay == 0 and recipe.weighting.momentum == 0.9
    assert recipe.weighting.weight_decay == 5e-4 and recipe.loss.alpha == 0.9 and recipe.loss.temperature == 4
