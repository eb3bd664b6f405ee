"""Where the loop is, and everything a resumed run needs to go on exactly as if it had never stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from distillab import distributed

Record = tuple[Tensor, ...]  # one step's tensors, as `Stage.record` keeps them (not yet reduced)
Summarise = Callable[[list[Record]], Tensor]  # several records -> their summed scalars, one 1-d tensor

HOLD_STEPS = 16  # records held before they are summed together (fewer when they are large)
HOLD_BYTES = 4 << 20  # at most this much memory in held records


def stack_and_sum(records: list[Record]) -> Tensor:
    """The default `Summarise`: records of one 1-d tensor each, added up."""
    if len(records[0]) != 1:  # a stage's records need the stage's own (`Stage.summarise`)
        raise ValueError(f"stack_and_sum sums records of one tensor; these have {len(records[0])}")
    return torch.stack([r[0] for r in records]).sum(0)


class RunningSums:
    """Per-step records summed on the device: nothing is read back until `flush`, so a step that does not
    log never waits for the device.

    A step's record (`Stage.record`: views of its tensors, and the weights it applied) is held and summed
    with the next ones, up to `HOLD_STEPS` of them (fewer when large) at a time, by one call of the
    `summarise` passed to `add` and `flush`. For the main training that is `Stage.summarise`: a few stacks,
    and the task's training sums (the accuracy) over the held batches at once. Per step, computing the
    accuracy and concatenating and adding the record cost about a sixth of a small model's step on the CPU
    (`benchmarks/overhead.py --tiny`). Flushed values go into two host-side sums, one since the last
    TensorBoard point and one since the epoch began, each with its number of steps and of samples.

    Under `trainer.nan_policy=skip_step` each record comes with `keep`, a device bool saying whether its step was
    kept: a skipped step's record (NaN, most likely) is left out of the sums, and the steps and samples kept are
    counted on the device with them, so that leaving it out needs no host read either."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.device_total: Tensor | None = None
        self.device_counts: Tensor | None = None  # skip_step: the steps and samples kept, summed on the device
        self.pending: list[Record] = []
        self.keeps: list[tuple[Tensor, int]] = []  # each pending record's `keep` and samples (skip_step)
        self.hold = 0  # how many records to hold, set from the first record's size
        self.steps = self.samples = 0  # not yet flushed
        self.point: dict[str, float] = {}
        self.epoch: dict[str, float] = {}
        self.counts = {"point_steps": 0, "point_samples": 0, "epoch_steps": 0, "epoch_samples": 0}

    def add(
        self,
        record: Record,
        names: Sequence[str],
        samples: int,
        summarise: Summarise = stack_and_sum,
        keep: Tensor | None = None,
    ) -> None:
        if not self.names:
            self.names = list(names)
        if not self.hold:
            self.hold = max(1, min(HOLD_STEPS, HOLD_BYTES // max(sum(t.nbytes for t in record), 1)))
        self.pending.append(record)
        if keep is None:
            self.steps += 1
            self.samples += samples
        else:  # counted on the device, with the record (`_sum_pending`)
            self.keeps.append((keep, samples))
        if len(self.pending) >= self.hold:
            self._sum_pending(summarise)

    def _sum_pending(self, summarise: Summarise) -> None:
        if not self.pending:
            return
        if self.keeps:  # each record summed alone, the skipped ones masked out, then the steps and samples kept
            keep = torch.stack([k for k, _ in self.keeps])
            rows = torch.stack([summarise([record]) for record in self.pending])
            samples = torch.tensor([n for _, n in self.keeps], dtype=rows.dtype, device=rows.device)
            counts = torch.stack([keep.sum(dtype=rows.dtype), torch.where(keep, samples, 0).sum()])
            self.device_counts = counts if self.device_counts is None else self.device_counts.add_(counts)
            total = torch.where(keep[:, None], rows, 0).sum(0)
        else:
            total = summarise(self.pending)
        self.pending, self.keeps = [], []
        self.device_total = total if self.device_total is None else self.device_total.add_(total)

    def flush(self, over_ranks: bool = False, summarise: Summarise = stack_and_sum) -> None:
        """Read the device sums (one sync) into the host sums; `over_ranks`: added up over the DDP ranks.
        `summarise` is the one the records were added with."""
        self._sum_pending(summarise)
        if self.device_total is None:
            return
        total = self.device_total
        steps, samples = self.steps, self.samples
        if self.device_counts is not None:  # read with the sums, at once
            *values, kept_steps, kept_samples = torch.cat([total, self.device_counts]).tolist()
            total, steps, samples = torch.tensor(values), steps + int(kept_steps), samples + int(kept_samples)
        if over_ranks:
            counts = torch.tensor([steps, samples], dtype=total.dtype, device=total.device)
            reduced = distributed.sum_over_ranks(torch.cat([total, counts]))
            total, steps, samples = reduced[:-2], int(reduced[-2].item()), int(reduced[-1].item())
        for name, value in zip(self.names, total.tolist()):
            self.point[name] = self.point.get(name, 0.0) + value
            self.epoch[name] = self.epoch.get(name, 0.0) + value
        for which in ("point", "epoch"):
            self.counts[f"{which}_steps"] += steps
            self.counts[f"{which}_samples"] += samples
        self.device_total, self.device_counts, self.steps, self.samples = None, None, 0, 0

    def pop(self, which: str) -> tuple[dict[str, float], int, int]:
        """`point` or `epoch`: (sums, steps, samples) since the last pop of that kind."""
        sums = getattr(self, which)
        setattr(self, which, {})
        steps, samples = self.counts[f"{which}_steps"], self.counts[f"{which}_samples"]
        self.counts[f"{which}_steps"] = self.counts[f"{which}_samples"] = 0
        return sums, steps, samples

    def state_dict(self) -> dict[str, Any]:
        """The held records are kept as they are, so a resumed run sums the same steps together (and its
        sums are bit-identical to an uninterrupted run's)."""
        total = None if self.device_total is None else self.device_total.cpu()
        return {
            "names": list(self.names),
            "device_total": total,
            "pending": [[t.cpu() for t in record] for record in self.pending],
            "keeps": [(keep.cpu(), samples) for keep, samples in self.keeps],
            "device_counts": None if self.device_counts is None else self.device_counts.cpu(),
            "hold": self.hold,
            "steps": self.steps,
            "samples": self.samples,
            "point": dict(self.point),
            "epoch": dict(self.epoch),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        self.names = list(state["names"])
        total = state["device_total"]
        self.device_total = None if total is None else total.to(device or total.device)
        self.pending = [tuple(t.to(device or t.device) for t in record) for record in state.get("pending", [])]
        self.keeps = [(keep.to(device or keep.device), samples) for keep, samples in state.get("keeps", [])]
        counts = state.get("device_counts")
        self.device_counts = None if counts is None else counts.to(device or counts.device)
        self.hold = state.get("hold", 0)  # checkpoints from before records were held have neither
        self.steps, self.samples = state["steps"], state["samples"]
        self.point, self.epoch, self.counts = dict(state["point"]), dict(state["epoch"]), dict(state["counts"])


@dataclass
class FitResult:
    """What `Trainer.fit_group` reports back for each member; the runner turns it into metrics.json."""

    best: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    final_weights: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    steps: int = 0  # the main training's steps
    stages: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # init stages: {"init/ft": {"epochs": 30, "steps": 690}}
    train_time_s: float = 0.0
    samples_per_s: float = 0.0


@dataclass
class Progress:
    """Where the loop is: with the modules' and optimizers' states, all a resumed run needs (the data
    order depends only on the seed and the epoch). `stage` indexes the run's stages (init stages first,
    the main training last); `epoch`, `batch` and `stage_steps` count within it; `step` counts every
    optimizer step of the run (TensorBoard's x axis)."""

    stage: int = 0
    epoch: int = 0  # epochs of the current stage completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0
    stage_steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0  # time in the main training's steps (for samples/s)
    elapsed: float = 0.0  # time in `fit`, validation included
    skipped_steps: int = 0
    last_weights: dict[str, float] = field(default_factory=dict)
    result: FitResult = field(default_factory=FitResult)
    sums: RunningSums = field(default_factory=RunningSums)
    norms: RunningSums = field(default_factory=RunningSums)  # grad_norm/<term>, on the steps that measure them

    def next_stage(self, name: str, main: bool) -> None:
        if not main:
            self.result.stages[name] = {"epochs": self.epoch, "steps": self.stage_steps}
        self.stage, self.epoch, self.batch, self.stage_steps = self.stage + 1, 0, 0, 0
        self.sums, self.norms = RunningSums(), RunningSums()

    def state_dict(self) -> dict[str, Any]:
        plain = {k: v for k, v in vars(self).items() if not isinstance(v, (RunningSums, FitResult))}
        return {
            **plain,
            "result": asdict(self.result),
            "sums": self.sums.state_dict(),
            "norms": self.norms.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | None = None) -> Progress:
        plain = {k: v for k, v in state.items() if k not in ("result", "sums", "norms")}
        progress = cls(**plain, result=FitResult(**state["result"]))
        progress.sums.load_state_dict(state["sums"], device)
        progress.norms.load_state_dict(state["norms"], device)
        return progress


class StopSignals:
    """SIGTERM and SIGINT during training only set `signum`; the loop checks it after each step, so the
    step in flight finishes and a checkpoint is written. A second signal acts as it normally would."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
