"""torchrun DDP (`trainer.strategy=ddp`): the process group, which rank writes, reduced sums (each process's
share of the data: `DataModule.shard`).

Every rank runs the same program on its own shard of the training data; DistributedDataParallel
averages the gradients of everything trainable (student, projectors, learnable weights) during the
backward pass, so the ranks stay identical. Teachers are frozen copies on every rank. Rank 0 alone
writes TensorBoard, metrics.json and checkpoints; validation sums are added up over the ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import datetime

import torch
import torch.distributed as dist
from torch import Tensor

from distillab.errors import ConfigError, InvalidArgument

STRATEGIES = ("single", "ddp")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the rank that writes files (rank 0), and in any run that is not distributed."""
    return rank() == 0


def resolve_device(device: str) -> torch.device:
    """`auto`: cuda when available, else cpu. `cuda` means the current GPU (under torchrun this process's own),
    named with its index as tensors report theirs (`cuda:0`), so a batch already there is recognised."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgument("device", device, "auto, cpu, cuda, cuda:N or mps") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device", device, "cpu or auto (this machine has no CUDA GPU that torch can use)")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InvalidArgument(
            "device", device, f"one of cuda:0 to cuda:{torch.cuda.device_count() - 1} (the GPUs of this machine)"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgument("device", device, "cpu or auto (this machine has no MPS device)")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    elif resolved.type == "mps" and resolved.index is None:
        resolved = torch.device("mps", 0)
    return resolved


def init_from_env() -> None:
    """Join torchrun's process group (gloo for CPU tensors, nccl for CUDA ones), once (`cli.launched_by_torchrun`)."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")


def process_argv(argv: Sequence[str]) -> list[str]:
    """Hydra arguments for this rank under torchrun: every rank uses rank 0's run directory (the default
    one is named by the start time, which the ranks would not agree on to the second), and the other
    ranks write no Hydra files or log into it."""
    argv = list(argv)
    if not dist.is_initialized():
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError(
            "--multirun cannot run under torchrun (every process would launch the whole sweep): run one torchrun per "
            "configuration."
        )
    stamp = [datetime.now().strftime("%Y-%m-%d/%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir=${{paths.root}}/runs/{stamp[0]}")
    if not is_main():  # (rank 0 writes .hydra/ itself: see distillab.rundir)
        argv += ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return argv


def shutdown(finished: bool) -> None:
    """Leave the process group; a rank that `finished` its work (or stopped at a step every rank stops at) first
    waits for the others (a barrier).

    The barrier is for gloo (torch 2.14): its worker thread drops the tensors of the last collective (the
    checkpoint's gathered running sums) shortly after the caller's `wait()` returns, and drops them under the GIL.
    A rank that exits in that window, while the others are still writing, aborts during the interpreter's
    shutdown ("terminate called without an active exception", SIGABRT) after a run that went well. A rank
    that failed leaves at once: the others may never reach the barrier."""
    if not dist.is_initialized():
        return
    try:
        if finished:
            dist.barrier()
    finally:  # (also when another rank failed after this one finished: the barrier raises, the group still goes)
        dist.destroy_process_group()


def check_strategy(strategy: str) -> None:
    """The strategy exists, and a DDP run has a process group to run in."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r} is not valid: use 'single' or 'ddp'.")
    if strategy == "ddp" and not dist.is_initialized():
        raise ConfigError(
            "trainer.strategy=ddp needs one process per device started by torchrun: "
            "torchrun --nproc_per_node=N -m distillab trainer.strategy=ddp ..."
        )


def check_launch(strategy: str) -> None:
    """Several torchrun processes each training alone would train the same model N times into one directory."""
    if strategy != "ddp" and world_size() > 1:
        raise ConfigError(
            f"distillab was started by torchrun with {world_size()} processes but trainer.strategy=single "
            "(each would train the same model alone): add trainer.strategy=ddp."
        )


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloading data); the others then run it and find the result in place."""
    if not is_main():
        dist.barrier()
    yield
    if dist.is_initialized() and is_main():
        dist.barrier()


def sum_over_ranks(values: Tensor) -> Tensor:
    """The element-wise sum of `values` over all ranks (itself when not distributed)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj` (picklable, CPU tensors), in rank order, on every rank."""
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def max_over_ranks(flag: int) -> int:
    """One small collective: lets every rank take the same decision (stop, skip a step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([flag], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())
