"""Teacher outputs computed once per training sample and reused every epoch.

In KD the frozen teacher's forward pass is most of the cost of a step (the tutorial's DeepNN is ~70x
the LightNN student). When the inputs a teacher sees are the same every epoch (no random augmentation,
no fresh noise), its logits and tapped features for each sample never change: one pass over the
training set replaces a teacher forward on every step. Batches are matched to their rows by the
sample indices the in-memory loader yields, so wrong reuse cannot happen silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distillab.data.memory import TensorLoader
from distillab.data.module import DataModule
from distillab.errors import ConfigError
from distillab.objective import ModelOutput
from distillab.taps import FeatureTaps

log = logging.getLogger(__name__)


@dataclass
class TeacherOutputCache:
    """Per teacher: logits for every training sample (row = sample index) and tapped features."""

    outputs: list[ModelOutput]

    def lookup(self, index: Tensor) -> list[ModelOutput]:
        index = index.to(self.outputs[0].out.device)
        return [ModelOutput(o.out[index], {k: v[index] for k, v in o.features.items()}) for o in self.outputs]


def why_not_cacheable(data: DataModule) -> str | None:
    """None when per-sample teacher outputs are valid for every epoch; else the reason they are not."""
    if data.random_inputs or (isinstance(data.train, TensorLoader) and data.train.random):
        return (
            "the training inputs change every epoch (random augmentation or noise), so the teacher must see each input"
        )
    if not isinstance(data.train, TensorLoader):
        return "the training data is not served from in-memory tensors with sample indices"
    return None


def wants_cache(mode: bool | str, data: DataModule, teachers: list[nn.Module]) -> bool:
    """Decide `teacher.cache_outputs` (auto, true or false) before anything is trained: auto turns it on
    when it is valid; true where it is not valid is refused."""
    if mode not in ("auto", True, False):
        raise ConfigError(f"teacher.cache_outputs={mode!r} is not valid: use auto, true or false.")
    if mode is False or not teachers:
        return False
    reason = why_not_cacheable(data)
    if reason is not None:
        if mode is True:
            raise ConfigError(
                f"teacher.cache_outputs=true cannot be used here: {reason}; use teacher.cache_outputs=auto or false."
            )
        log.info("teacher outputs are not cached: %s", reason)
        return False
    return True


def run_teachers(teachers: list[nn.Module], teacher_taps: list[FeatureTaps], x: Tensor) -> list[ModelOutput]:
    """Each frozen teacher's logits and tapped features for `x`."""
    with torch.no_grad():  # not inference_mode: its tensors could not be saved for the student's backward
        return [ModelOutput(t(x), taps.pop()) for t, taps in zip(teachers, teacher_taps)]


def _buffer(first: Tensor, n: int) -> Tensor:
    return torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device)


def build_teacher_cache(
    budget_mb: float,
    data: DataModule,
    teachers: list[nn.Module],
    teacher_taps: list[FeatureTaps],
    required: bool = False,
) -> TeacherOutputCache | None:
    """One pass of the trained teachers over the training set, once `wants_cache` said yes, if it fits
    `budget_mb` (`required`, from teacher.cache_outputs=true: not fitting is an error, not a fallback).

    The outputs go straight into buffers allocated once from the first batch's shapes, so the build's
    memory peak is the cache plus one batch (concatenating the batches at the end would double it)."""
    loader: TensorLoader = data.train  # type: ignore[assignment]
    n = loader.dataset_size
    device = next(iter(teachers[0].parameters())).device
    ordered = loader.in_order()  # every sample once, in index order

    def outputs_of(x: Tensor) -> list[ModelOutput]:
        return run_teachers(teachers, teacher_taps, x.to(device, non_blocking=True))

    with torch.no_grad():
        x, _, index = next(ordered)
        first = outputs_of(x)
        per_sample = sum(o.out[0].nbytes + sum(f[0].nbytes for f in o.features.values()) for o in first)
        size_mb = per_sample * n / 2**20
        if size_mb > budget_mb:
            if required:
                raise ConfigError(
                    f"teacher.cache_outputs=true needs {size_mb:.0f} MB but teacher.cache_budget_mb={budget_mb:g}: "
                    "raise the budget or use auto."
                )
            log.info(
                "teacher outputs are not cached: they need %.0f MB, over teacher.cache_budget_mb=%g", size_mb, budget_mb
            )
            return None
        cache = [ModelOutput(_buffer(o.out, n), {k: _buffer(f, n) for k, f in o.features.items()}) for o in first]

        def store(outputs: list[ModelOutput], index: Tensor) -> None:
            rows = index.to(device)
            for buffer, out in zip(cache, outputs):
                buffer.out.index_copy_(0, rows, out.out)
                for k, f in out.features.items():
                    buffer.features[k].index_copy_(0, rows, f)

        store(first, index)
        for x, _, index in ordered:
            store(outputs_of(x), index)
    log.info(
        "teacher outputs cached for %d training samples (%.1f MB on %s): the teacher runs once, not every step",
        n,
        size_mb,
        device,
    )
    return TeacherOutputCache(cache)
