"""Weights that change between epochs: Dynamic Weight Average, staged training, schedules."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.weighting.base import Weighting, check_weights

log = logging.getLogger(__name__)


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
            raise InvalidArgument(
                "stages", stages, "a list of at least one stage with its weights, e.g. [{weights: {ce: 1.0}}]"
            )
        self.stage_weights = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, Mapping) or not isinstance(stage.get("weights"), Mapping):
                raise InvalidArgument(
                    f"stages[{i}]",
                    stage,
                    "a stage with `weights`, a mapping of loss terms to weights, e.g. {weights: {ce: 1.0}}",
                )
            unknown = set(stage["weights"]) - set(self.names)
            if unknown:
                raise InvalidArgument(
                    f"stages[{i}].weights",
                    dict(stage["weights"]),
                    f"weights of this loss's terms, {', '.join(self.names)}",
                    why=f"it names {sorted(unknown)}, which are not terms of this loss",
                )
            check_weights(f"stages[{i}].weights", stage["weights"])
            until = stage.get("until")
            last = i == len(stages) - 1
            valid_until = (
                isinstance(until, Mapping)
                and isinstance(until.get("metric"), str)
                and ("below" in until) != ("above" in until)
            )
            if (not last or until) and not (valid_until and checks.is_number(until.get("below", until.get("above")))):  # type: ignore[union-attr]
                raise InvalidArgument(
                    f"stages[{i}].until",
                    until,
                    "a metric and exactly one number, below or above, e.g. {metric: loss/ce, below: 0.5} (the last "
                    "stage needs none)",
                )
            self.stage_weights.append(torch.tensor([float(stage["weights"].get(n, 0.0)) for n in self.names]))
        self.stages = [dict(s.get("until") or {}) for s in stages]
        self.register_buffer("stage", torch.tensor(0))
        self.current.copy_(self.stage_weights[0])

    def check_metrics(self, available: Sequence[str]) -> None:
        for i, until in enumerate(self.stages[:-1]):
            if until["metric"] not in available:
                raise InvalidArgument(
                    f"stages[{i}].until.metric",
                    until["metric"],
                    f"one of {', '.join(available)}",
                    why="this run does not report it",
                )

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        index = int(self.stage)
        if index == len(self.stages) - 1:
            return
        until = self.stages[index]
        assert until["metric"] in metrics, "check_metrics refuses a metric the run does not report"
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


def check_schedule(name: str, spec: Any) -> dict[str, Any]:
    """A schedule (the argument `name`, `schedules.kd`) is `{kind: linear|cosine, epochs: N}` or
    `{kind: steps, steps: {epoch: factor}}`."""
    if not isinstance(spec, Mapping) or spec.get("kind") not in ("linear", "cosine", "steps"):
        raise InvalidArgument(
            name,
            spec,
            "{kind: linear, epochs: 20}, {kind: cosine, epochs: 20} or {kind: steps, steps: {10: 0.5}}",
        )
    if spec["kind"] in ("linear", "cosine"):
        epochs = spec.get("epochs")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InvalidArgument(f"{name}.epochs", epochs, "the ramp's length in epochs, an integer >= 1")
    else:
        steps = spec.get("steps")
        if (
            not isinstance(steps, Mapping)
            or not steps
            or not all(str(e).isdigit() and checks.is_number(f) and 0 <= f < math.inf for e, f in steps.items())
        ):
            raise InvalidArgument(
                f"{name}.steps",
                steps,
                "{epoch: factor} with whole epochs and finite factors >= 0, e.g. {10: 0.5, 20: 0.1}",
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
        example = next((n for n in self.names if n != "ce"), self.names[0])
        valid = (
            f"a mapping of loss terms to schedules, e.g. {{{example}: {{kind: linear, epochs: 20}}}} (quoted on a "
            "command line)"
        )
        if not isinstance(schedules, Mapping):
            raise InvalidArgument("schedules", schedules, valid)
        given = dict(schedules)
        schedules = {k: v for k, v in schedules.items() if v is not None}
        unknown = set(schedules) - set(self.names)
        if unknown:
            raise InvalidArgument(
                "schedules", given, valid, why=f"it names {sorted(unknown)}, which are not terms of this loss"
            )
        if not schedules:
            raise InvalidArgument("schedules", given, valid, why="it schedules no term")
        self.schedules = {k: check_schedule(f"schedules.{k}", v) for k, v in schedules.items()}
        self._use_epoch(1)

    def _use_epoch(self, epoch: int) -> None:
        factors = [schedule_factor(self.schedules[n], epoch) if n in self.schedules else 1.0 for n in self.names]
        self.current.copy_(self.initial * torch.tensor(factors, dtype=self.initial.dtype, device=self.initial.device))

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._use_epoch(epoch + 2)  # 0-based epoch just ended -> the next epoch, 1-based
