"""The one generic training loop: every experiment, distillation or not, runs through `Trainer.fit`."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from distillab.checkpoint import rng_state, save_atomic
from distillab.errors import ConfigError

if TYPE_CHECKING:
    from distillab.build import Experiment
    from distillab.logging import RunLogger
    from distillab.tasks import Task

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
            self.total = self.total + stacked
        self.count += 1

    def pop(self) -> dict[str, float]:
        """Sums (not means) since the last pop."""
        if self.total is None:
            return {}
        result = dict(zip(self.names, self.total.tolist()))
        self.total, self.count = None, 0
        return result


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


def evaluate(model: torch.nn.Module, loader: Iterable, task: Task, device: torch.device) -> dict[str, float]:
    """Validation metrics of `model` on `loader` (eval mode; the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    sums = RunningSums()
    with torch.no_grad():
        for batch in loader:
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            sums.add(task.val_sums(model(x), y))
    model.train(was_training)
    return task.reduce(sums.pop())


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
    ) -> None:
        if backward not in ("joint", "separate"):
            raise ConfigError(f"trainer.backward={backward!r} is not valid: use 'joint' or 'separate'.")
        self.max_epochs, self.seed, self.device = max_epochs, seed, resolve_device(device)
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.backward, self.grad_norm_every = backward, grad_norm_every
        self.grad_norm_sums = RunningSums()  # filled only on the steps that measure them

    # one step ---------------------------------------------------------------------------------
    def training_step(self, exp: Experiment, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        outputs = exp.forward(x, y)
        losses = exp.objective(outputs)
        names = exp.weighting.names
        values = torch.stack([losses[name] for name in names])
        total, weights = exp.weighting(values)
        exp.optim.optimizer.zero_grad(set_to_none=True)
        if self.grad_norm_every and step % self.grad_norm_every == 0:
            shared = [p for p in exp.student.parameters() if p.requires_grad]
            self.grad_norm_sums.add(term_grad_norms(total, values, names, shared))
        if self.backward == "joint":
            total.backward()
        else:
            backward_per_term(total, values, list(exp.weighting.parameters()))
        exp.optim.clip()
        exp.optim.optimizer.step()
        exp.optim.after_step()
        return {
            "loss/total": total,
            **{f"loss/{n}": v for n, v in zip(names, values)},
            **{f"weight/{n}": w for n, w in zip(names, weights)},
            **{f"train/{k}": v for k, v in exp.task.train_sums(outputs.student.out.detach(), y).items()},
        }

    # the loop ----------------------------------------------------------------------------------
    def fit(self, exp: Experiment, logger: RunLogger, run_dir: Path) -> FitResult:
        result = FitResult()
        task, modules = exp.task, (exp.student, exp.objective, exp.weighting)
        start = time.perf_counter()
        train_seconds, samples, step = 0.0, 0, 0
        interval_sums, last_weights = RunningSums(), {}
        epochs = tqdm(range(self.max_epochs), desc="epochs", disable=not self.progress, dynamic_ncols=True)
        for epoch in epochs:
            if hasattr(exp.data.train, "set_epoch"):
                exp.data.train.set_epoch(epoch)
            for module in modules:
                module.train()
            epoch_sums = RunningSums()
            epoch_start = time.perf_counter()
            for batch in exp.data.train:
                x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
                step += 1
                record = self.training_step(exp, x, y, step)
                samples += x.shape[0]
                interval_sums.add(record)
                epoch_sums.add(record)
                if step % self.log_every == 0:
                    last_weights = self._log_interval(interval_sums, task, exp, logger, step)
            train_seconds += time.perf_counter() - epoch_start

            train_means = self._means(epoch_sums, task)
            val = {f"val/{k}": v for k, v in evaluate(exp.student, exp.data.val, task, self.device).items()}
            exp.weighting.on_epoch_end(epoch, {**train_means, **val})
            logger.scalars({**val, **exp.weighting.epoch_scalars()}, step)
            exp.optim.after_epoch(val)
            result.final, result.epochs = val, epoch + 1
            improved = task.is_better(val[task.monitor], result.best.get(task.monitor))
            if improved:
                result.best, result.best_epoch = val, epoch + 1
                save_atomic(self._state(exp, epoch + 1, step, result), run_dir / "checkpoints" / "best.pt")
            if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.max_epochs:
                save_atomic(self._state(exp, epoch + 1, step, result), run_dir / "checkpoints" / "last.pt")
            epochs.set_postfix({task.monitor: f"{val[task.monitor]:.4g}", "loss": f"{train_means['loss/total']:.4g}"})
            log.info("epoch %d/%d  %s", epoch + 1, self.max_epochs, "  ".join(f"{k}={v:.4g}" for k, v in {**train_means, **val}.items()))
            last_weights = {k: v for k, v in train_means.items() if k.startswith("weight/")} or last_weights

        if interval_sums.count:
            self._log_interval(interval_sums, task, exp, logger, step)
        result.steps = step
        result.final_weights = {k.removeprefix("weight/"): v for k, v in last_weights.items()}
        result.train_time_s = time.perf_counter() - start
        result.samples_per_s = samples / train_seconds if train_seconds > 0 else 0.0
        return result

    # helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _means(sums: RunningSums, task: Task) -> dict[str, float]:
        """Mean losses and weights over the steps summed, plus the task's train metrics."""
        count, values = sums.count, sums.pop()
        means = {k: v / count for k, v in values.items() if not k.startswith("train/")}
        train = task.reduce({k[6:]: v for k, v in values.items() if k.startswith("train/")})
        return {**means, **{f"train/{k}": v for k, v in train.items()}}

    def _log_interval(self, sums: RunningSums, task: Task, exp: Experiment, logger: RunLogger, step: int) -> dict[str, float]:
        means = self._means(sums, task)
        count, norms = self.grad_norm_sums.count, self.grad_norm_sums.pop()
        logger.scalars({**means, **{k: v / count for k, v in norms.items()}, **exp.optim.learning_rates()}, step)
        return {k: v for k, v in means.items() if k.startswith("weight/")}

    def _state(self, exp: Experiment, epoch: int, step: int, result: FitResult) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": step,
            "student": exp.student.state_dict(),
            "objective": exp.objective.state_dict(),
            "weighting": exp.weighting.state_dict(),
            "optim": exp.optim.state_dict(),
            "best": dict(result.best),
            "rng": rng_state(),
        }
