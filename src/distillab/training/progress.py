"""Progress of a stage: on a terminal one live bar over the stage's batches with its epoch, rate and ETA (log
lines are written above it, not glued to it); elsewhere (log files, SLURM) a log line at most every
`interval_s` seconds with step, epoch, rate and ETA, so a slow epoch is never minutes of silence. Costs one
clock read per step."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("distillab.training")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class ProgressReport:
    """`bar`: a tqdm bar (a terminal); otherwise periodic log lines. `label` names the stage ("epoch" for
    the main training, "init/fsp" for an init stage; the teacher's training runs as a run of its own)."""

    def __init__(self, bar: bool, label: str, epochs: int, batches: int, interval_s: float = 30.0) -> None:
        self.use_bar, self.label, self.epochs, self.batches, self.interval_s = bar, label, epochs, batches, interval_s
        self.bar: Any = None
        self._redirect = contextlib.ExitStack()
        self.epoch = 0
        self.done = 0  # batches done in this stage since the report started
        self.remaining = 0
        self.started = self.last = time.monotonic()

    def start_epoch(self, epoch: int, skipped: int) -> None:
        self.epoch = epoch
        self.remaining = (self.epochs - epoch) * self.batches - skipped
        if not self.use_bar:
            return
        if self.bar is None:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            root = logging.getLogger()
            before = list(root.handlers)
            console_level = min((h.level for h in before if type(h) is logging.StreamHandler), default=logging.NOTSET)
            self._redirect.enter_context(logging_redirect_tqdm())  # the console's log lines go above the bar
            for handler in root.handlers:
                if handler not in before:  # tqdm's stand-in for the console keeps the console's level
                    handler.setLevel(console_level)
            self.bar = tqdm(
                total=self.epochs * self.batches,
                initial=epoch * self.batches + skipped,
                unit="batch",
                dynamic_ncols=True,
                leave=False,
            )
        self.bar.set_description(f"{self.label} {epoch + 1}/{self.epochs}", refresh=False)

    def update(self, step: int) -> None:
        self.done += 1
        self.remaining -= 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            rate = self.done / (now - self.started)
            log.info(
                "%s %d/%d  step %d  %.1f batches/s  ETA %s (this stage)",
                self.label,
                self.epoch + 1,
                self.epochs,
                step,
                rate,
                _duration(self.remaining / rate if rate > 0 else 0),
            )
            self.last = now

    def end_epoch(self, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                {
                    k.split("/")[-1] if k.startswith("val/") else k: f"{v:.4g}"
                    for k, v in metrics.items()
                    if k.startswith(("val/", "init/", "loss/total"))
                },
                refresh=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._redirect.close()
