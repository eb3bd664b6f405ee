"""DOT (Zhao et al., ICCV 2023): the task's and the distillation's gradients each keep a momentum of their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distillab import checks
from distillab.errors import ConfigError, InvalidArgument
from distillab.weighting.base import BackwardContext
from distillab.weighting.fixed import Fixed


class DistillationOriented(Fixed):
    """Distillation-oriented trainer, as the authors' `DistillationOrientedTrainer` (megvii-research/mdistiller,
    `engine/dot.py`): SGD in which the task terms' gradient (`task_terms`, the weighted CE) and the distillation
    terms' gradient (every other term, weighted) keep separate momentum buffers, the task's with momentum
    `momentum - delta` and the distillation's with `momentum + delta`, and the update is their sum. Weight
    decay enters the task's buffer. A parameter that only one of the two reaches (a projector) keeps one buffer,
    with the mean of the two momenta and the weight decay, as theirs.

    The terms are weighted by `loss.weights` as `weighting=fixed` would (`loss/total` and `loss_weight/<term>`
    are those).
    The update direction (the two buffers' sum) is what `backward` leaves in `.grad`, so the optimizer must be
    plain SGD without momentum or weight decay of its own (`optim.momentum=0 optim.weight_decay=0`): it applies
    the learning rate and its schedule, as the authors' step does (`optim.grad_clip_norm` would clip that
    direction, not the gradients). Checked before training, as are 16-mixed precision (the buffers hold unscaled
    gradients), `trainer.nan_policy=skip_step` (a skipped step's gradients would stay in the buffers) and DDP.
    """

    supports_ddp = False

    def __init__(
        self,
        weights: Mapping[str, float],
        task_terms: Sequence[str] = ("ce",),
        momentum: float = 0.9,
        delta: float = 0.075,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__(weights)
        task = list(task_terms) if isinstance(task_terms, (list, tuple)) else None
        if not task or any(t not in self.names for t in task) or len(task) == len(self.names):
            raise InvalidArgument(
                "task_terms",
                task_terms,
                f"a list of some, not all, of this loss's terms ({', '.join(self.names)}); the others are distillation",
            )
        self.task_terms = task
        self.momentum = checks.number("momentum", momentum, at_least=0, below=1)
        self.delta = checks.number("delta", delta, at_least=0)
        if not (self.momentum - self.delta >= 0 and self.momentum + self.delta < 1):
            raise InvalidArgument("delta", delta, f"a number with momentum +- delta in [0, 1) (momentum={momentum})")
        self.weight_decay = checks.number("weight_decay", weight_decay, at_least=0)
        self.task_mask = [n in task for n in self.names]
        self.weight_values = [float(weights[n]) for n in self.names]  # fixed: no host read per step
        self.params: list[nn.Parameter] = []  # (a plain list: the student's and projectors', not this module's)
        self.task_buffers: list[Tensor | None] = []
        self.distill_buffers: list[Tensor | None] = []

    def check_training(self, optimizer: torch.optim.Optimizer, trainer: Mapping[str, Any]) -> None:
        groups = optimizer.param_groups
        if not isinstance(optimizer, torch.optim.SGD):
            own = f"{type(optimizer).__name__}, not SGD"
        elif any(g["momentum"] or g["nesterov"] for g in groups) or any(g["weight_decay"] for g in groups):
            own = f"SGD with momentum {groups[0]['momentum']} and weight decay {groups[0]['weight_decay']}"
        else:
            own = None
        if own is not None:
            raise ConfigError(
                "weighting=dot keeps the momenta and the weight decay itself (weighting.momentum, .delta, "
                f".weight_decay), so the optimizer must be plain SGD, and it is {own}: use optim=sgd "
                "optim.momentum=0 optim.weight_decay=0."
            )
        if trainer.get("precision") == "16-mixed":
            raise ConfigError(
                "weighting=dot keeps momentum buffers of unscaled gradients, and trainer.precision=16-mixed scales "
                "them by a changing factor: use trainer.precision=32 or bf16-mixed."
            )
        if trainer.get("nan_policy") == "skip_step":
            raise ConfigError(
                "weighting=dot adds each step's gradients to its momentum buffers before the optimizer step, so a "
                "skipped non-finite step would stay in them: use trainer.nan_policy=stop."
            )

    def backward(self, total: Tensor, losses: Tensor, ctx: BackwardContext) -> Tensor | None:
        if not self.params:  # the same parameters every step (the buffers follow their order)
            trained = [p for p in [*ctx.shared, *(p for own in ctx.own.values() for p in own)] if p.requires_grad]
            self.params = list({id(p): p for p in trained}.values())
        params = self.params

        def weighted(of_task: bool) -> Tensor:  # (both groups have terms: checked in __init__)
            parts = [w * v for w, v, t in zip(self.weight_values, ctx.terms, self.task_mask) if t == of_task]
            return torch.stack(parts).sum()

        task, distill = weighted(True), weighted(False)
        # each group's own graph: a parameter that one of them never reaches gets None from it, not zeros
        task_grads = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
        distill_grads = torch.autograd.grad(distill, params, allow_unused=True)
        if not self.task_buffers:
            self.task_buffers, self.distill_buffers = [None] * len(params), [None] * len(params)
        mean_momentum = self.momentum  # (m - delta + m + delta) / 2
        for i, (p, g_task, g_distill) in enumerate(zip(params, task_grads, distill_grads)):
            with torch.no_grad():
                parts = []
                if g_task is not None:
                    g = g_task + self.weight_decay * p if self.weight_decay else g_task
                    m = self.momentum - self.delta if g_distill is not None else mean_momentum
                    self.task_buffers[i] = buffer = momentum_step(self.task_buffers[i], g, m)
                    parts.append(buffer)
                if g_distill is not None:
                    # a parameter only the distillation reaches (a projector) takes the weight decay in this buffer,
                    # from its second step on: the authors' first step clones the bare gradient
                    decays = g_task is None and self.weight_decay and self.distill_buffers[i] is not None
                    g = g_distill + self.weight_decay * p if decays else g_distill
                    m = self.momentum + self.delta if g_task is not None else mean_momentum
                    self.distill_buffers[i] = buffer = momentum_step(self.distill_buffers[i], g, m)
                    parts.append(buffer)
                if parts:
                    p.grad = sum(parts[1:], parts[0].clone())
        return None

    def get_extra_state(self) -> Any:
        return {"task": self.task_buffers, "distill": self.distill_buffers}

    def set_extra_state(self, state: Any) -> None:
        """Buffers of a checkpoint (loaded on the CPU) move to this weighting's device once, here, not per step."""

        def here(buffers: list[Tensor | None]) -> list[Tensor | None]:
            return [None if b is None else b.to(self.initial.device) for b in buffers]

        self.task_buffers, self.distill_buffers = here(list(state["task"])), here(list(state["distill"]))


def momentum_step(buffer: Tensor | None, grad: Tensor, momentum: float) -> Tensor:
    """SGD's momentum buffer (dampening 0): the gradient itself at the first step, then `m * buffer + grad`."""
    if buffer is None:
        return grad.detach().clone()
    return buffer.mul_(momentum).add_(grad)
