"""Validation: a model's metrics on a loader, summed on the device and read once."""

from __future__ import annotations

from collections.abc import Iterable
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
            values = task.val_sums(model(x), y)
            sums.add((torch.stack([v.float() for v in values.values()]),), list(values), len(y))
    model.train(was_training)
    sums.flush(over_ranks)
    totals, _, samples = sums.pop("epoch")
    return task.reduce(totals, samples)
