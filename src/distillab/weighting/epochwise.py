"""Weights that change between epochs: Dynamic Weight Average, staged training, schedules."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from distillab import checks
from distillab.errors import ConfigError
from distillab.validate import check_weights
from distillab.weighting.base import Weighting

log = logging.getLogger(__name__)


def _in_stage(i: int) -> Callable[[str], str]:
    """How a weight error says where the weight is: ` (weighting.stages[i])`."""
    return lambda name: f" (weighting.stages[{i}])"


class _EpochWeights(Weighting):
    """Effective weights held in a buffer, recomputed in `on_epoch_end`; one multiply per step."""

    current: Tensor

    def __init__(self, weights: Mapping[str, float], lr: float | None = None) -> None:
        super().__init__(weights, lr)
        self.register_buffer("current", self.initial.clone())

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.current.to(losses.dtype)
        return (weights * losses).sum(), weights


class DWA(_EpochWeights):
    """Dynamic Weight Average (Liu, Johns & Davison 2019): `factor_k = K * softmax(r_k / T)` with
    `r_k = L_k(t-1) / L_k(t-2)` from the last two epochs' mean losses; factor 1 for the first two epochs.
    The effective weight is the configured weight times the factor (the paper: configured weights 1).
    """

    history: Tensor

    def __init__(self, weights: Mapping[str, float], temperature: float = 2.0) -> None:
        super().__init__(weights)
        self.temperature = checks.number("temperature", temperature, above=0, at_most=1000)
        self.register_buffer("history", torch.full((2, len(self.names)), math.nan))  # epochs t-2, t-1

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        latest = torch.tensor(
            [metrics[f"loss/{n}"] for n in self.names], dtype=self.history.dtype, device=self.history.device
        )
        self.history.copy_(torch.stack([self.history[1], latest]))
        if not torch.isnan(self.history).any():
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            factor = len(self.names) * torch.softmax(ratio / self.temperature, dim=0)
            self.current.copy_(self.initial * factor)


class Staged(_EpochWeights):
    """Stages of weights, each kept until a monitored value crosses its threshold.

    `stages` is a list of `{weights: {term: w}, until: {metric: "loss/<term>" or "val/<name>", below: x}}`
    (or `above: x`); the last stage needs no `until`. A term missing from a stage's weights gets 0. At the
    end of each epoch the monitored value (that epoch's mean term loss, or the validation metric) is
    checked; the first time it crosses, the next stage starts with the next epoch (the stage is a buffer,
    checkpointed, and logged as `weighting/stage` in TensorBoard).
    """

    stage: Tensor

    def __init__(self, weights: Mapping[str, float], stages: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(weights)
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError(
                "weighting.stages is empty or not a list: give at least one stage with its weights, e.g. "
                "[{weights: {ce: 1.0}}]."
            )
        self.stage_weights = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, Mapping) or not isinstance(stage.get("weights"), Mapping):
                raise ConfigError(
                    f"weighting.stages[{i}] needs `weights`, a mapping of loss terms to weights, e.g. "
                    f"{{weights: {{ce: 1.0}}}}."
                )
            unknown = set(stage["weights"]) - set(self.names)
            if unknown:
                raise ConfigError(
                    f"weighting.stages[{i}].weights names {sorted(unknown)}, which are not loss terms {self.names}."
                )
            check_weights(stage["weights"], _in_stage(i))
            until = stage.get("until")
            last = i == len(stages) - 1
            valid_until = (
                isinstance(until, Mapping)
                and isinstance(until.get("metric"), str)
                and ("below" in until) != ("above" in until)
            )
            if (not last or until) and not (valid_until and checks.is_number(until.get("below", until.get("above")))):  # type: ignore[union-attr]
                raise ConfigError(
                    f"weighting.stages[{i}].until needs a metric and exactly one number, below or above, e.g. "
                    f"{{metric: loss/ce, below: 0.5}}."
                )
            self.stage_weights.append(torch.tensor([float(stage["weights"].get(n, 0.0)) for n in self.names]))
        self.stages = [dict(s.get("until") or {}) for s in stages]
        self.register_buffer("stage", torch.tensor(0))
        self.current.copy_(self.stage_weights[0])

    def check_metrics(self, available: Sequence[str]) -> None:
        for i, until in enumerate(self.stages[:-1]):
            if until["metric"] not in available:
                raise ConfigError(
                    f"weighting.stages[{i}].until.metric={until['metric']!r} is not a metric this run reports: use "
                    f"one of {', '.join(available)}."
                )

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        index = int(self.stage)
        if index == len(self.stages) - 1:
            return
        until = self.stages[index]
        if until["metric"] not in metrics:
            raise ConfigError(
                f"weighting.stages[{index}].until.metric={until['metric']!r} is not reported; available: "
                f"{sorted(metrics)}."
            )
        value = metrics[until["metric"]]
        if ("below" in until and value < until["below"]) or ("above" in until and value > until["above"]):
            self.stage.fill_(index + 1)
            self.current.copy_(self.stage_weights[index + 1].to(self.current))
            log.info(
                "weighting: stage %d of %d starts after epoch %d (%s=%.4g)",
                index + 2,
                len(self.stages),
                epoch + 1,
                until["metric"],
                value,
            )

    def epoch_scalars(self) -> dict[str, float]:
        return {"weighting/stage": float(self.stage)}


def check_schedule(term: str, spec: Any) -> dict[str, Any]:
    """A schedule is `{kind: linear|cosine, epochs: N}` or `{kind: steps, steps: {epoch: factor}}`."""
    key = f"weighting.schedules.{term}"
    if not isinstance(spec, Mapping) or spec.get("kind") not in ("linear", "cosine", "steps"):
        raise ConfigError(
            f"{key}={spec!r} is not valid: use {{kind: linear, epochs: 20}}, {{kind: cosine, epochs: 20}} or "
            f"{{kind: steps, steps: {{10: 0.5}}}}."
        )
    if spec["kind"] in ("linear", "cosine"):
        epochs = spec.get("epochs")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(
                f"{key}.epochs={epochs!r} is not valid: use the ramp's length in epochs, an integer >= 1."
            )
    else:
        steps = spec.get("steps")
        if (
            not isinstance(steps, Mapping)
            or not steps
            or not all(str(e).isdigit() and checks.is_number(f) and 0 <= f < math.inf for e, f in steps.items())
        ):
            raise ConfigError(
                f"{key}.steps={steps!r} is not valid: use {{epoch: factor}} with whole epochs and finite factors >= "
                f"0, e.g. {{10: 0.5, 20: 0.1}}."
            )
    return dict(spec)


def schedule_factor(spec: Mapping[str, Any], epoch: int) -> float:
    """Multiplier of a term's weight in (1-based) `epoch`.

    kinds: `linear` ramp `min(epoch / epochs, 1)` (DKD's warm-up), `cosine` ramp
    `(1 - cos(pi * min(epoch / epochs, 1))) / 2`, `steps` `{epoch: factor}` (the factor of the last
    listed epoch <= the current one; 1 before the first).
    """
    kind = spec["kind"]
    if kind in ("linear", "cosine"):
        progress = min(epoch / spec["epochs"], 1.0)
        return progress if kind == "linear" else (1 - math.cos(math.pi * progress)) / 2
    reached = [int(e) for e in spec["steps"] if int(e) <= epoch]
    return float(spec["steps"][max(reached)]) if reached else 1.0


class Scheduled(_EpochWeights):
    """Fixed weights times a per-term schedule over epochs, e.g. `{dkd: {kind: linear, epochs: 20}}`; terms
    without a schedule (or with a null one) keep their weight."""

    def __init__(self, weights: Mapping[str, float], schedules: Mapping[str, Mapping[str, Any] | None] | None) -> None:
        super().__init__(weights)
        schedules = {} if schedules is None else schedules
        if not isinstance(schedules, Mapping):
            raise ConfigError(
                f"weighting.schedules={schedules!r} is not valid: use a mapping of loss terms to schedules, e.g. "
                f"{{dkd: {{kind: linear, epochs: 20}}}}."
            )
        schedules = {k: v for k, v in schedules.items() if v is not None}
        unknown = set(schedules) - set(self.names)
        if unknown:
            raise ConfigError(f"weighting.schedules names {sorted(unknown)}, which are not loss terms {self.names}.")
        if not schedules:
            example = next((n for n in self.names if n != "ce"), self.names[0])
            raise ConfigError(
                "weighting=schedule has no schedule: name the terms to schedule, e.g. "
                f"'weighting.schedules={{{example}: {{kind: linear, epochs: 20}}}}'."
            )
        self.schedules = {k: check_schedule(k, v) for k, v in schedules.items()}
        self._use_epoch(1)

    def _use_epoch(self, epoch: int) -> None:
        factors = [schedule_factor(self.schedules[n], epoch) if n in self.schedules else 1.0 for n in self.names]
        self.current.copy_(self.initial * torch.tensor(factors, dtype=self.initial.dtype, device=self.initial.device))

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._use_epoch(epoch + 2)  # 0-based epoch just ended -> the next epoch, 1-based
