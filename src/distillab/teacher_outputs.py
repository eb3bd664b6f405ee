"""Teacher outputs computed once per training sample and reused every epoch.

In KD the frozen teacher's forward pass is most of the cost of a step (the tutorial's DeepNN is ~70x
the LightNN student). When the inputs a teacher sees are the same every epoch (no random augmentation,
no fresh noise), its logits and tapped features for each sample never change: one pass over the
training set replaces a teacher forward on every step. Batches are matched to their rows by the
sample indices the in-memory loader yields, so wrong reuse cannot happen silently.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from distillab.checkpoint import load_checkpoint, save_atomic
from distillab.data.memory import TensorLoader
from distillab.data.module import DataModule
from distillab.errors import ConfigError
from distillab.objective import ModelOutput
from distillab.taps import FeatureTaps

log = logging.getLogger(__name__)


@dataclass
class TeacherOutputCache:
    """Per teacher: logits for every training sample (row = sample index) and tapped features; or, under random
    crop and flip (`views` > 1), logits alone for every view of every sample (row = index * views + view),
    stored in `dtype` and returned as float32."""

    outputs: list[ModelOutput]
    views: int = 1

    def lookup(self, index: Tensor, view: Tensor | None = None) -> list[ModelOutput]:
        device = self.outputs[0].out.device
        rows = index.to(device) if self.views == 1 else index.to(device) * self.views + view.to(device)  # type: ignore[union-attr]
        return [ModelOutput(o.out[rows].float(), {k: v[rows] for k, v in o.features.items()}) for o in self.outputs]


def why_not_cacheable(data: DataModule, features: bool) -> str | None:
    """None when cached teacher outputs are valid for every epoch (per sample; or per view under random crop and
    flip, for logits alone: `features` says whether a term reads the teachers' features); else why not."""
    if not isinstance(data.train, TensorLoader):
        return "the training data is not served from in-memory tensors with sample indices"
    if data.random_inputs or data.train.random:
        if data.train.views is None:
            return (
                "the training inputs change every epoch (random noise or augmentation other than crop and flip), so "
                "the teacher must see each input"
            )
        if features:
            return "a loss term reads the teachers' features, which are not cached per augmented view (only logits are)"
    return None


def wants_cache(mode: bool | str, data: DataModule, teachers: list[nn.Module], features: bool = False) -> bool:
    """Decide `teacher.cache_outputs` (auto, true or false) before anything is trained: auto turns it on
    when it is valid; true where it is not valid is refused."""
    if mode not in ("auto", True, False):
        raise ConfigError(f"teacher.cache_outputs={mode!r} is not valid: use auto, true or false.")
    if mode is False or not teachers:
        return False
    reason = why_not_cacheable(data, features)
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
    epochs: int | None = None,
    store: Path | None = None,
) -> TeacherOutputCache | None:
    """One pass of the trained teachers over the training set, once `wants_cache` said yes, if it fits
    `budget_mb` (`required`, from teacher.cache_outputs=true: not fitting is an error, not a fallback).
    Under random crop and flip: `build_view_cache` (`epochs`, `store`: see there).

    The outputs go straight into buffers allocated once from the first batch's shapes, so the build's
    memory peak is the cache plus one batch (concatenating the batches at the end would double it)."""
    loader: TensorLoader = data.train  # type: ignore[assignment]
    if loader.random:
        return build_view_cache(budget_mb, loader, teachers, teacher_taps, required, epochs, store)
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

        def put(outputs: list[ModelOutput], index: Tensor) -> None:
            rows = index.to(device)
            for buffer, out in zip(cache, outputs):
                buffer.out.index_copy_(0, rows, out.out)
                for k, f in out.features.items():
                    buffer.features[k].index_copy_(0, rows, f)

        put(first, index)
        for x, _, index in ordered:
            put(outputs_of(x), index)
    log.info(
        "teacher outputs cached for %d training samples (%.1f MB on %s): the teacher runs once, not every step",
        n,
        size_mb,
        device,
    )
    return TeacherOutputCache(cache)


def build_view_cache(
    budget_mb: float,
    loader: TensorLoader,
    teachers: list[nn.Module],
    teacher_taps: list[FeatureTaps],
    required: bool,
    epochs: int | None = None,
    store: Path | None = None,
) -> TeacherOutputCache | None:
    """The teachers' logits for every view (offset and flip) of every training sample: exact lookups for a
    randomly cropped and flipped batch. Stored in float32 when that fits `budget_mb`, else in float16 (logits
    within 2^-11 relative), else not at all.

    Building costs a teacher forward per view of each sample (162 for padding 4); a run of `epochs` epochs
    saves one per epoch. So a cache is built when `epochs` >= views or `required`, and kept in `store` (a file
    named by the hash of the teachers' weights, the training inputs and the augmentation), where any later run
    with the same teachers and data finds it, whatever its seed or loss."""
    import time

    views, n = loader.views, loader.dataset_size
    assert views is not None
    device = next(iter(teachers[0].parameters())).device
    start = time.perf_counter()
    with torch.no_grad():
        first = loader.render(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        classes = [o.out.shape[1] for o in run_teachers(teachers, teacher_taps, first.to(device))]
    rows = n * views
    dtype = next(
        (d for d in (torch.float32, torch.float16) if rows * sum(classes) * d.itemsize / 2**20 <= budget_mb), None
    )
    size_mb = rows * sum(classes) * (dtype or torch.float16).itemsize / 2**20
    if dtype is None:
        if required:
            raise ConfigError(
                f"teacher.cache_outputs=true needs {size_mb:.0f} MB for the teacher's logits on all {views} views of "
                f"{n} samples (float16) but teacher.cache_budget_mb={budget_mb:g}: raise the budget or use auto."
            )
        log.info(
            "teacher outputs are not cached: the logits of %d views x %d samples need %.0f MB in float16, over "
            "teacher.cache_budget_mb=%g",
            views,
            n,
            size_mb,
            budget_mb,
        )
        return None
    name = f"{view_cache_key(loader, teachers)}-{str(dtype).removeprefix('torch.')}.pt"  # the budget's precision
    path = store / name if store is not None else None
    if path is not None and path.is_file():
        cached: list[Tensor] = load_checkpoint(path, map_location=device)["logits"]
        log.info("teacher logits per augmented view (%d views x %d samples, %s) loaded from %s", views, n, dtype, path)
        return TeacherOutputCache([ModelOutput(t, {}) for t in cached], views=views)
    if not required and epochs is not None and epochs < views:
        log.info(
            "teacher logits are not cached per augmented view: %d epochs see each sample %d times, fewer than its %d "
            "views, so building would run the teacher more than training does (teacher.cache_outputs=true builds it "
            "anyway, for later runs to reuse)",
            epochs,
            epochs,
            views,
        )
        return None
    cache = [torch.empty(rows, c, dtype=dtype, device=device) for c in classes]  # row = sample * views + view
    chunk = max(loader.batch_size, 512)  # images per teacher forward
    with torch.no_grad():
        for begin in range(0, rows, chunk):
            row = torch.arange(begin, min(begin + chunk, rows))
            x = loader.render(row // views, row % views).to(device, non_blocking=True)
            for buffer, out in zip(cache, run_teachers(teachers, teacher_taps, x)):
                buffer[begin : begin + len(row)] = out.out.to(dtype)
    if path is not None:
        save_atomic({"logits": cache}, path)
    log.info(
        "teacher logits cached per augmented view: %d views (crop offsets x flips) x %d samples, %.1f MB of %s on %s, "
        "built in %.1f s%s: the teacher runs once per view, not every step",
        views,
        n,
        size_mb,
        str(dtype).removeprefix("torch."),
        device,
        time.perf_counter() - start,
        f", kept in {path}" if path is not None else "",
    )
    return TeacherOutputCache([ModelOutput(c, {}) for c in cache], views=views)


def view_cache_key(loader: TensorLoader, teachers: list[nn.Module]) -> str:
    """What the per-view logits depend on, hashed: the teachers' weights, the training inputs, and the
    augmentation and normalisation (two rendered views of the first samples)."""
    digest = hashlib.sha256(f"views={loader.views}".encode())
    for teacher in teachers:
        for name, value in teacher.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(loader.inputs.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    first = torch.arange(min(8, loader.dataset_size))
    for view in (0, (loader.views or 1) - 1):
        rendered = loader.render(first, torch.full_like(first, view)).float().cpu().contiguous()
        digest.update(rendered.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]
