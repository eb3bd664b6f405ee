"""Optimizer, learning-rate scheduler, optional linear warm-up and gradient clipping, from `optim/`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau

from distillab.errors import ConfigError, InvalidArgument, config_choice, config_key
from distillab.instantiate import instantiate

log = logging.getLogger("distillab")

# Keys of `optim/*.yaml` that configure the training step rather than the torch optimizer itself.
_STEP_KEYS = ("scheduler", "warmup_epochs", "warmup_start_factor", "grad_clip_norm")


@dataclass
class Optimization:
    """Everything that updates parameters; the trainer calls `after_step` and `after_epoch`."""

    optimizer: Optimizer
    scheduler: Any  # None: a constant learning rate (optim/scheduler=none, init stages)
    interval: str  # "epoch" or "step"
    monitor: str | None  # validation metric ReduceLROnPlateau follows, e.g. "val/acc"
    warmup: LinearLR | None
    grad_clip_norm: float | None
    used: list[float] = field(default_factory=list)  # each group's rate in the last step (`rates_used`)

    def clip(self) -> Tensor | None:
        """Clip to `grad_clip_norm`; returns the gradients' total norm before clipping (None when off)."""
        if self.grad_clip_norm is None:
            return None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)

    def after_step(self) -> None:
        self.used = [group["lr"] for group in self.optimizer.param_groups]  # before the warm-up or scheduler moves
        if self.warmup is not None and self.warmup.last_epoch < self.warmup.total_iters:
            self.warmup.step()
        if self.interval == "step" and self.scheduler is not None:
            self.scheduler.step()

    def after_epoch(self, metrics: Mapping[str, float]) -> None:
        if self.interval != "epoch" or self.scheduler is None:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            assert self.monitor is not None, "build_optimization refuses ReduceLROnPlateau without a monitor"
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """The rates the next step will use: `lr` for the first parameter group, `lr/<name>` for the others."""
        groups = self.optimizer.param_groups
        return {("lr" if i == 0 else f"lr/{g.get('name', i)}"): g["lr"] for i, g in enumerate(groups)}

    def rates_used(self) -> dict[str, float]:
        """The rates the last step used (what a point logged after it shows; the next ones before any step)."""
        rates = self.learning_rates()
        return dict(zip(rates, self.used)) if self.used else rates

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.warmup is not None and state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])


def build_optimization(
    cfg: DictConfig,
    param_groups: Sequence[dict[str, Any]],
    steps_per_epoch: int,
    key: str = "optim",
    epochs: int | None = None,
) -> Optimization:
    """`cfg` is the `optim` node: a torch optimizer `_target_` plus the keys in `_STEP_KEYS`; `epochs`: the run's,
    against which the scheduler's epochs are checked (`check_schedule`)."""
    if isinstance(cfg.get("scheduler"), DictConfig):
        check_schedule(cfg.scheduler, key, steps_per_epoch, epochs)
    options: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    step_options = {k: options.pop(k, None) for k in _STEP_KEYS}
    optimizer = instantiate(options, key=key, params=list(param_groups))

    scheduler_options: dict[str, Any] = step_options["scheduler"] or {}  # null or removed: a constant rate
    interval = scheduler_options.pop("interval", "epoch")
    monitor = scheduler_options.pop("monitor", None)
    if interval not in ("epoch", "step"):
        raise InvalidArgument("scheduler.interval", interval, "epoch or step").named(key)
    target = scheduler_options.get("_target_")
    stray = sorted(k for k in scheduler_options if k != "_target_") + ([] if monitor is None else ["monitor"])
    if target is None and stray:
        raise ConfigError(
            f"{config_key(key)}.scheduler has no _target_ ({config_choice('optim/scheduler')}=none), so "
            f"{', '.join(stray)} would be ignored: remove them or choose a scheduler, e.g. "
            f"{config_choice('optim/scheduler')}=cosine."
        )
    scheduler = None
    if target is not None:
        scheduler = instantiate(scheduler_options, key=f"{key}.scheduler", optimizer=optimizer)
    if isinstance(scheduler, ReduceLROnPlateau) and (monitor is None or interval != "epoch"):
        raise ConfigError(
            f"{config_key(key)}.scheduler is ReduceLROnPlateau: set {config_key(key)}.scheduler.monitor to a "
            f"validation metric such as val/acc and {config_key(key)}.scheduler.interval to epoch."
        )

    warmup = None
    warmup_steps = int((step_options["warmup_epochs"] or 0) * steps_per_epoch)
    if warmup_steps > 0:
        # Chained with the main scheduler: both scale the learning rate multiplicatively.
        warmup = LinearLR(optimizer, start_factor=step_options["warmup_start_factor"] or 0.01, total_iters=warmup_steps)
    return Optimization(optimizer, scheduler, interval, monitor, warmup, step_options["grad_clip_norm"])


def check_schedule(scheduler: DictConfig, key: str, steps_per_epoch: int, epochs: int | None) -> None:
    """Two schedules that differ from what they read like, said before training. Refused: an argument given as
    `${trainer.max_epochs}` (cosine's T_max) under `interval: step`, which would count it in batches (a cosine
    restarting every max_epochs steps). Warned: step or multistep milestones all at or past the run's last epoch,
    which leave the rate at optim.lr throughout (a CIFAR recipe shortened with trainer.max_epochs)."""
    raw: dict[str, Any] = OmegaConf.to_container(scheduler, resolve=False)  # type: ignore[assignment]
    interval = raw.get("interval", "epoch")
    for name, value in raw.items():
        if interval == "step" and isinstance(value, str) and "trainer.max_epochs" in value:
            counted = scheduler[name]
            raise ConfigError(
                f"{config_key(key)}.scheduler.interval=step moves the scheduler every batch, but "
                f"{config_key(key)}.scheduler.{name}={value} counts epochs ({counted}): give it in batches "
                f"({counted} epochs x {steps_per_epoch} batches: {config_key(key)}.scheduler.{name}="
                f"{counted * steps_per_epoch}), or use {config_key(key)}.scheduler.interval=epoch."
            )
    if epochs is None or interval != "epoch":
        return
    target = str(raw.get("_target_", "")).rsplit(".", 1)[-1]
    first = {"StepLR": scheduler.get("step_size"), "MultiStepLR": min(scheduler.get("milestones") or [0])}.get(target)
    if isinstance(first, int) and first >= epochs:
        said = f"step_size={first}" if target == "StepLR" else f"milestones={list(scheduler.milestones)}"
        log.warning(
            "%s.scheduler (%s) %s: its first change comes at epoch %d, after this run's %d epochs, so the "
            "learning rate stays at %s.lr throughout; set them within trainer.max_epochs, or choose %s=cosine.",
            config_key(key),
            target,
            said,
            first,
            epochs,
            config_key(key),
            config_choice(f"{key}/scheduler"),
        )
