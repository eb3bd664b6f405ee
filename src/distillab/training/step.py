"""One training step, the same for every stage and for a group of any size, in three parts the loop calls in
turn: `losses` (the group's forward and each member's loss, under autocast when asked), `backward` (the stage's,
or one for a fused group), `update` (clipping, the gradient check and the optimizer step, through the GradScaler
under 16-mixed); the NaN check between them."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from distillab import distributed
from distillab.errors import InvalidArgument
from distillab.weighting.base import Weighting

if TYPE_CHECKING:
    from distillab.training.group import Batch, GroupForward, Member
    from distillab.training.stages import Stage, StepOutput
    from distillab.training.state import Progress

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
NAN_POLICIES = ("stop", "skip_step", "off")


class NonFiniteStep(Exception):
    """A non-finite loss or gradient (`part`), found by the step's checks or read from a member's `Guard`
    (`step`: the step it happened at); the loop applies `nan_policy`."""

    def __init__(self, message: str, part: str = "loss", step: int | None = None) -> None:
        super().__init__(message)
        self.part, self.step = part, step


def what_was_not_finite(names: Sequence[str], values: Sequence[float], total: float) -> str:
    bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
    if bad:
        return f"loss terms {', '.join(bad)} were non-finite"
    return "every term was finite but their weighted total was not" if not math.isfinite(total) else ""


class Guard:
    """The NaN guard without a host read on a step that does not log: each step's total, term values and gradient
    norm are kept (detached; no extra kernel) until the loop reads them all at once with its logged scalars
    (`read`, every `trainer.log_every` steps and before validation, checkpoints and the end).

    `stop`: steps after a non-finite one may still run, but their state never reaches a checkpoint: the run stops
    at the read, naming the first bad step. `skip_step`: each step's update was already undone on the device
    where it was not finite (`masked_step`); the read names the skipped steps."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Tensor, Tensor, Tensor | None]] = []

    def note(self, step: int, out: StepOutput, norm: Tensor | None) -> None:
        self.pending.append((step, out.total.detach(), out.values.detach(), norm))

    def read(self, names: Sequence[str]) -> list[NonFiniteStep]:
        """The non-finite steps noted since the last read, in order (none: all finite); forgets them."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        totals = torch.stack([total.float() for _, total, _, _ in pending])
        norms = [norm.float() if norm is not None else totals.new_zeros(()) for *_, norm in pending]
        finite = torch.stack([torch.isfinite(totals), torch.isfinite(torch.stack(norms))]).tolist()  # the one read
        bad = []
        for i, (loss_ok, gradient_ok) in enumerate(zip(*finite)):
            if loss_ok and gradient_ok:
                continue
            step, total, values, _ = pending[i]
            if not loss_ok:
                bad.append(NonFiniteStep(what_was_not_finite(names, values.tolist(), total.item()), step=step))
            else:
                bad.append(NonFiniteStep("every loss term was finite, but the gradient was not", "gradient", step))
        return bad


def stop_message(bad: NonFiniteStep, p: Progress, main: bool, term: str | None) -> str:
    """What `trainer.nan_policy=stop` says: the step, where it was, and what the last checkpoint holds."""
    what = f"epoch {p.epoch + 1}" if main else f"epoch {p.epoch + 1} of the init stage of loss term {term}"
    kept = (
        f"checkpoints/last.pt holds the state after epoch {p.epoch}" + ("" if main else " of this init stage")
        if p.epoch
        else "checkpoints/last.pt holds the state after the init stages"
        if p.stage
        else "no checkpoint was written yet"
    )
    return (
        f"The {bad.part} became non-finite at step {bad.step or p.step} ({what}): {bad}; the run stopped and {kept} "
        "(lower optim.lr, set optim.grad_clip_norm, or use trainer.nan_policy=skip_step)."
    )


class Precision:
    """`trainer.precision`: the dtype the forward runs in under autocast (none at 32 bits) and the GradScaler it
    needs (16-mixed only: fp16 gradients underflow without loss scaling; bf16 has fp32's range)."""

    def __init__(self, precision: str, device: torch.device, cache: bool = True) -> None:
        if str(precision) not in PRECISIONS:
            raise InvalidArgument("precision", precision, "32, bf16-mixed or 16-mixed")
        self.dtype, self.device_type = PRECISIONS[str(precision)], device.type
        # autocast's cache of cast weights: off under trainer.cuda_graph (it cannot live across replays)
        self.cache = cache
        if self.dtype is torch.float16 and device.type == "cpu":
            logging.getLogger("distillab").warning(
                "trainer.precision=16-mixed on the CPU runs float16 through emulation, often slower than 32: use "
                "32 or bf16-mixed there"
            )

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The forward's context: autocast to `dtype`, or nothing at all at 32 bits."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=self.cache)

    def new_scaler(self) -> torch.amp.GradScaler:
        """A run's GradScaler (disabled, and free, unless 16-mixed)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


class Step:
    """The step's settings (precision, NaN policy, backward variant, DDP); each member has the GradScaler they
    imply (`precision.new_scaler`).

    Nothing optional costs anything when it is off: no autocast context at 32 bits, no GradScaler calls
    unless 16-mixed, no clipping without `optim.grad_clip_norm`. The NaN check reads nothing on a step that
    does not log (its `Guard` is read with the logged scalars); under DDP it reads one flag per step, so that
    every rank stops or skips together; `off` checks nothing.
    """

    def __init__(
        self, device: torch.device, precision: str, nan_policy: str, separate: bool, ddp: bool, graphed: bool = False
    ) -> None:
        self.precision = Precision(precision, device, cache=not graphed)
        if nan_policy not in NAN_POLICIES:
            raise InvalidArgument("nan_policy", nan_policy, "stop, skip_step or off")
        self.device, self.nan_policy, self.separate, self.ddp = device, nan_policy, separate, ddp

    def losses(
        self, forward: GroupForward, members: Sequence[Member], stages: Sequence[Stage], batches: Sequence[Batch]
    ) -> list[StepOutput]:
        """The group's forward and each member's loss (under autocast when asked)."""
        with self.precision.autocast():
            outputs = forward([m.exp for m in members], batches, stages[0].student_grad)
            # A stage's loss is distillab's own wrapper (`MainLoss`, `InitLoss`), which nobody hooks: its `forward`
            # is called directly, saving a module call's hook checks on every step. DDP's wrapper is called.
            return [(s.loss if self.ddp else s.loss.forward)(o) for s, o in zip(stages, outputs)]

    def check_finite(self, out: StepOutput, names: list[str]) -> None:
        """Raise `NonFiniteStep` (naming the terms) when the total is NaN or Inf; under DDP all ranks agree."""
        if self.nan_policy == "off":
            return
        finite = math.isfinite(out.total.item())
        if self.ddp and distributed.max_over_ranks(int(not finite)):  # every rank skips or stops together
            finite = False
        if not finite:
            said = what_was_not_finite(names, out.values.detach().tolist(), out.total.item())
            raise NonFiniteStep(said or "the loss was non-finite on another rank")

    def defers(self, weighting: Weighting) -> bool:
        """Whether the NaN guard of a member with this weighting is read with the logged scalars rather than every
        step. Every step under DDP, whose ranks agree on each step. Under `skip_step` also every step when the
        weighting decides in its own backward (GradNorm, torchjd's, DOT): the non-finite step must not reach the
        state it keeps there, so that step's backward is not run at all."""
        if self.nan_policy == "off" or self.ddp:
            return False
        return self.nan_policy == "stop" or not weighting.decides_in_backward()

    @staticmethod
    def gradient_norm(norm: Tensor | None, optimizer: torch.optim.Optimizer) -> Tensor | None:
        """A finite loss can still have a non-finite gradient (a term's backward dividing by zero): its update
        would write NaN into the weights. The clipping norm answers it where clipping is on; else one norm over
        the gradients. (Under 16-mixed the GradScaler skips such steps itself.)"""
        if norm is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        return norm

    def backward(
        self, members: Sequence[Member], stages: Sequence[Stage], outs: Sequence[StepOutput], measure_norms: bool
    ) -> tuple[list[Tensor | None], Tensor | None]:
        """Zero the gradients and put this step's into `.grad`; returns the weights each backward decided (or
        None) and, when `measure_norms`, each weighted term's gradient norm on the student.

        One member: its stage's backward (the weighting's: one pass, one per term, GradNorm's or torchjd's).
        Several (a fused group, whose weightings all take the default backward): one backward of the sum of
        their totals; the members' parameters are disjoint, so each gets exactly its own total's gradient."""
        for stage in stages:
            stage.optim.optimizer.zero_grad(set_to_none=True)
        if len(members) > 1:
            torch.stack([m.scaler.scale(out.total) for m, out in zip(members, outs)]).sum().backward()  # type: ignore[union-attr]
            return [None] * len(members), None
        (member,), (stage,), (out,) = members, stages, outs
        norms = term_grad_norms(out.total, out.values, member.ctx.shared) if measure_norms else None
        if member.scaler is not None and member.scaler.is_enabled():
            member.ctx.scale = member.scaler.scale
        return [stage.backward(out, member.ctx, member.exp)], norms

    def update(
        self, stage: Stage, scaler: torch.amp.GradScaler, total: Tensor, deferred: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """Clip, check the gradient, and step the stage's optimizer (through the GradScaler under 16-mixed); the
        warm-up and scheduler move on after it, outside the step (`Optimization.after_step`, called by the loop).
        Returns the gradient norm the guard reads later (`deferred`, see `defers`; else None) and, under a deferred
        `skip_step`, whether the step was kept (a device bool: its update is undone where False, `masked_step`)."""
        optim = stage.optim
        skipping = deferred and self.nan_policy == "skip_step"
        if scaler.is_enabled():
            scaler.unscale_(optim.optimizer)  # clipping sees the true gradients
            optim.clip()
            scaler.step(optim.optimizer)  # skipped when fp16 gradients overflowed
            scaler.update()
            return None, torch.isfinite(total.detach()) if skipping else None
        norm = optim.clip()
        keep = None
        if self.nan_policy != "off":
            norm = self.gradient_norm(norm, optim.optimizer)
            if not deferred and norm is not None and not math.isfinite(norm.item()):
                raise NonFiniteStep("every loss term was finite, but the gradient was not", part="gradient")
        if skipping:
            keep = torch.isfinite(total.detach()) & (torch.isfinite(norm) if norm is not None else True)
            masked_step(optim.optimizer, keep)
        else:
            optim.optimizer.step()
        return (norm if deferred else None), keep


def masked_step(optimizer: torch.optim.Optimizer, keep: Tensor) -> None:
    """`optimizer.step()`, undone on the device where `keep` is False: every parameter and optimizer state tensor
    on `keep`'s device is put back as it was, without reading `keep` on the host. The cost is one copy of those
    tensors per step, paid under `trainer.nan_policy=skip_step` only.

    A step that creates state (the first, or a parameter's first gradient) reads `keep` once: skipped, the new
    state is removed, since what an optimizer starts from is its own (zeros for Adam's moments, `lr` for Rprop's
    step sizes, 1 for NAdam's product). State kept on the host while the parameters are on a GPU (Adam's step
    count, unless `capturable`) still advances on a skipped step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def tensors() -> dict[tuple[int, str], Tensor]:  # by parameter (alive throughout) and state key
        found: dict[tuple[int, str], Tensor] = {}
        for p in params:
            found[id(p), ""] = p
            found.update({(id(p), k): v for k, v in optimizer.state.get(p, {}).items() if isinstance(v, Tensor)})
        return {slot: t for slot, t in found.items() if t.device == keep.device}

    with torch.no_grad():
        stateless = [p for p in params if not optimizer.state.get(p)]
        before = {slot: t.clone() for slot, t in tensors().items()}
        optimizer.step()
        if any(optimizer.state.get(p) for p in stateless) and not keep:  # the one host read: state was created
            for p in stateless:
                optimizer.state.pop(p, None)
        for slot, t in tensors().items():
            if slot in before:  # (state just created and kept stays)
                t.copy_(torch.where(keep, t, before[slot]))


def term_grad_norms(total: Tensor, values: Tensor, params: list[nn.Parameter]) -> Tensor:
    """The norm of each weighted term's gradient on `params` (one extra backward per term), stacked."""
    (coefficients,) = torch.autograd.grad(total, values, retain_graph=True)
    norms = []
    for i in range(len(values)):
        grads = torch.autograd.grad(values[i] * coefficients[i], params, retain_graph=True, allow_unused=True)
        norms.append(torch.cat([g.flatten() for g in grads if g is not None] or [values.new_zeros(1)]).norm())
    return torch.stack(norms)
