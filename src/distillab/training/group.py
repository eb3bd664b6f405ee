"""The runs `Trainer.fit_group` trains together: one `Member` per run (a single run is a group of one), and
the group's forward pass, which for two or more members runs their students as one network.

Fusion (as PyTorch's model ensembling, and HFTA): the members' students share an architecture, so their
parameters are stacked (every step, from each member's own parameters: each keeps its own optimizer, clipping
and checkpoint) and one `torch.func.vmap` of `functional_call` runs all of them at once. BatchNorm buffers are
stacked too, updated by the vmapped forward and copied back to each member. The teacher runs once per distinct
batch: once for members that see the same batches (the same `data.seed`), once over all their batches together
otherwise; with `teacher.cache_outputs` each member looks its rows up instead.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from distillab.objective import ModelOutput, Outputs
from distillab.run_logger import speaking_for
from distillab.taps import FeatureTaps
from distillab.teacher_outputs import run_teachers
from distillab.training.state import FitResult, Progress
from distillab.training.step import Guard
from distillab.weighting import BackwardContext

if TYPE_CHECKING:
    from distillab.errors import RunStopped
    from distillab.experiment import Experiment
    from distillab.run_logger import RunLogger
    from distillab.training.pictures import Pictures
    from distillab.training.stages import Stage


class Batch(NamedTuple):
    """A training batch on the device: inputs, targets, and, where the loader yields them, each sample's index
    in the training set and its augmented view's number (random crop and flip: the teacher cache's lookups)."""

    x: Tensor
    y: Tensor
    indices: Tensor | None = None
    views: Tensor | None = None


@dataclass
class Member:
    """One run of a group: its experiment, where it writes, and what the loop keeps for it. `label` names it in
    the log lines of a group of several ("#3"); `error` is set when the NaN policy stopped it (the others go on)."""

    exp: Experiment
    run_dir: Path
    logger: RunLogger | None = None
    resume_from: Mapping[str, Any] | None = None
    label: str = ""
    stages: list[Stage] = field(default_factory=list)
    ctx: BackwardContext = field(default_factory=lambda: BackwardContext(shared=[]))
    scaler: torch.amp.GradScaler | None = None
    pictures: Pictures | None = None
    p: Progress = field(default_factory=Progress)
    guard: Guard = field(default_factory=Guard)  # the NaN guard's steps, read with the logged scalars
    error: RunStopped | None = None
    result: FitResult | None = None  # set by `Trainer.fit_group`
    start: float = 0.0  # time.perf_counter() when its training began (less the time before a resume)

    def speaking(self) -> contextlib.AbstractContextManager[object]:
        """Log records made inside go to this run's own log file alone (when its group set one up)."""
        return speaking_for(self.run_dir)


class FusedStudents:
    """Two or more students of one architecture, run as one network by `torch.func.vmap`.

    `base` is a copy of the first student without its hooks, whose own taps (the union of every member's
    student layers) are returned from inside the vmapped function, so they come out with a member dimension."""

    def __init__(self, exps: Sequence[Experiment]) -> None:
        self.students = [e.student for e in exps]
        first = exps[0]
        paths = list(dict.fromkeys(p for e in exps for p in e.student_taps.paths))
        first.student_taps.remove()  # not copied into `base` (deepcopy would carry the hooks over)
        self.base = copy.deepcopy(first.student)
        first.student_taps = FeatureTaps(first.student, first.student_taps.paths)
        self.taps = FeatureTaps(self.base, paths)
        self.param_names = [n for n, _ in self.base.named_parameters()]
        self.buffer_names = [n for n, _ in self.base.named_buffers()]
        self.member_params = [dict(s.named_parameters()) for s in self.students]
        self.member_buffers = [dict(s.named_buffers()) for s in self.students]

    def forward(
        self, xs: Sequence[Tensor], which: Sequence[int], training: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The outputs and tapped features of the students `which` (positions among `exps`; those still training),
        stacked on a first dimension (student `which[i]` on `xs[i]`; one shared tensor is passed once), in train
        mode (BatchNorm's batch statistics, dropout) or eval mode."""
        from torch.func import functional_call, vmap

        params, own_buffers = [self.member_params[i] for i in which], [self.member_buffers[i] for i in which]
        state = {n: torch.stack([p[n] for p in params]) for n in self.param_names}
        buffers = {n: torch.stack([b[n] for b in own_buffers]) for n in self.buffer_names}
        self.base.train(training)

        def one(state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            out = functional_call(self.base, state, (x,))
            return out, self.taps.pop()

        shared = all(x is xs[0] for x in xs)
        inputs = xs[0] if shared else torch.stack(list(xs))
        out, features = vmap(one, in_dims=(0, None if shared else 0), randomness="different")(
            {**state, **buffers}, inputs
        )
        if training:
            with torch.no_grad():  # the vmapped forward updated the stacked running statistics in place
                for name, stacked in buffers.items():
                    for own, value in zip(own_buffers, stacked):
                        own[name].copy_(value)
        return out, features


class GroupForward:
    """The forward pass of one step for every member of a group: a list of `Outputs`, one per member."""

    def __init__(self, exps: Sequence[Experiment]) -> None:
        self.fused = FusedStudents(exps) if len(exps) > 1 else None
        self.position = {id(e): i for i, e in enumerate(exps)}
        # The teachers of the first member that has them serve every member (the same teacher config: a group
        # requires it), tapped at every layer any member reads.
        with_teachers = [e for e in exps if e.teachers]
        self.teachers = with_teachers[0].teachers if with_teachers else []
        self.own_taps = with_teachers[0].teacher_taps if with_teachers else []  # also hooked on those teachers
        paths = [
            list(dict.fromkeys(p for e in with_teachers for p in e.teacher_taps[i].paths))
            for i in range(len(self.teachers))
        ]
        self.teacher_taps = [FeatureTaps(t, p) for t, p in zip(self.teachers, paths)] if self.fused is not None else []

    def __call__(
        self, exps: Sequence[Experiment], batches: Sequence[Batch], student_grad: bool = True
    ) -> list[Outputs]:
        if self.fused is None:
            (exp,), (batch,) = exps, batches
            with torch.set_grad_enabled(student_grad):
                return [exp.forward(*batch)]
        teacher_outs = self._teachers(exps, batches)
        which = [self.position[id(e)] for e in exps]
        with torch.set_grad_enabled(student_grad):
            out, features = self.fused.forward([b.x for b in batches], which, training=exps[0].student.training)
        return [
            Outputs(
                inputs=b.x,
                targets=b.y,
                student=ModelOutput(out[i], {k: f[i] for k, f in features.items()}),
                teachers=teacher_outs[i],
                index=b.indices,
            )
            for i, b in enumerate(batches)
        ]

    def _teachers(self, exps: Sequence[Experiment], batches: Sequence[Batch]) -> list[list[ModelOutput]]:
        """Each member's teacher outputs: its cached rows, else one teacher forward over the distinct batches."""
        distinct: dict[int, int] = {}  # id of a batch's inputs -> its position among the distinct ones
        for b in batches:
            distinct.setdefault(id(b.x), len(distinct))
        firsts = {id(b.x): b.x for b in batches}
        computed: list[list[ModelOutput]] = []
        cached = [e.cached_teacher_outputs(b.indices, b.views) for e, b in zip(exps, batches)]
        needs = [bool(e.teachers) and rows is None for e, rows in zip(exps, cached)]
        if any(needs):
            xs = list(firsts.values())
            outs = run_teachers(self.teachers, self.teacher_taps, torch.cat(xs) if len(xs) > 1 else xs[0])
            for taps in self.own_taps:
                taps.pop()  # what that member's own hooks kept is not used
            ends = list(itertools.accumulate(x.shape[0] for x in xs))
            computed = [
                [ModelOutput(o.out[start:end], {k: f[start:end] for k, f in o.features.items()}) for o in outs]
                for start, end in zip([0, *ends[:-1]], ends)
            ]
        result: list[list[ModelOutput]] = []
        for exp, rows, b in zip(exps, cached, batches):
            if not exp.teachers:
                result.append([])
            else:
                result.append(rows if rows is not None else computed[distinct[id(b.x)]])
        return result
