"""TensorBoard events and metrics.json: everything a run reports, written into its run directory."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import re
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from distillab.errors import ConfigError, WriteFailed
from distillab.files import write_atomic

# The runs whose log records are being made, outermost first, where several runs train in one process (a fused
# sweep's group): each run's log file takes the records of its own run, of a run made inside it (the teacher it
# trains while it is set up), and those of none (the group's own lines).
_SPEAKING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("distillab_run", default=())


@contextlib.contextmanager
def speaking_for(run_dir: Path) -> Iterator[None]:
    token = _SPEAKING.set((*_SPEAKING.get(), run_dir))
    try:
        yield
    finally:
        _SPEAKING.reset(token)


class OfRun(logging.Filter):
    """Lets through the records of `run_dir`'s run, of the runs made inside it, and those made outside any run
    (`speaking_for`)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir

    def filter(self, record: logging.LogRecord) -> bool:
        speakers = _SPEAKING.get()
        return not speakers or self.run_dir in speakers


# `log.info(..., extra=SHARED)`: a line that every member of a fused group that shares it says word for word (the
# teacher it loads); the console shows it once (`OnceForTheGroup`).
SHARED = {"shared_by_the_group": True}


class OnceForTheGroup(logging.Filter):
    """On a console handler of a fused group: a `SHARED` line a member already showed is not shown again. Each
    member's log file still gets it; lines about one member (its steps, its errors) always show."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "shared_by_the_group", False):
            return True
        message = record.getMessage()
        if message in self.said:
            return False
        self.said.add(message)
        return True


# `loss_weight/<term>`: the effective weight of each loss term, next to `loss/<term>`, its raw value. TensorBoard's
# Time Series tab sorts its groups by name and opens the first two: `loss` and `loss_weight` (before `lr`, `train`,
# `val`). Runs written before December 2026 logged the weights as `weight/<term>` (the report reads both).
WEIGHT, OLD_WEIGHT = "loss_weight/", "weight/"


def custom_layout(terms: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars tab: one chart per loss term of its weight, then one of its raw value, each
    with a line per run shown. TensorBoard merges the layouts of the runs it shows by category title, leaving
    out repeated charts: a sweep over `loss=ce,kd,fitnet` gets one chart per term any of its runs has."""
    return {
        f"{title}, a chart per term": {
            f"{prefix}{term}": ["Multiline", [f"^{re.escape(prefix + term)}$"]] for term in terms
        }
        for title, prefix in (("weights", WEIGHT), ("loss terms (unweighted)", "loss/"))
    }


def wait_for_a_later_second(run_dir: Path) -> None:
    """Sleep (under a second) until the clock's second is past the last write of `run_dir`'s event files.

    TensorBoard reads a run's event files in name order, and a name starts with the second its writer opened,
    then the process id and a per-process counter compared as text: a resumed writer opened within the second
    of the previous one (a run resumed in the same process, as a notebook or a test does) could sort before it
    and have its points read first."""
    last = max((p.stat().st_mtime for p in run_dir.glob("events.out.tfevents.*")), default=None)
    if last is not None and time.time() < math.floor(last) + 1:
        time.sleep(max(0.0, math.floor(last) + 1 - time.time()))


class RunLogger:
    """Scalars into the run's own event file, and the HParams summary into the same run (no sub-run).
    With `enabled=False` (DDP ranks other than 0) it writes nothing.

    The writer (and TensorBoard's import) opens with the first point of training: what is logged before
    (the teachers' accuracy at step 0) waits for it, so none of it delays the first step. All the scalars
    of one point go into one event.

    Points are handed to the writer together: when a point comes `WRITE_EVERY_S` seconds or more after the
    last hand-over, at the end of each epoch, and before an image, the hparams and `close`. So a point
    waits at most until the first point logged a second after the last hand-over, or the epoch's end.
    TensorBoard's writer passes each event to a thread of its own: handing over every point on its own cost
    a small model's training about a third of a millisecond per point, mostly in the GIL contention that
    followed (`benchmarks/log_points.py`). For the same reason the writer keeps TensorBoard's queue of 10 events:
    with room for a second's points the hand-over returned at once, but the thread then serialised them while
    training ran, and a small model's steps took 10-28 us longer each (benchmarks/RESULTS.md).
    """

    WRITE_EVERY_S = 1.0

    def __init__(
        self, run_dir: Path, purge_step: int | None = None, enabled: bool = True, terms: Sequence[str] = ()
    ) -> None:
        """`terms`: the loss terms' names, for the Custom Scalars layout (`custom_layout`; none without terms)."""
        self.run_dir, self.purge_step, self.enabled, self.terms = run_dir, purge_step, enabled, terms
        self.writer: Any = None
        self._pending: list[tuple[dict[str, float], int]] = []
        self._written_at = -math.inf  # time.monotonic() of the last hand-over

    def _open(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step (resuming after step N: N + 1): TensorBoard drops what an earlier writer logged from
            # that step on, so steps re-run after a resume are not shown twice.
            if self.purge_step is not None:
                wait_for_a_later_second(self.run_dir)
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.purge_step)
            if self.terms:
                self.writer.add_custom_scalars(custom_layout(self.terms))
        return self.writer

    def write_pending(self) -> None:
        """Hand every pending point to the writer (opening it), in the order they were logged; the loop calls
        this at the end of each epoch."""
        if not self._pending:  # nothing is ever pending when disabled
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        writer = self._open().file_writer
        pending, self._pending = self._pending, []
        for values, step in pending:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
            writer.add_summary(summary, step)
        self._written_at = time.monotonic()

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if not self.enabled or not values:
            return
        self._pending.append((dict(values), step))
        if step > 0 and time.monotonic() - self._written_at >= self.WRITE_EVERY_S:
            self.write_pending()

    def hparams(
        self,
        hparams: Mapping[str, Any],
        metric_tags: Sequence[str],
        differs: Collection[str] = (),
        others: Collection[str] = (),
    ) -> None:
        """Hyperparameters for the HParams dashboard, with `metric_tags` as its metric columns.

        The keys in `differs` (a sweep's swept keys) are marked as differing between runs: the dashboard
        lists those first and ticks the first five, the others after them by name (TensorBoard 2.21).
        `others` are numeric keys that other runs of the sweep log and this one does not (a sweep over
        `loss=ce,kd`: `loss.temperature`): the dashboard takes its columns from one run's summary, so every
        run names them all; this run's cell stays empty.

        `SummaryWriter.add_hparams` would open a second, timestamped run; writing the three summaries
        with this run's own writer keeps them together. The dashboard shows each metric tag's last value:
        the tags are curves the run logs anyway (`val/acc` final, `val_best/acc` best so far,
        `teacher/val/acc`), so no single-point card is added to the Time Series tab for them.
        """
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        clean = {
            k: ("none" if v is None else v if isinstance(v, (bool, int, float, str)) else str(v))
            for k, v in hparams.items()
        }
        metrics = dict.fromkeys(metric_tags, 0.0)
        _, start, end = hparams_summaries(clean, metrics)
        experiment = hparams_summaries({**clean, **{k: 0.0 for k in others if k not in clean}}, metrics)[0]
        if differs:
            from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

            metadata = experiment.value[0].metadata.plugin_data
            data = HParamsPluginData.FromString(metadata.content)
            for info in data.experiment.hparam_infos:
                info.differs = info.name in differs
            metadata.content = data.SerializeToString()
        self.write_pending()
        for summary in (experiment, start, end):
            self._open().file_writer.add_summary(summary)

    def image(self, tag: str, image: Any, step: int) -> None:
        """One (3, H, W) image in [0, 1] for the Images tab."""
        if self.enabled:
            self.write_pending()
            self._open().add_image(tag, image, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.write_pending()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """JSON through `files.write_atomic`, so a reader never sees half a file."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


def flat_key(prefix: str, metric: str) -> str:
    """metrics.json's name of a metric at a point of the run: ("best", "val/acc") -> "best_val_acc"."""
    return f"{prefix}_{metric.replace('/', '_')}"


def _earlier_record(path: Path) -> dict[str, Any]:
    """A run's metrics.json as written, or {} where there is none (or none that reads as a record). (The report's
    `read_metrics` says what is wrong with an unreadable one; here it is simply replaced.)"""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_failure(run_dir: Path, status: str, error: BaseException, so_far: Mapping[str, Any] | None = None) -> None:
    """metrics.json says how the run ended (`failed`, `interrupted`) and why, with what it reached `so_far`
    (epochs, best and last validation metrics: the report's row of an unfinished run). An interruption that
    reached nothing (no `so_far`: a signal outside training) leaves the record of a run that ended, completed or
    failed, as it is, and keeps what an earlier interruption recorded. Bad input never replaces
    an earlier run's metrics.json; and where the status itself cannot be written (the disk that refused a
    checkpoint), the console and the log say so, so that the status is not lost silently."""
    path = run_dir / "metrics.json"
    if isinstance(error, ConfigError) and path.exists():
        return
    earlier = _earlier_record(path) if status == "interrupted" and so_far is None else {}
    if earlier.get("status") in ("completed", "failed"):  # (a continued sweep's finished job, a group's member)
        return
    if earlier.get("status") == "interrupted":  # stopped again before the resumed run got further: keep how far
        so_far = {k: v for k, v in earlier.items() if k not in ("status", "error")}
    try:
        write_json(path, {"status": status, "error": f"{type(error).__name__}: {error}", **(so_far or {})})
    except WriteFailed as failed:
        logging.getLogger("distillab").error("the run's status (%s) could not be recorded: %s", status, failed)
