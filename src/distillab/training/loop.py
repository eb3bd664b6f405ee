"""The one generic training loop: every experiment, distillation or not, runs through `Trainer.fit`, and
so does every stage of it (init stages, then the main training)."""

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
from distillab.errors import Interrupted, InvalidArgument, NonFiniteLoss
from distillab.training.checkpoints import restore, save
from distillab.training.evaluate import evaluate, set_epoch
from distillab.training.pictures import Pictures
from distillab.training.progress import ProgressReport
from distillab.training.stages import Stage, init_stages, main_stage
from distillab.training.state import FitResult, Progress, StopSignals
from distillab.training.step import NonFiniteStep, Step, stop_message
from distillab.weighting import BackwardContext

if TYPE_CHECKING:
    from distillab.experiment import Experiment
    from distillab.logging import RunLogger
    from distillab.tasks import Task

log = logging.getLogger("distillab.training")

BACKWARDS = ("joint", "separate")


def best_tag(metric: str) -> str:
    """`val/acc` -> `val_best/acc`, the best epoch's value so far (after val/ in TensorBoard's Time Series,
    which opens on the training curves)."""
    return metric.replace("val/", "val_best/", 1)


class Trainer:
    """Fits a built `Experiment`, stage by stage: forward (student with taps, frozen teachers), named loss
    terms, weighting, the weighting's backward, optimizer step; validation, logging and checkpoints around it.

    The loop never forces a device sync on a step that does not log: scalars accumulate on the device and
    are read every `log_every` steps (and at each epoch's end).
    """

    def __init__(
        self,
        max_epochs: int = 10,
        seed: int = 0,
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
        self.ddp = strategy == "ddp"
        if self.ddp and (backward != "joint" or grad_norm_every):
            raise InvalidArgument(
                "strategy",
                strategy,
                "single with trainer.backward=separate or trainer.grad_norm_every (DDP synchronises one backward "
                "pass per step)",
            )
        self.max_epochs, self.seed, self.resume, self.strategy = max_epochs, seed, resume, strategy
        self.device = distributed.resolve_device(device)
        self.log_every, self.checkpoint_every, self.grad_norm_every = log_every, checkpoint_every, grad_norm_every
        self.image_every = image_every
        self.label = ""  # what the progress names (the runner sets "teacher" for a teacher's own run)
        self.pictures: Pictures | None = None
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.channels_last, self.compile = channels_last, compile
        self.step = Step(self.device, str(precision), nan_policy, backward == "separate", self.ddp)
        self.nan_policy = nan_policy
        self._prepared: Experiment | None = None
        self.stages: list[Stage] = []
        self._ctx = BackwardContext(shared=[])

    # set-up -------------------------------------------------------------------------------------------
    def prepare(self, exp: Experiment) -> None:
        """Memory format, compilation, the stages and the DDP wrapper; once, before the first step."""
        if self._prepared is exp:
            return
        self._prepared = exp
        self.step.scaler = self.step.new_scaler()  # nothing carries over from an earlier experiment
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
        self.stages = [*init_stages(exp), main]
        self.pictures = Pictures.for_run(exp, self.device, self.image_every)
        own = {name: [p for p in term.parameters() if p.requires_grad] for name, term in exp.objective.items()}
        self._ctx = BackwardContext(
            shared=[p for p in exp.student.parameters() if p.requires_grad], own=own, separate=self.step.separate
        )

    def to_device(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """A batch's inputs (channels_last when asked), targets and sample indices (if the loader gives them)."""
        device, x, y = self.device, batch[0], batch[1]
        if x.device != device or y.device != device:  # in-memory data already there skips `.to` (two dispatches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, (batch[2] if len(batch) > 2 else None)

    # the loop -----------------------------------------------------------------------------------------
    def fit(
        self, exp: Experiment, logger: RunLogger, run_dir: Path, resume_from: Mapping[str, Any] | None = None
    ) -> FitResult:
        """Run every stage; `resume_from` (a `last.pt` checkpoint) continues where it stopped, in any stage."""
        self.prepare(exp)
        p = restore(self, exp, resume_from) if resume_from is not None else Progress()
        start = time.perf_counter() - p.elapsed
        with StopSignals() as signals:
            while True:
                stage = self.stages[p.stage]
                if p.epoch < stage.epochs:
                    log.info(
                        "%s: %d epochs, %d parameters, lr %g",
                        "training" if stage.main else f"init stage {stage.name[5:]}",
                        stage.epochs,
                        sum(q.numel() for g in stage.optim.optimizer.param_groups for q in g["params"]),
                        stage.optim.optimizer.param_groups[0]["lr"],
                    )
                self._run_stage(stage, exp, p, logger, run_dir, signals, start)
                if stage.main:
                    break
                p.next_stage(stage.name, main=False)
                save(self, exp, p, run_dir / "checkpoints" / "last.pt")  # a resume starts the next stage, not this one
        result = p.result
        result.steps = p.stage_steps
        result.final_weights = {k.removeprefix("weight/"): v for k, v in p.last_weights.items()}
        result.train_time_s = time.perf_counter() - start
        result.samples_per_s = p.samples / p.train_seconds if p.train_seconds > 0 else 0.0
        if p.skipped_steps:
            log.warning("%d steps were skipped for a non-finite loss", p.skipped_steps)
        return result

    def _run_stage(
        self,
        stage: Stage,
        exp: Experiment,
        p: Progress,
        logger: RunLogger,
        run_dir: Path,
        signals: StopSignals,
        start: float,
    ) -> None:
        label = "epoch" if stage.main else stage.name
        batches = len(exp.data.train)  # type: ignore[arg-type]
        report = ProgressReport(self.progress, f"{self.label}: {label}" if self.label else label, stage.epochs, batches)
        for epoch in range(p.epoch, stage.epochs):
            set_epoch(exp.data.train, epoch)
            exp.student.train(stage.main or any(m is exp.student for m in stage.train_modules))
            for module in stage.train_modules:
                module.train()
            report.start_epoch(epoch, p.batch)
            epoch_start = time.perf_counter()
            for index, batch in enumerate(exp.data.train):
                if index < p.batch:
                    continue  # done before an interruption (same batches: the order depends on seed and epoch)
                self.train_batch(stage, exp, batch, p, logger, run_dir)
                report.update(p.step)
                signum = (
                    distributed.max_over_ranks(signals.signum) if self.ddp else signals.signum
                )  # all ranks stop together
                if signum:
                    report.close()
                    if stage.main:
                        p.train_seconds += time.perf_counter() - epoch_start
                    p.elapsed = time.perf_counter() - start
                    save(self, exp, p, run_dir / "checkpoints" / "last.pt")
                    where = (
                        f"epoch {epoch + 1}"
                        if stage.main
                        else f"epoch {epoch + 1} of the init stage of loss term {stage.name[5:]}"
                    )
                    raise Interrupted(
                        f"Interrupted by {signal.Signals(signum).name} after step {p.step} ({where}, batch {p.batch}); "
                        "checkpoints/last.pt holds that state",
                        signum,
                    )
            if stage.main:
                p.train_seconds += time.perf_counter() - epoch_start
            metrics = self._end_epoch(stage, exp, logger, run_dir, p, epoch, start)
            report.end_epoch(metrics)
        report.close()
        if p.sums.steps or p.sums.counts["point_steps"]:
            self._log_point(stage, exp, logger, p)

    def train_batch(
        self, stage: Stage, exp: Experiment, batch: Sequence[Tensor], p: Progress, logger: RunLogger, run_dir: Path
    ) -> None:
        """Everything the loop does for one batch: the step, the NaN policy, the running sums, logging."""
        x, y, index = self.to_device(batch)
        p.step, p.stage_steps, p.batch = p.step + 1, p.stage_steps + 1, p.batch + 1
        measure = stage.main and self.grad_norm_every > 0 and p.stage_steps % self.grad_norm_every == 0
        try:
            record, norms = self.step.run(stage, exp, self._ctx, x, y, index, measure)
        except NonFiniteStep as bad:
            if self.nan_policy == "stop":
                raise NonFiniteLoss(stop_message(bad, p, stage.main, stage.name)) from None
            p.skipped_steps += 1
            log.warning("step %d skipped: %s (trainer.nan_policy=skip_step)", p.step, bad)
            return
        if stage.main:
            p.samples += x.shape[0]
        p.sums.add(record, stage.tags, x.shape[0], stage.summarise)
        if norms is not None:
            p.norms.add((norms,), [f"grad_norm/{n}" for n in exp.weighting.names], 1)
        if p.step % self.log_every == 0:
            self._log_point(stage, exp, logger, p)

    def _end_epoch(
        self, stage: Stage, exp: Experiment, logger: RunLogger, run_dir: Path, p: Progress, epoch: int, start: float
    ) -> dict[str, float]:
        """Validation, the weighting's and scheduler's epoch hooks, logging, checkpoints (init stages: the
        epoch mean and last.pt)."""
        p.sums.flush(self.ddp, stage.summarise)
        means = self._means(*p.sums.pop("epoch"), exp.task)
        p.norms.pop("epoch")  # grad norms are logged per point only
        p.epoch, p.batch = epoch + 1, 0
        if stage.main:
            task, result = exp.task, p.result
            val = {f"val/{k}": v for k, v in evaluate(exp.student, exp.data.val, task, self.device, self.ddp).items()}
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
            p.last_weights = {k: v for k, v in means.items() if k.startswith("weight/")} or p.last_weights
            means = {**means, **val}
        p.elapsed = time.perf_counter() - start
        if stage.main and exp.task.is_better(means[exp.task.monitor], p.result.best.get(exp.task.monitor)):
            p.result.best, p.result.best_epoch = {k: v for k, v in means.items() if k.startswith("val/")}, epoch + 1
            save(self, exp, p, run_dir / "checkpoints" / "best.pt")
        if stage.main:  # the best epoch's metrics so far: a curve, and the HParams dashboard's "best" columns
            logger.scalars({best_tag(k): v for k, v in p.result.best.items()}, p.step)
            if self.pictures is not None and logger.enabled and (epoch + 1) % self.pictures.every == 0:
                self.pictures.draw(exp, logger, p.step)
        logger.write_pending()  # the epoch's points reach the event file now, not with the next training point
        if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == stage.epochs:
            save(self, exp, p, run_dir / "checkpoints" / "last.pt")
        label = "epoch" if stage.main else f"init stage {stage.name[5:]}: epoch"
        # about 20 epoch lines a stage on the console (the first, every n-th, the last); every one in the log file
        shown = epoch == 0 or (epoch + 1) % max(1, stage.epochs // 20) == 0 or epoch + 1 == stage.epochs
        log.log(
            logging.INFO if shown else logging.DEBUG,
            "%s %d/%d  %s",
            label,
            epoch + 1,
            stage.epochs,
            "  ".join(f"{k}={v:.4g}" for k, v in means.items()),
        )
        return means

    # logging ------------------------------------------------------------------------------------------
    def _means(self, sums: dict[str, float], steps: int, samples: int, task: Task) -> dict[str, float]:
        """Mean losses and weights over the steps summed (and the ranks), plus the task's train metrics."""
        means = {k: v / max(steps, 1) for k, v in sums.items() if not k.startswith("train/")}
        train = {k[6:]: v for k, v in sums.items() if k.startswith("train/")}
        return (
            {**means, **{f"train/{k}": v for k, v in task.reduce(train, samples).items()}}
            if train and samples
            else means
        )

    def _log_point(self, stage: Stage, exp: Experiment, logger: RunLogger, p: Progress) -> None:
        p.sums.flush(self.ddp, stage.summarise)
        means = self._means(*p.sums.pop("point"), exp.task)
        p.norms.flush()
        norms, measured, _ = p.norms.pop("point")
        rates = (
            exp.optim.learning_rates()
            if stage.main
            else {f"lr/{stage.name}": stage.optim.optimizer.param_groups[0]["lr"]}
        )
        logger.scalars({**means, **{k: v / measured for k, v in norms.items()}, **rates}, p.step)
        if stage.main:
            p.last_weights = {k: v for k, v in means.items() if k.startswith("weight/")} or p.last_weights
