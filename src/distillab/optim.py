"""Optimizer, learning-rate scheduler, optional linear warm-up and gradient clipping, from `optim/`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau

from distillab.errors import ConfigError, InvalidArgument, config_choice, config_key
from distillab.instantiate import instantiate

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

    def clip(self) -> Tensor | None:
        """Clip to `grad_clip_norm`; returns the gradients' total norm before clipping (None when off)."""
        if self.grad_clip_norm is None:
            return None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)

    def after_step(self) -> None:
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
        """`lr` for the first parameter group, `lr/<name>` for the others."""
        groups = self.optimizer.param_groups
        return {("lr" if i == 0 else f"lr/{g.get('name', i)}"): g["lr"] for i, g in enumerate(groups)}

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
    cfg: DictConfig, param_groups: Sequence[dict[str, Any]], steps_per_epoch: int, key: str = "optim"
) -> Optimization:
    """`cfg` is the `optim` node: a torch optimizer `_target_` plus the keys in `_STEP_KEYS`."""
    options: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    step_options = {k: options.pop(k, None) for k in _STEP_KEYS}
    optimizer = instantiate(options, key=key, params=list(param_groups))

    scheduler_options: dict[str, Any] = step_options["scheduler"]
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
