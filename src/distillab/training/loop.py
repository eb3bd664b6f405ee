"""The one generic training loop: every experiment, distillation or not, runs through `Trainer.fit_group` (a
single run as a group of one; `Trainer.fit` wraps that for notebooks and tests), and so does every stage of it
(init stages, then the main training)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from distillab import checks, distributed
from distillab.checkpoint import set_rng_state
from distillab.errors import Interrupted, InvalidArgument, NonFiniteLoss
from distillab.run_logger import WEIGHT
from distillab.training.checkpoints import restore, save
from distillab.training.evaluate import evaluate, evaluate_group, set_epoch
from distillab.training.graph import StepGraph, check_cuda_graph
from distillab.training.group import Batch, GroupForward, Member
from distillab.training.pictures import Pictures
from distillab.training.progress import ProgressReport
from distillab.training.stages import Stage, StepOutput, init_stages, main_stage
from distillab.training.state import FitResult, StopSignals
from distillab.training.step import NonFiniteStep, Step, stop_message
from distillab.weighting import BackwardContext

if TYPE_CHECKING:
    from distillab.experiment import Experiment
    from distillab.run_logger import RunLogger
    from distillab.tasks import Task

log = logging.getLogger("distillab.training")

BACKWARDS = ("joint", "separate")


def _cloned(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone()


def best_tag(metric: str) -> str:
    """`val/acc` -> `val_best/acc`, the best epoch's value so far (after val/ in TensorBoard's Time Series,
    which opens on the training curves)."""
    return metric.replace("val/", "val_best/", 1)


def check_compile_backend(backend: str) -> None:
    """`trainer.compile=<backend>` names one of torch.compile's backends (said at set-up, not when the teacher
    stage first compiles a model)."""
    if backend not in torch.compiler.list_backends(exclude_tags=()):  # debug ones too, e.g. aot_eager
        shown = ", ".join(torch.compiler.list_backends())  # the ones meant for use
        raise InvalidArgument("compile", backend, f"true, false or a torch.compile backend such as {shown}")


class Trainer:
    """Fits a built `Experiment`, stage by stage: forward (student with taps, frozen teachers), named loss
    terms, weighting, the weighting's backward, optimizer step; validation, logging and checkpoints around it.

    The loop never forces a device sync on a step that does not log: scalars accumulate on the device and
    are read every `log_every` steps (and at each epoch's end).
    """

    def __init__(
        self,
        max_epochs: int = 10,
        seed: int = 0,  # (trainer.seed: the runner seeds everything before it builds; taken here as a key of trainer)
        device: str = "auto",
        log_every: int = 10,
        checkpoint_every: int = 1,
        progress: bool | None = None,
        backward: str = "joint",
        grad_norm_every: int = 0,
        nan_policy: str = "stop",
        resume: bool = False,
        precision: str | int = "32",
        channels_last: bool = False,
        compile: bool | str = False,
        strategy: str = "single",
        image_every: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        for name, value, low in (
            ("max_epochs", max_epochs, 1),
            ("log_every", log_every, 1),
            ("checkpoint_every", checkpoint_every, 1),
            ("grad_norm_every", grad_norm_every, 0),
        ):
            checks.integer(name, value, at_least=low)
        if image_every is not None:
            checks.integer("image_every", image_every, at_least=0)
        if backward not in BACKWARDS:
            raise InvalidArgument("backward", backward, "joint or separate")
        distributed.check_strategy(strategy)
        if compile not in (True, False, None):  # null: off, as false
            check_compile_backend(str(compile))
        self.ddp = strategy == "ddp"
        if self.ddp and (backward != "joint" or grad_norm_every):
            raise InvalidArgument(
                "strategy",
                strategy,
                "single with trainer.backward=separate or trainer.grad_norm_every (DDP synchronises one backward "
                "pass per step)",
            )
        self.max_epochs, self.resume = max_epochs, resume
        self.device = distributed.resolve_device(device)
        self.log_every, self.checkpoint_every, self.grad_norm_every = log_every, checkpoint_every, grad_norm_every
        self.image_every = image_every
        self.label = ""  # what the progress names (the runner sets "teacher" for a teacher's own run)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.channels_last, self.compile = channels_last, compile
        if cuda_graph:
            check_cuda_graph(self.device, str(precision), strategy, compile)
        self.step = Step(self.device, str(precision), nan_policy, backward == "separate", self.ddp, cuda_graph)
        self.nan_policy = nan_policy
        self.forward: GroupForward | None = None
        self.graph = StepGraph() if cuda_graph else None

    # set-up -------------------------------------------------------------------------------------------
    def prepare(
        self, exp: Experiment, run_dir: Path, label: str = "", resume_from: Mapping[str, Any] | None = None
    ) -> Member:
        """Memory format, compilation, the stages and the DDP wrapper: a `Member` ready for `fit_group`, its state
        restored from `resume_from` (a `last.pt` checkpoint; one that does not fit is refused here, before any
        member of a group trains). Also makes it the trainer's group of one, whose steps `train_batch` can take."""
        member = Member(exp, run_dir, label=label, scaler=self.step.precision.new_scaler(), resume_from=resume_from)
        if self.channels_last:
            for model in (exp.student, *exp.teachers):
                model.to(memory_format=torch.channels_last)
        if self.compile:
            backend = "inductor" if self.compile is True else str(self.compile)
            for model in (exp.student, *exp.teachers):
                model.compile(backend=backend)  # in place: state_dict keys and taps are unchanged
        main = main_stage(exp, self.max_epochs)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            main.loss = DistributedDataParallel(
                main.loss, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        member.stages = [*init_stages(exp), main]
        member.pictures = Pictures.for_run(exp, self.device, self.image_every)
        own = {name: [p for p in term.parameters() if p.requires_grad] for name, term in exp.objective.items()}
        member.ctx = BackwardContext(
            shared=[p for p in exp.student.parameters() if p.requires_grad], own=own, separate=self.step.separate
        )
        if resume_from is not None:
            member.p = restore(self, member, resume_from)
        self.join([member])
        return member

    def join(self, members: Sequence[Member]) -> None:
        """Make the prepared `members` the group whose steps `train_batch` takes: their students run as one
        network (two or more), their teachers once per distinct batch."""
        self.forward = GroupForward([m.exp for m in members])

    def to_device(self, batch: Sequence[Tensor]) -> Batch:
        """A batch's inputs (channels_last when asked), targets, sample indices and views (where given)."""
        device, x, y = self.device, batch[0], batch[1]
        if x.device != device or y.device != device:  # in-memory data already there skips `.to` (two dispatches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, *batch[2:4])

    # the loop -----------------------------------------------------------------------------------------
    def fit(
        self, exp: Experiment, logger: RunLogger, run_dir: Path, resume_from: Mapping[str, Any] | None = None
    ) -> FitResult:
        """One run: a group of one. `resume_from` (a `last.pt` checkpoint) continues where it stopped."""
        member = self.prepare(exp, run_dir, resume_from=resume_from)
        member.logger = logger
        (result,) = self.fit_group([member])
        if member.error is not None:
            raise member.error
        return result

    def fit_group(self, members: Sequence[Member]) -> list[FitResult]:
        """Train the members (prepared, with their loggers) together, step by step, every stage; each resumes
        where its `resume_from` stopped (the RNG states as they were then), and all must be at the same point. A
        member the NaN policy stops gets its `error` and the others go on; a signal checkpoints every member and
        raises `Interrupted`."""
        self.join(members)
        now = time.perf_counter()
        for m in members:
            if m.resume_from is not None:
                set_rng_state(m.resume_from["rng"])
            m.start = now - m.p.elapsed
        where = {(m.p.stage, m.p.epoch, m.p.batch) for m in members}
        if len(where) > 1:
            raise ValueError(f"the members of a group must start at one point; they are at {sorted(where)}")
        with StopSignals() as signals:
            while live := [m for m in members if m.error is None]:
                index = live[0].p.stage
                stage = live[0].stages[index]
                if live[0].p.epoch < stage.epochs:
                    log.info(
                        "%s: %d epochs, %d parameters, lr %g%s",
                        "training" if stage.main else f"init stage {stage.term}",
                        stage.epochs,
                        sum(q.numel() for g in stage.optim.optimizer.param_groups for q in g["params"]),
                        stage.optim.optimizer.param_groups[0]["lr"],
                        f" ({len(live)} runs trained as one)" if len(live) > 1 else "",
                    )
                self._run_stage(live, index, signals)
                if stage.main:
                    break
                for m in live:
                    if m.error is None:
                        m.p.next_stage(stage.name, main=False)
                        save(self, m, m.run_dir / "checkpoints" / "last.pt")  # a resume starts the next stage
        for m in members:
            m.result = self._result(m)
        return [m.result for m in members]  # type: ignore[misc]

    def _result(self, m: Member) -> FitResult:
        p = m.p
        result = p.result
        result.steps = p.stage_steps
        result.final_weights = {k.removeprefix(WEIGHT): v for k, v in p.last_weights.items()}
        result.train_time_s = time.perf_counter() - m.start
        result.samples_per_s = p.samples / p.train_seconds if p.train_seconds > 0 else 0.0
        if p.skipped_steps:
            with m.speaking():
                log.warning("%d steps were skipped for a non-finite loss", p.skipped_steps)
        return result

    def _run_stage(self, members: list[Member], index: int, signals: StopSignals) -> None:
        first = members[0]
        stage = first.stages[index]
        label = "epoch" if stage.main else stage.name
        loaders = list({id(m.exp.data.train): m.exp.data.train for m in members}.values())  # shared data once
        batches = len(loaders[0])
        report = ProgressReport(self.progress, f"{self.label}: {label}" if self.label else label, stage.epochs, batches)
        for epoch in range(first.p.epoch, stage.epochs):
            for loader in loaders:
                set_epoch(loader, epoch)
            for m in members:
                if stage.main:
                    m.exp.objective.set_epoch(epoch)  # a term's curriculum (CTKD)
                m.exp.student.train(stage.main or any(x is m.exp.student for x in m.stages[index].train_modules))
                for module in m.stages[index].train_modules:
                    module.train()
            report.start_epoch(epoch, first.p.batch)
            epoch_start = time.perf_counter()
            for number, loaded in enumerate(zip(*loaders)):
                if number < first.p.batch:
                    continue  # done before an interruption (same batches: the order depends on seed and epoch)
                by_loader = dict(zip(map(id, loaders), loaded))
                self.train_batch(
                    members, [m.stages[index] for m in members], [by_loader[id(m.exp.data.train)] for m in members]
                )
                members[:] = [m for m in members if m.error is None]
                if not members:
                    report.close()
                    return
                first = members[0]
                report.update(first.p.step)
                signum = (
                    distributed.max_over_ranks(signals.signum) if self.ddp else signals.signum
                )  # all ranks stop together
                if signum:
                    report.close()
                    for m in [m for m in members if self._guard_passes(m, m.stages[index])]:
                        if stage.main:
                            m.p.train_seconds += time.perf_counter() - epoch_start
                        m.p.elapsed = time.perf_counter() - m.start
                        save(self, m, m.run_dir / "checkpoints" / "last.pt")
                    p = first.p
                    where = (
                        f"epoch {epoch + 1}"
                        if stage.main
                        else f"epoch {epoch + 1} of the init stage of loss term {stage.term}"
                    )
                    raise Interrupted(
                        f"Interrupted by {signal.Signals(signum).name} after step {p.step} ({where}, batch {p.batch}); "
                        "checkpoints/last.pt holds that state",
                        signum,
                        every_rank=self.ddp,
                    )
            members[:] = [m for m in members if self._guard_passes(m, m.stages[index])]  # before validation, saves
            if not members:
                report.close()
                return
            for m in members:
                if stage.main:
                    m.p.train_seconds += time.perf_counter() - epoch_start
            for m, val in zip(members, self._validate(members) if stage.main else [{}] * len(members)):
                metrics = self._end_epoch(m, m.stages[index], epoch, val)
            report.end_epoch(metrics)
        report.close()
        for m in members:
            if m.p.sums.steps or m.p.sums.pending or m.p.sums.counts["point_steps"]:
                self._log_point(m, m.stages[index])

    def train_batch(
        self, members: Sequence[Member], stages: Sequence[Stage], batches: Sequence[Sequence[Tensor]]
    ) -> None:
        """Everything the loop does for one batch of each member (a group of one: one batch): the device's part of
        the step (`_step`, or the replay of its CUDA graph under `trainer.cuda_graph`), then the host's: scheduler,
        NaN policy, running sums, logging."""
        moved: dict[int, Batch] = {}
        for batch in batches:  # members on the same batch share one copy on the device
            if id(batch) not in moved:
                moved[id(batch)] = self.to_device(batch)
        on_device = [moved[id(b)] for b in batches]
        for m in members:
            m.p.step, m.p.stage_steps, m.p.batch = m.p.step + 1, m.p.stage_steps + 1, m.p.batch + 1
        first, stage = members[0], stages[0]
        measure = stage.main and self.grad_norm_every > 0 and first.p.stage_steps % self.grad_norm_every == 0
        deferred = [self.step.defers(m.exp.weighting) for m in members]
        graph = self.graph if self.graph is not None and self._graphable(members, stage, measure) else None
        if graph is not None:
            done, norms = graph.run(
                on_device[0],
                lambda batch: self._step(members, stages, [batch], deferred, False),
                stage.optim.optimizer,
                first.p.epoch,
                first.p.step,
            )
        else:
            done, norms = self._step(members, stages, on_device, deferred, measure)
        for i, out, weights, norm, keep in done:
            m, s, moved_batch = members[i], stages[i], on_device[i]
            s.optim.after_step()  # warm-up and per-step schedulers move on after a skipped step too (nothing is read)
            record = s.record(out, weights)
            if graph is not None:  # the graph's own tensors, which the next replay overwrites: what is kept is copied
                record, norm, keep = type(record)(*(t.clone() for t in record)), _cloned(norm), _cloned(keep)
                out = out._replace(total=out.total.detach().clone(), values=out.values.detach().clone())
            if deferred[i]:
                m.guard.note(m.p.step, out, norm)
            p = m.p
            if s.main:
                p.samples += moved_batch.x.shape[0]
            p.sums.add(record, s.tags, moved_batch.x.shape[0], s.summarise, keep)
            if norms is not None:
                p.norms.add((norms,), [f"grad_norm/{n}" for n in m.exp.weighting.names], 1, keep=keep)
            if p.step % self.log_every == 0 and self._guard_passes(m, s):
                self._log_point(m, s)

    def _step(
        self,
        members: Sequence[Member],
        stages: Sequence[Stage],
        batches: Sequence[Batch],
        deferred: Sequence[bool],
        measure: bool,
    ) -> tuple[list[tuple[int, StepOutput, Tensor | None, Tensor | None, Tensor | None]], Tensor | None]:
        """The device's part of one step: the forward and losses, the backward, each member's update. A member whose
        NaN check reads the host (not `deferred`) and fails is left out. Returns, per member that stepped, its
        position, `StepOutput`, the weights its backward decided, the gradient norm its guard reads later and
        whether its step was kept (`Step.update`); and each term's gradient norm when `measure`."""
        assert self.forward is not None, "Trainer.prepare or fit_group first"
        outs = self.step.losses(self.forward, members, stages, batches)
        kept = []
        for i, (m, s, out) in enumerate(zip(members, stages, outs)):
            if not deferred[i]:
                try:
                    self.step.check_finite(out, m.exp.weighting.names if s.main else [s.name])
                except NonFiniteStep as bad:
                    self._non_finite(m, s, bad)
                    continue
            kept.append(i)
        if not kept:
            return [], None
        decided, norms = self.step.backward(
            [members[i] for i in kept], [stages[i] for i in kept], [outs[i] for i in kept], measure
        )
        done = []
        for i, weights in zip(kept, decided):
            m, s = members[i], stages[i]
            assert m.scaler is not None
            try:
                norm, keep = self.step.update(s, m.scaler, outs[i].total, deferred[i])
            except NonFiniteStep as bad:
                self._non_finite(m, s, bad)
                continue
            done.append((i, outs[i], weights, norm, keep))
        return done, norms

    def _graphable(self, members: Sequence[Member], stage: Stage, measure: bool) -> bool:
        """Whether `trainer.cuda_graph` replays this step (else it runs eagerly: see `training.graph`; the fused
        launcher runs a job with it alone)."""
        return len(members) == 1 and stage.main and not measure

    def _guard_passes(self, m: Member, stage: Stage) -> bool:
        """Read the member's deferred NaN guard (`Guard`): its skipped steps are said (`skip_step`), or the first
        non-finite one stops the member (`stop`: then False)."""
        for bad in m.guard.read(m.exp.weighting.names if stage.main else [stage.name]):
            self._non_finite(m, stage, bad)
            if m.error is not None:
                return False
        return True

    def _non_finite(self, m: Member, stage: Stage, bad: NonFiniteStep) -> None:
        """The NaN policy, for one member: stop it (`m.error`; a group's others go on) or skip its step (already
        undone on the device when the guard was deferred)."""
        with m.speaking():
            if self.nan_policy == "stop":
                m.error = NonFiniteLoss(stop_message(bad, m.p, stage.main, stage.term), every_rank=self.ddp)
                if m.label:
                    log.error("%s stopped: %s", m.label, m.error)
                return
            m.p.skipped_steps += 1
            log.warning("step %d skipped: %s (trainer.nan_policy=skip_step)", bad.step or m.p.step, bad)

    def _validate(self, members: Sequence[Member]) -> list[dict[str, float]]:
        """Each member's validation metrics (`val/...`): a fused group's students in one vmapped forward."""
        fused = self.forward.fused if self.forward is not None else None
        if fused is None:
            metrics = [evaluate(m.exp.student, m.exp.data.val, m.exp.task, self.device, self.ddp) for m in members]
        else:
            which = [self.forward.position[id(m.exp)] for m in members]  # type: ignore[union-attr]
            metrics = evaluate_group(
                lambda xs: fused.forward(xs, which, training=False)[0],
                [m.exp.data.val for m in members],
                [m.exp.task for m in members],
                self.device,
            )
        return [{f"val/{k}": v for k, v in values.items()} for values in metrics]

    def _end_epoch(self, m: Member, stage: Stage, epoch: int, val: dict[str, float]) -> dict[str, float]:
        """The validation metrics `val` (main training), the weighting's and scheduler's epoch hooks, logging,
        checkpoints (init stages: the epoch mean and last.pt)."""
        with m.speaking():
            return self._end_epoch_of(m, stage, epoch, val)

    def _end_epoch_of(self, m: Member, stage: Stage, epoch: int, val: dict[str, float]) -> dict[str, float]:
        exp, p, logger = m.exp, m.p, m.logger
        assert logger is not None
        p.sums.flush(self.ddp, stage.summarise)
        means = self._means(*p.sums.pop("epoch"), exp.task)
        p.norms.pop("epoch")  # grad norms are logged per point only
        p.epoch, p.batch = epoch + 1, 0
        if stage.main:
            result = p.result
            bad = [f"{k}={v}" for k, v in val.items() if not math.isfinite(v)]
            if bad:  # training was finite (the guard), so the validation data or overflowing outputs are to blame
                log.warning(
                    "validation after epoch %d gave %s: check the validation data for NaN/Inf inputs, or the "
                    "student's outputs for overflow",
                    epoch + 1,
                    ", ".join(bad),
                )
            exp.weighting.on_epoch_end(epoch, {**means, **val})
            logger.scalars({**val, **exp.weighting.epoch_scalars()}, p.step)
            exp.optim.after_epoch(val)
            result.final, result.epochs = val, epoch + 1
            # the last epoch's mean weights are the run's final_weights (its last epoch line shows them too)
            p.last_weights = {k: v for k, v in means.items() if k.startswith(WEIGHT)} or p.last_weights
            means = {**means, **val}
        p.elapsed = time.perf_counter() - m.start
        if stage.main and exp.task.is_better(means[exp.task.monitor], p.result.best.get(exp.task.monitor)):
            p.result.best, p.result.best_epoch = {k: v for k, v in means.items() if k.startswith("val/")}, epoch + 1
            save(self, m, m.run_dir / "checkpoints" / "best.pt")
        if stage.main:  # the best epoch's metrics so far: a curve, and the HParams dashboard's "best" columns
            logger.scalars({best_tag(k): v for k, v in p.result.best.items()}, p.step)
            if m.pictures is not None and logger.enabled and (epoch + 1) % m.pictures.every == 0:
                m.pictures.draw(exp, logger, p.step)
        logger.write_pending()  # the epoch's points reach the event file now, not with the next training point
        if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == stage.epochs:
            save(self, m, m.run_dir / "checkpoints" / "last.pt")
        label = "epoch" if stage.main else f"init stage {stage.term}: epoch"
        # about 20 epoch lines a stage on the console (the first, every n-th, the last); every one in the log file
        shown = epoch == 0 or (epoch + 1) % max(1, stage.epochs // 20) == 0 or epoch + 1 == stage.epochs
        log.log(
            logging.INFO if shown else logging.DEBUG,
            "%s%s %d/%d  %s",
            f"{m.label} " if m.label else "",
            label,
            epoch + 1,
            stage.epochs,
            "  ".join(f"{k}={v:.4g}" for k, v in means.items()),
        )
        return means

    # logging ------------------------------------------------------------------------------------------
    def _means(self, sums: dict[str, float], steps: int, samples: int, task: Task) -> dict[str, float]:
        """Mean losses and weights over the steps summed (and the ranks), plus the task's train metrics."""
        if not steps:  # every step since the last point was skipped (nan_policy=skip_step): nothing to average
            return {}
        means = {k: v / steps for k, v in sums.items() if not k.startswith("train/")}
        train = {k[6:]: v for k, v in sums.items() if k.startswith("train/")}
        return (
            {**means, **{f"train/{k}": v for k, v in task.reduce(train, samples).items()}}
            if train and samples
            else means
        )

    def _log_point(self, m: Member, stage: Stage) -> None:
        exp, p, logger = m.exp, m.p, m.logger
        assert logger is not None
        p.sums.flush(self.ddp, stage.summarise)
        means = self._means(*p.sums.pop("point"), exp.task)
        p.norms.flush()
        norms, measured, _ = p.norms.pop("point")
        rates = (
            exp.optim.rates_used() if stage.main else {f"lr/{stage.name}": stage.optim.optimizer.param_groups[0]["lr"]}
        )
        own = exp.objective.scalars() if stage.main else {}  # the terms' own state (CTKD's temperature)
        logger.scalars({**means, **{k: v / measured for k, v in norms.items()}, **rates, **own}, p.step)
