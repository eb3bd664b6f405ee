"""The stages `Trainer.fit_group` runs, in order: each loss term's init stage (FSP, AB, FT, as RepDistiller's
`init()`), then the main training. A stage brings its own forward and loss, parameters and optimizer,
epochs, and what it logs; the loop, the step, the NaN policy, signals and checkpoints are the same for all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from distillab.optim import Optimization
from distillab.run_logger import WEIGHT
from distillab.training.state import Record
from distillab.weighting import BackwardContext

if TYPE_CHECKING:
    from distillab.experiment import Experiment
    from distillab.losses import LossTerm
    from distillab.objective import Outputs
    from distillab.tasks import Task


class MainRecord(NamedTuple):
    """What one step of the main training keeps for logging (views, no copies): summed by `Stage.summarise`."""

    total: Tensor
    values: Tensor  # the terms' values
    weights: Tensor  # the weights applied
    student: Tensor  # the student's output, and the targets: the task's training sums (accuracy)
    targets: Tensor


class InitRecord(NamedTuple):
    """What one step of an init stage keeps for logging: its loss (a view)."""

    loss: Tensor


class StepOutput(NamedTuple):
    total: Tensor
    values: Tensor  # the terms' values, stacked (init stages: the one loss)
    weights: Tensor | None  # the weights the forward applied (init stages: None)
    outputs: Outputs
    terms: Sequence[Tensor] = ()  # the terms' values before stacking (the main training)


class MainLoss(nn.Module):
    """Loss terms and weighting on a step's `Outputs`, as one module holding everything trainable (student,
    projectors, learnable weights): what DDP wraps, so their gradients are averaged over the ranks."""

    def __init__(self, exp: Experiment) -> None:
        super().__init__()
        self.student, self.objective, self.weighting = exp.student, exp.objective, exp.weighting
        self.exp = exp  # a plain attribute: the frozen teachers are not part of what DDP synchronises
        self.terms = [exp.objective[n] for n in exp.weighting.names]  # in the weighting's order

    def forward(self, outputs: Outputs) -> StepOutput:
        terms = [term(outputs) for term in self.terms]
        values = torch.stack(terms)
        total, weights = self.weighting(values)
        return StepOutput(total, values, weights, outputs, terms)


class InitLoss(nn.Module):
    """An init stage's loss: the term's `init_loss` on the step's `Outputs`."""

    def __init__(self, term: LossTerm) -> None:
        super().__init__()
        self.term = term

    def forward(self, outputs: Outputs) -> StepOutput:
        loss = self.term.init_loss(outputs)
        return StepOutput(loss, loss.reshape(1), None, outputs)


@dataclass
class Stage:
    """`loss` computes a step's `StepOutput`; `record` keeps what a step logs and `summarise` adds several
    records up into one tensor named by `tags`, which the loop logs; `train_modules` are in train mode during
    the stage, the student otherwise only in the main training; `main` marks the main training (validation,
    best.pt, epoch hooks, samples/s)."""

    name: str
    epochs: int
    optim: Optimization
    loss: nn.Module
    tags: list[str]
    train_modules: list[nn.Module]
    main: bool = False
    task: Task | None = None  # the main training's: its training sums are logged
    student_grad: bool = True  # the forward builds the student's graph (an init stage that trains only a projector: no)
    term: str | None = None  # an init stage's loss term

    def backward(self, out: StepOutput, ctx: BackwardContext, exp: Experiment) -> Tensor | None:
        """Gradients into `.grad`; the effective weights when the weighting decided them in backward."""
        if self.main:
            ctx.terms = out.terms  # each term's own graph, for the weightings that ask (see `BackwardContext`)
            return exp.weighting.backward(out.total, out.values, ctx)
        ctx.scale(out.total).backward()
        return None

    def record(self, out: StepOutput, weights: Tensor | None) -> Record:
        """What one step logs, kept for `summarise`: views of the total and the terms' values, the weights
        as the weighting returned them (which it does not change afterwards: see `Weighting`), and in the
        main training the student's output and the targets, from which `summarise` computes the task's
        training sums for several steps at once."""
        if not self.main:
            return InitRecord(out.total.detach())
        used = weights if weights is not None else out.weights
        assert used is not None, "the main training's forward returns the weights it applied"
        return MainRecord(
            out.total.detach(), out.values.detach(), used, out.outputs.student.out.detach(), out.outputs.targets
        )

    def summarise(self, records: list[Record]) -> Tensor:
        """The sum of several steps' `record`s, in `tags` order, as one float32 tensor on the device (no sync)."""

        def summed(parts: list[Tensor]) -> Tensor:
            return torch.stack(parts).sum(0, dtype=torch.float32).reshape(-1)

        with torch.no_grad():
            # (held records restored from a checkpoint are plain tuples: named again here)
            if self.task is None:  # an init stage: its loss
                return summed([InitRecord(*r).loss for r in records])
            main = [MainRecord(*r) for r in records]
            outs, targets = torch.cat([r.student for r in main]), torch.cat([r.targets for r in main])
            sums = self.task.train_sums(outs, targets).values()
            scalars = [
                summed([r.total for r in main]),
                summed([r.values for r in main]),
                summed([r.weights for r in main]),
            ]
            return torch.cat([*scalars, *(v.float().reshape(1) for v in sums)])


def main_stage(exp: Experiment, epochs: int) -> Stage:
    names = exp.weighting.names
    train_tags = [f"train/{k}" for k in exp.task.train_sum_names]
    tags = ["loss/total", *(f"loss/{n}" for n in names), *(f"{WEIGHT}{n}" for n in names), *train_tags]
    modules = [exp.student, exp.objective, exp.weighting]
    return Stage("main", epochs, exp.optim, MainLoss(exp), tags, modules, main=True, task=exp.task)


def init_stages(exp: Experiment) -> list[Stage]:
    """One stage per loss term with `init_epochs > 0`: a fresh optimizer of the run's kind and settings over
    the term's `init_modules` (learning rate: the term's `init_lr`, else the run's), no schedule, the run's
    gradient clipping."""
    stages = []
    main = exp.optim.optimizer
    for name, term in exp.objective.items():
        if term.init_epochs <= 0:
            continue
        modules = term.init_modules(exp.student)
        params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
        settings = {**main.defaults, "lr": term.init_lr if term.init_lr is not None else main.defaults["lr"]}
        # one parameter group: `defaults` may hold keys the constructor does not take (AdamW's decoupled_weight_decay)
        optimizer = type(main)([{**settings, "params": params}], lr=settings["lr"])  # type: ignore[call-arg]
        optim = Optimization(optimizer, None, "epoch", None, None, exp.optim.grad_clip_norm)
        trains_student = any(m is exp.student for m in modules)
        stages.append(
            Stage(
                f"init/{name}",
                term.init_epochs,
                optim,
                InitLoss(term),
                [f"init/{name}"],
                modules,
                student_grad=trains_student,
                term=name,
            )
        )
    return stages
