"""Validation: a model's metrics on a loader, summed on the device and read once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from distillab.training.state import RunningSums

if TYPE_CHECKING:
    from distillab.tasks import Task


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Tell a loader (or its sampler) which epoch it serves: the shuffle order depends on it."""
    for obj in (loader, getattr(loader, "sampler", None)):
        set_to = getattr(obj, "set_epoch", None)
        if set_to is not None:
            set_to(epoch)


def evaluate(
    model: nn.Module, loader: Iterable, task: Task, device: torch.device, over_ranks: bool = False
) -> dict[str, float]:
    """Validation metrics of `model` on `loader` (eval mode; the caller's mode is restored).
    `over_ranks`: each DDP rank holds a part of the data, and the sums are added up over the ranks."""
    was_training = model.training
    model.eval()
    sums = RunningSums()
    with torch.no_grad():
        for batch in loader:
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            _add(sums, task, model(x), y)
    model.train(was_training)
    return _reduce(sums, task, over_ranks)


def evaluate_group(
    forward: Callable[[list[torch.Tensor]], torch.Tensor],
    loaders: Sequence[Iterable],
    tasks: Sequence[Task],
    device: torch.device,
) -> list[dict[str, float]]:
    """`evaluate` for the students of a fused group at once: `forward` maps their inputs (student i's from
    `loaders[i]`) to their outputs, stacked, in eval mode. Members with the same validation data pass the same
    loader: each batch is then loaded and copied to the device once."""
    distinct = list({id(loader): loader for loader in loaders}.values())
    sums = [RunningSums() for _ in tasks]
    with torch.no_grad():
        for loaded in zip(*distinct):
            on_device = {id(loader): (b[0].to(device), b[1].to(device)) for loader, b in zip(distinct, loaded)}
            batches = [on_device[id(loader)] for loader in loaders]
            out = forward([x for x, _ in batches])
            for i, (task, (_, y)) in enumerate(zip(tasks, batches)):
                _add(sums[i], task, out[i], y)
    return [_reduce(s, task, False) for s, task in zip(sums, tasks)]


def _add(sums: RunningSums, task: Task, out: torch.Tensor, targets: torch.Tensor) -> None:
    values = task.val_sums(out, targets)
    sums.add((torch.stack([v.float() for v in values.values()]),), list(values), len(targets))


def _reduce(sums: RunningSums, task: Task, over_ranks: bool) -> dict[str, float]:
    sums.flush(over_ranks)
    totals, _, samples = sums.pop("epoch")
    return task.reduce(totals, samples)
