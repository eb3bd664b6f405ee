"""`trainer.cuda_graph=true`: the whole training step (teacher forward or cache lookup, student forward with taps,
loss terms, weighting, backward, clipping, NaN guard, optimizer step) captured once as a CUDA graph and replayed for
every full batch, so the CPU launches one graph instead of a few hundred kernels.

What a replay cannot see is handled by when the step is captured, not inside it:
- Python-side state read by the step is fixed at capture (the learning rate is a float argument of the
  optimizer's kernels; a weighting's or a term's epoch state: `schedule`, `staged`, DWA, CTKD's temperature). The
  step is therefore captured anew at the first step of every epoch, and whenever the learning rates differ from
  the captured ones. A step whose rates differ from the previous step's (a warm-up, `optim.scheduler.interval=step`)
  runs eagerly: capturing every step would cost more than it saves.
- Eager, always: the first `warmup_steps` steps (lazy initialisations, cuDNN's choices), a batch smaller than the
  largest seen (an epoch's last), steps that measure `grad_norm/<term>`, init stages, and a fused group of several
  runs.
The replayed step's outputs live in the graph's memory and are overwritten by the next replay: the loop copies
what it keeps (`Guard.note`, the running sums). Refused before training (see `check_cuda_graph`): a device other
than CUDA, 16-mixed (its GradScaler reads the overflow flag on the host), DDP, `trainer.compile`, and weightings
that decide in their own backward (GradNorm, torchjd's, DOT). A step that fails to capture stops the run
(`CaptureFailed`) rather than going on eagerly from a half-captured state.

`capture` is what records and replays (`CudaCapture` on a GPU); the tests pass one that re-runs the step eagerly.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import Tensor

from distillab.errors import CaptureFailed, ConfigError, first_line

if TYPE_CHECKING:
    from distillab.training.group import Batch

log = logging.getLogger("distillab.training")

R = TypeVar("R")


def check_cuda_graph(device: torch.device, precision: str, strategy: str, compile: object) -> None:
    """`trainer.cuda_graph=true` where the step cannot be captured: one sentence, before anything is built."""
    why = None
    if device.type != "cuda":
        why = f"needs a CUDA device (this run's is {device.type}): run it on a GPU, or set trainer.cuda_graph=false"
    elif str(precision) == "16-mixed":
        why = (
            "cannot capture trainer.precision=16-mixed, whose GradScaler reads the overflow flag on the host every "
            "step: use trainer.precision=bf16-mixed or 32"
        )
    elif strategy == "ddp":
        why = "is not available under trainer.strategy=ddp yet: use trainer.strategy=single or trainer.cuda_graph=false"
    elif compile not in (False, None):
        why = "and trainer.compile are not used together: set one of them to false"
    if why is not None:
        raise ConfigError(f"trainer.cuda_graph=true {why}.")


class Capture(Protocol):
    """What records the step and replays it; one recorded step at a time (a new capture replaces the last)."""

    def prepare(self, optimizer: torch.optim.Optimizer) -> None: ...

    def warm(self, work: Callable[[], R]) -> R: ...

    def capture(self, work: Callable[[], R]) -> R: ...

    def replay(self) -> None: ...


class CudaCapture:
    """Records the step as a CUDA graph (`torch.cuda.graph`) in one memory pool for the run: a `MemPool`, which
    holds its own reference, so the pool outlives each graph and the next capture reuses its memory."""

    def __init__(self) -> None:
        self.pool = torch.cuda.MemPool()
        self.stream = torch.cuda.Stream()
        self.graph: torch.cuda.CUDAGraph | None = None

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizers with a `capturable` option (Adam, AdamW, ...) keep their step count on the device, so the
        replayed update's bias correction moves on (a host count would be fixed at capture); a state restored
        from a checkpoint written without it is moved there too."""
        for group in optimizer.param_groups:
            if "capturable" not in group:
                continue
            group["capturable"] = True
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if isinstance(state.get("step"), Tensor):
                    state["step"] = state["step"].to(p.device)

    def warm(self, work: Callable[[], R]) -> R:
        """One eager step on a side stream, as PyTorch's whole-network capture example warms up."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            result = work()
        torch.cuda.current_stream().wait_stream(self.stream)
        return result

    def capture(self, work: Callable[[], R]) -> R:
        torch.cuda.synchronize()  # the last replay has finished: the old graph can go
        # Destroying a graph also frees the cuBLAS workspace of the stream it was captured on, which the next capture
        # on that stream then creates afresh, inside the new graph's memory.
        self.graph = None
        graph = torch.cuda.CUDAGraph()
        previous = torch.cuda.current_stream()
        collecting = gc.isenabled()
        gc.disable()  # a collection during the capture could destroy some other graph, which a capture forbids
        try:
            # thread_local: a DataLoader's pin-memory thread may use CUDA meanwhile
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                result = work()  # recorded, not run: the first replay runs it
        finally:
            torch.cuda.set_stream(previous)  # a failed capture would leave the capture stream current
            if collecting:
                gc.enable()
        self.graph = graph
        return result

    def replay(self) -> None:
        assert self.graph is not None, "capture first"
        self.graph.replay()


class StepGraph:
    """Runs a group-of-one's step through a captured graph where it can (see the module's docstring)."""

    def __init__(self, capture: Capture | None = None, warmup_steps: int = 3) -> None:
        self._capture = capture
        self.warmup_steps = warmup_steps
        self._warmed = 0
        self._largest = 0  # the largest batch seen (the one captured; smaller ones run eagerly)
        self._prepared: set[int] = set()
        self._shape: list[tuple[int, ...] | None] | None = None  # its shapes
        self._static: Batch | None = None
        self._result: Any = None
        self._key: tuple[Any, ...] | None = None  # (epoch, rates, shapes) of the step captured; None before any
        self._last_rates: list[float] | None = None
        self._moving = 0  # consecutive steps whose rates changed

    @property
    def capturer(self) -> Capture:
        if self._capture is None:
            self._capture = CudaCapture()
        return self._capture

    def run(
        self, batch: Batch, work: Callable[[Batch], R], optimizer: torch.optim.Optimizer, epoch: int, step: int
    ) -> R:
        """The step on `batch`: `work(batch)` eagerly, or the replay of its capture (then the result holds the
        graph's own tensors, valid until the next replay). `step`: the run's, named if the capture fails."""
        if id(optimizer) not in self._prepared:
            self.capturer.prepare(optimizer)
            self._prepared.add(id(optimizer))
        rates = [group["lr"] for group in optimizer.param_groups]
        last, self._last_rates = self._last_rates, rates
        shape = _shapes(batch)
        if len(batch.x) > self._largest:
            self._largest, self._shape = len(batch.x), shape
        if self._warmed < self.warmup_steps:
            self._warmed += 1
            return self.capturer.warm(lambda: work(batch))
        if shape != self._shape:
            return work(batch)  # a smaller batch (an epoch's last)
        key = (epoch, rates, shape)
        if key != self._key:
            if rates != last:  # the rates moved since the last step: eager until they settle
                self._moving += 1
                if self._moving == 3:
                    log.info(
                        "trainer.cuda_graph: the learning rate changes every step (a warm-up or a per-step "
                        "scheduler), so those steps run eagerly; the graph is captured once it settles"
                    )
                return work(batch)
            self._capture_step(batch, work, optimizer, step)
            self._key = key
        self._moving = 0
        assert self._static is not None
        for static, new in zip(self._static, batch):
            if static is not None and new is not None:
                static.copy_(new, non_blocking=True)
        self.capturer.replay()
        result: R = self._result
        return result

    def _capture_step(
        self, batch: Batch, work: Callable[[Batch], Any], optimizer: torch.optim.Optimizer, step: int
    ) -> None:
        """Capture the step anew on a copy of `batch` (the static batch every replay reads)."""
        on_host = sorted(
            {
                f"{type(optimizer).__name__}'s {key}"
                for p, state in optimizer.state.items()
                for key, value in state.items()
                if isinstance(value, Tensor) and value.device != p.device
            }
        )
        if on_host:  # a replay would never update it (Adam's and AdamW's are moved by `capturable`)
            raise CaptureFailed(
                f"trainer.cuda_graph=true cannot replay the step: the optimizer keeps state on the host "
                f"({', '.join(on_host)}); use an optimizer whose state lives on the device (SGD, Adam, AdamW) or "
                "trainer.cuda_graph=false."
            )
        self._result = None  # the old graph's outputs: the new capture may reuse their memory
        self._static = _copy(batch)
        static = self._static
        try:
            self._result = self.capturer.capture(lambda: work(static))
        except RuntimeError as error:
            raise CaptureFailed(
                f"trainer.cuda_graph=true could not capture the training step at step {step} "
                f"({first_line(root_cause(error))}): something in it reads a value back from the GPU or copies one "
                "from the host (a loss term or weighting of your own?); the run stopped: run it with "
                "trainer.cuda_graph=false."
            ) from error


def root_cause(error: BaseException) -> BaseException:
    """What failed first: a step failing inside `torch.cuda.graph` makes its exit raise again, with the step's own
    error as the context (one level only: further back are errors already handled)."""
    return error.__cause__ or error.__context__ or error


def _shapes(batch: Sequence[Tensor | None]) -> list[tuple[int, ...] | None]:
    return [None if t is None else tuple(t.shape) for t in batch]


def _copy(batch: Batch) -> Batch:
    """The static batch the graph reads: a copy, all of it on the inputs' device (sample indices a loader keeps on
    the host are then moved outside the graph, by the copy before each replay)."""
    device = batch.x.device

    def copied(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device, copy=True)

    return batch._replace(
        x=batch.x.clone(), y=batch.y.to(device, copy=True), indices=copied(batch.indices), views=copied(batch.views)
    )
