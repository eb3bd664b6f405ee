"""The one generic training loop: every experiment, distillation or not, runs through `Trainer.fit`."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from distillab import distributed
from distillab.distributed import resolve_device
from distillab.checkpoint import rng_state, save_atomic, set_rng_state
from distillab.errors import ConfigError, Interrupted, NonFiniteLoss

if TYPE_CHECKING:
    from distillab.build import Experiment
    from distillab.logging import RunLogger
    from distillab.objective import Outputs
    from distillab.tasks import Task

log = logging.getLogger(__name__)


PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class RunningSums:
    """Named scalars summed on the device step after step; read back (one sync) only when asked."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.total: Tensor | None = None
        self.count = 0

    def add(self, values: Mapping[str, Tensor]) -> None:
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        if self.total is None:
            self.names, self.total = list(values), stacked
        else:
            self.total = self.total.to(stacked.device) + stacked  # a restored total may come from the CPU
        self.count += 1

    def pop(self, over_ranks: bool = False) -> dict[str, float]:
        """Sums (not means) since the last pop; `over_ranks`: added up over all DDP ranks."""
        if self.total is None:
            return {}
        total = distributed.sum_over_ranks(self.total) if over_ranks else self.total
        result = dict(zip(self.names, total.tolist()))
        self.total, self.count = None, 0
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "total": self.total, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.names, self.total, self.count = list(state["names"]), state["total"], state["count"]


@dataclass
class FitResult:
    """What `Trainer.fit` reports back; `cli` turns it into metrics.json."""

    best: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    final_weights: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    steps: int = 0
    train_time_s: float = 0.0
    samples_per_s: float = 0.0


@dataclass
class Progress:
    """Where the loop is: with the modules' and optimizer's states, all a resumed run needs to go on
    exactly as if it had never stopped (the data order depends only on the seed and the epoch)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0
    samples: int = 0
    train_seconds: float = 0.0  # time in training steps (for samples/s)
    elapsed: float = 0.0  # time in `fit`, validation included
    skipped_steps: int = 0
    last_weights: dict[str, float] = field(default_factory=dict)
    result: FitResult = field(default_factory=FitResult)
    interval: RunningSums = field(default_factory=RunningSums)  # since the last TensorBoard point
    epoch_sums: RunningSums = field(default_factory=RunningSums)

    def state_dict(self) -> dict[str, Any]:
        plain = {k: v for k, v in vars(self).items() if not isinstance(v, (RunningSums, FitResult))}
        return {**plain, "result": asdict(self.result), "interval": self.interval.state_dict(), "epoch_sums": self.epoch_sums.state_dict()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Progress:
        plain = {k: v for k, v in state.items() if k not in ("result", "interval", "epoch_sums")}
        progress = cls(**plain, result=FitResult(**state["result"]))
        progress.interval.load_state_dict(state["interval"])
        progress.epoch_sums.load_state_dict(state["epoch_sums"])
        return progress


class StopSignals:
    """SIGTERM and SIGINT during training only set `signum`; the loop checks it after each step, so the
    step in flight finishes and a checkpoint is written. A second signal acts as it normally would."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _NonFiniteStep(Exception):
    """Raised by `training_step` before its backward pass; `fit` applies `nan_policy`."""


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Tell a loader (or its sampler) which epoch it serves: the shuffle order depends on it."""
    for obj in (loader, getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def evaluate(model: torch.nn.Module, loader: Iterable, task: Task, device: torch.device, over_ranks: bool = False) -> dict[str, float]:
    """Validation metrics of `model` on `loader` (eval mode; the caller's mode is restored).
    `over_ranks`: each DDP rank holds a part of the data, and the sums are added up over the ranks."""
    was_training = model.training
    model.eval()
    sums = RunningSums()
    with torch.no_grad():
        for batch in loader:
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            sums.add(task.val_sums(model(x), y))
    model.train(was_training)
    return task.reduce(sums.pop(over_ranks))


class LossStep(nn.Module):
    """Student forward, loss terms and weighting as one module: what DDP wraps, so the gradients of
    everything trainable (student, projectors, learnable weights) are averaged over the ranks."""

    def __init__(self, exp: Experiment) -> None:
        super().__init__()
        self.student, self.objective, self.weighting = exp.student, exp.objective, exp.weighting
        self.exp = exp  # a plain attribute: the frozen teachers are not part of what DDP synchronises

    def forward(self, x: Tensor, y: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Outputs]:
        outputs = self.exp.forward(x, y, index)
        losses = self.objective(outputs)
        values = torch.stack([losses[name] for name in self.weighting.names])
        total, weights = self.weighting(values)
        return total, values, weights, outputs


def backward_per_term(total: Tensor, values: Tensor, weighting_params: list[Tensor]) -> None:
    """Gradients of `total` by one backward pass per loss term, accumulating into `.grad`.

    The coefficient of each term, d total / d L_i (its weight for a weighted sum), comes from the cheap
    graph of the weighting; then `L_i` is back-propagated alone with that coefficient. The weighting's
    own parameters get their gradient from `total` directly. The result equals `total.backward()`.
    """
    (coefficients,) = torch.autograd.grad(total, values, retain_graph=True)
    if weighting_params:
        torch.autograd.backward(total, inputs=weighting_params, retain_graph=True)
    last = len(values) - 1
    for i in range(len(values)):
        values[i].backward(coefficients[i], retain_graph=i < last)


def term_grad_norms(total: Tensor, values: Tensor, names: list[str], params: list[Tensor]) -> dict[str, Tensor]:
    """`grad_norm/<term>`: norm of each weighted term's gradient on `params` (one extra backward per term)."""
    (coefficients,) = torch.autograd.grad(total, values, retain_graph=True)
    norms = {}
    for i, name in enumerate(names):
        grads = torch.autograd.grad(values[i] * coefficients[i], params, retain_graph=True, allow_unused=True)
        norms[f"grad_norm/{name}"] = torch.cat([g.flatten() for g in grads if g is not None] or [values.new_zeros(1)]).norm()
    return norms


class Trainer:
    """Fits a built `Experiment`: forward (student with taps, frozen teachers), named loss terms,
    weighting, backward, optimizer step; validation, logging and checkpoints around it.

    The loop never forces a device sync on a step that does not log: scalars accumulate on the device
    and are read every `log_every` steps.
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
    ) -> None:
        if backward not in ("joint", "separate"):
            raise ConfigError(f"trainer.backward={backward!r} is not valid: use 'joint' or 'separate'.")
        if nan_policy not in ("stop", "skip_step", "off"):
            raise ConfigError(f"trainer.nan_policy={nan_policy!r} is not valid: use 'stop', 'skip_step' or 'off'.")
        if str(precision) not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r} is not valid: use 32, bf16-mixed or 16-mixed.")
        distributed.check_strategy(strategy)
        if strategy == "ddp" and (backward != "joint" or grad_norm_every):
            raise ConfigError(
                "trainer.strategy=ddp synchronises one backward pass per step: use trainer.backward=joint and trainer.grad_norm_every=0."
            )
        self.nan_policy, self.resume = nan_policy, resume
        self.max_epochs, self.seed, self.device = max_epochs, seed, resolve_device(device)
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.backward, self.grad_norm_every = backward, grad_norm_every
        self.grad_norm_sums = RunningSums()  # filled only on the steps that measure them
        self.precision, self.autocast_dtype = str(precision), PRECISIONS[str(precision)]
        self.channels_last, self.compile, self.strategy = channels_last, compile, strategy
        self.ddp = strategy == "ddp"
        self.scaler = self.new_scaler()
        self._step: nn.Module | None = None  # LossStep (DDP-wrapped under trainer.strategy=ddp), made by `prepare`
        self._prepared: Experiment | None = None

    # set-up -------------------------------------------------------------------------------------
    def prepare(self, exp: Experiment) -> None:
        """Memory format, compilation and the DDP wrapper; once, before the first step."""
        if self._prepared is exp:
            return
        self._prepared = exp
        self.scaler = self.new_scaler()  # nothing carries over from an earlier experiment
        if self.channels_last:
            for model in (exp.student, *exp.teachers):
                model.to(memory_format=torch.channels_last)
        if self.compile:
            backend = "inductor" if self.compile is True else str(self.compile)
            for model in (exp.student, *exp.teachers):
                model.compile(backend=backend)  # in place: state_dict keys and taps are unchanged
        step = LossStep(exp)
        if self.ddp:
            step = DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._step = step

    def new_scaler(self) -> torch.amp.GradScaler:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # one step ---------------------------------------------------------------------------------
    def training_step(self, exp: Experiment, x: Tensor, y: Tensor, step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        self.prepare(exp)
        assert self._step is not None
        with self.autocast():
            total, values, weights, outputs = self._step(x, y, index)
        names = exp.weighting.names
        # One scalar read per step: free on the CPU, one device sync on a GPU (trainer.nan_policy=off skips it).
        if self.nan_policy != "off":
            finite = bool(torch.isfinite(total))
            if self.ddp and distributed.max_over_ranks(int(not finite)):  # every rank skips or stops together
                finite = False
            if not finite:
                bad = [n for n, v in zip(names, values.detach().tolist()) if not math.isfinite(v)]
                raise _NonFiniteStep(
                    f"loss terms {', '.join(bad)} were non-finite" if bad
                    else "every term was finite but their weighted total was not" if torch.isfinite(total)
                    else "the loss was non-finite on another rank"
                )
        exp.optim.optimizer.zero_grad(set_to_none=True)
        if self.grad_norm_every and step % self.grad_norm_every == 0:
            shared = [p for p in exp.student.parameters() if p.requires_grad]
            self.grad_norm_sums.add(term_grad_norms(total, values, names, shared))
        scaled = self.scaler.scale(total)  # itself unless trainer.precision=16-mixed
        if self.backward == "joint":
            scaled.backward()
        else:
            backward_per_term(scaled, values, list(exp.weighting.parameters()))
        self.scaler.unscale_(exp.optim.optimizer)  # clipping sees the true gradients
        exp.optim.clip()
        self.scaler.step(exp.optim.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        exp.optim.after_step()
        return {
            "loss/total": total,
            **{f"loss/{n}": v for n, v in zip(names, values)},
            **{f"weight/{n}": w for n, w in zip(names, weights)},
            **{f"train/{k}": v for k, v in exp.task.train_sums(outputs.student.out.detach(), y).items()},
        }

    # the loop ----------------------------------------------------------------------------------
    def fit(self, exp: Experiment, logger: RunLogger, run_dir: Path, resume_from: Mapping[str, Any] | None = None) -> FitResult:
        """Train for `max_epochs`; `resume_from` (a `last.pt` checkpoint) continues where it stopped."""
        self.prepare(exp)
        p = self._restore(exp, resume_from) if resume_from is not None else Progress()
        task, modules = exp.task, (exp.student, exp.objective, exp.weighting)
        start = time.perf_counter() - p.elapsed
        epochs = tqdm(range(p.epoch, self.max_epochs), desc="epochs", disable=not self.progress, dynamic_ncols=True)
        with StopSignals() as signals:
            for epoch in epochs:
                set_epoch(exp.data.train, epoch)
                for module in modules:
                    module.train()
                epoch_start = time.perf_counter()
                for index, batch in enumerate(exp.data.train):
                    if index < p.batch:
                        continue  # done before an interruption (same batches: the order depends on seed and epoch)
                    self.train_batch(exp, batch, p, logger)
                    signum = distributed.max_over_ranks(signals.signum) if self.ddp else signals.signum  # all ranks stop together
                    if signum:
                        p.train_seconds += time.perf_counter() - epoch_start
                        p.elapsed = time.perf_counter() - start
                        self._save(exp, p, run_dir / "checkpoints" / "last.pt")
                        raise Interrupted(
                            f"Interrupted by {signal.Signals(signum).name} after step {p.step} (epoch {epoch + 1}, "
                            f"batch {p.batch}); checkpoints/last.pt holds that state",
                            signum,
                        )
                p.train_seconds += time.perf_counter() - epoch_start
                self._end_epoch(exp, logger, run_dir, p, epoch, start)
                epochs.set_postfix({task.monitor: f"{p.result.final[task.monitor]:.4g}"})

        if p.interval.count:
            self._log_interval(p.interval, task, exp, logger, p.step)
        if p.skipped_steps:
            log.warning("%d steps were skipped for a non-finite loss", p.skipped_steps)
        result = p.result
        result.steps = p.step
        result.final_weights = {k.removeprefix("weight/"): v for k, v in p.last_weights.items()}
        result.train_time_s = time.perf_counter() - start
        result.samples_per_s = p.samples / p.train_seconds if p.train_seconds > 0 else 0.0
        return result

    def to_device(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """A batch's inputs (channels_last when asked), targets and sample indices (if the loader gives them)."""
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, (batch[2] if len(batch) > 2 else None)

    def train_batch(self, exp: Experiment, batch: Sequence[Tensor], p: Progress, logger: RunLogger) -> None:
        """Everything the loop does for one batch: the step, the NaN policy, the running sums, logging."""
        x, y, index = self.to_device(batch)
        p.step, p.batch = p.step + 1, p.batch + 1
        try:
            record = self.training_step(exp, x, y, p.step, index)
        except _NonFiniteStep as bad:
            if self.nan_policy == "stop":
                kept = f"checkpoints/last.pt holds the state after epoch {p.epoch}" if p.epoch else "no checkpoint was written yet"
                raise NonFiniteLoss(
                    f"The loss became non-finite at step {p.step} (epoch {p.epoch + 1}): {bad}; the run stopped and {kept} "
                    "(lower optim.lr, set optim.grad_clip_norm, or use trainer.nan_policy=skip_step)."
                ) from None
            p.skipped_steps += 1
            log.warning("step %d skipped: %s (trainer.nan_policy=skip_step)", p.step, bad)
            return
        p.samples += x.shape[0]
        p.interval.add(record)
        p.epoch_sums.add(record)
        if p.step % self.log_every == 0:
            p.last_weights = self._log_interval(p.interval, exp.task, exp, logger, p.step)

    def _end_epoch(self, exp: Experiment, logger: RunLogger, run_dir: Path, p: Progress, epoch: int, start: float) -> None:
        """Validation, the weighting's and scheduler's epoch hooks, logging, checkpoints."""
        task, result = exp.task, p.result
        train_means = self._means(p.epoch_sums, task)
        val = {f"val/{k}": v for k, v in evaluate(exp.student, exp.data.val, task, self.device, self.ddp).items()}
        exp.weighting.on_epoch_end(epoch, {**train_means, **val})
        logger.scalars({**val, **exp.weighting.epoch_scalars()}, p.step)
        exp.optim.after_epoch(val)
        result.final, result.epochs = val, epoch + 1
        p.epoch, p.batch = epoch + 1, 0
        p.last_weights = {k: v for k, v in train_means.items() if k.startswith("weight/")} or p.last_weights
        p.elapsed = time.perf_counter() - start
        if task.is_better(val[task.monitor], result.best.get(task.monitor)):
            result.best, result.best_epoch = val, epoch + 1
            self._save(exp, p, run_dir / "checkpoints" / "best.pt")
        if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.max_epochs:
            self._save(exp, p, run_dir / "checkpoints" / "last.pt")
        log.info("epoch %d/%d  %s", epoch + 1, self.max_epochs, "  ".join(f"{k}={v:.4g}" for k, v in {**train_means, **val}.items()))

    # helpers -------------------------------------------------------------------------------------
    def _means(self, sums: RunningSums, task: Task) -> dict[str, float]:
        """Mean losses and weights over the steps summed (and the ranks), plus the task's train metrics."""
        count, values = sums.count * distributed.world_size() if self.ddp else sums.count, sums.pop(self.ddp)
        means = {k: v / count for k, v in values.items() if not k.startswith("train/")}
        train = task.reduce({k[6:]: v for k, v in values.items() if k.startswith("train/")})
        return {**means, **{f"train/{k}": v for k, v in train.items()}}

    def _log_interval(self, sums: RunningSums, task: Task, exp: Experiment, logger: RunLogger, step: int) -> dict[str, float]:
        means = self._means(sums, task)
        count, norms = self.grad_norm_sums.count, self.grad_norm_sums.pop()
        logger.scalars({**means, **{k: v / count for k, v in norms.items()}, **exp.optim.learning_rates()}, step)
        return {k: v for k, v in means.items() if k.startswith("weight/")}

    def _save(self, exp: Experiment, p: Progress, path: Path) -> None:
        """Under DDP every rank holds the same modules and optimizer; rank 0 writes them, with every
        rank's own running sums (its share of the metrics since the last log and epoch end)."""
        sums = distributed.gather_objects(self._running_sums(p)) if self.ddp else None
        if distributed.is_main():
            save_atomic({**self._state(exp, p), **({"rank_sums": sums} if sums else {})}, path)

    @staticmethod
    def _running_sums(p: Progress) -> dict[str, Any]:
        states = {"interval": p.interval.state_dict(), "epoch_sums": p.epoch_sums.state_dict()}
        for state in states.values():
            state["total"] = None if state["total"] is None else state["total"].cpu()
        return states

    def _state(self, exp: Experiment, p: Progress) -> dict[str, Any]:
        return {
            "epoch": p.epoch,
            "step": p.step,
            "student": exp.student.state_dict(),
            "objective": exp.objective.state_dict(),
            "weighting": exp.weighting.state_dict(),
            "optim": exp.optim.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": p.state_dict(),
            "rng": rng_state(),
        }

    def _restore(self, exp: Experiment, state: Mapping[str, Any]) -> Progress:
        """Load a `_state` checkpoint into `exp`; the RNG states last, as they were when it was written."""
        try:
            exp.student.load_state_dict(state["student"])
            exp.objective.load_state_dict(state["objective"])
            exp.weighting.load_state_dict(state["weighting"])
            exp.optim.load_state_dict(state["optim"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            progress = Progress.from_state_dict(state["progress"])
        except (KeyError, RuntimeError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise ConfigError(
                f"checkpoints/last.pt does not fit this run's config ({first_line}): resume with the config that wrote it, or start a new run directory."
            ) from error
        if self.ddp and "rank_sums" in state:
            if len(state["rank_sums"]) != distributed.world_size():
                raise ConfigError(
                    f"checkpoints/last.pt was written by {len(state['rank_sums'])} processes: resume it with --nproc_per_node={len(state['rank_sums'])}."
                )
            own = state["rank_sums"][distributed.rank()]
            progress.interval.load_state_dict(own["interval"])
            progress.epoch_sums.load_state_dict(own["epoch_sums"])
        set_rng_state(state["rng"])
        return progress
