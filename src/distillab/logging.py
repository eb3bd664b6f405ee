"""TensorBoard events and metrics.json: everything a run reports, written into its run directory."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

# All weights of a run on one chart, all loss terms on another (TensorBoard's "Custom Scalars" tab).
CUSTOM_LAYOUT = {
    "distillab": {
        "loss terms (unweighted)": ["Multiline", [r"loss/(?!total).*"]],
        "weights": ["Multiline", [r"weight/.*"]],
    }
}


class RunLogger:
    """Scalars into the run's own event file, and the HParams summary into the same run (no sub-run).
    With `enabled=False` (DDP ranks other than 0) it writes nothing."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        # purge_step (resuming after step N: N + 1): TensorBoard drops what an earlier writer logged from
        # that step on, so steps re-run after a resume are not shown twice.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.writer.add_custom_scalars(CUSTOM_LAYOUT)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int) -> None:
        """Hyperparameters with final metrics for the HParams dashboard.

        `SummaryWriter.add_hparams` would open a second, timestamped run; writing the three summaries
        with this run's own writer keeps them together. Each metric is also a scalar tag, which is
        where the dashboard reads its value from.
        """
        if not self.enabled:
            return
        clean = {k: ("none" if v is None else v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
        numbers = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        for summary in hparams_summaries(clean, numbers):
            self.writer.file_writer.add_summary(summary)
        self.scalars(numbers, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.flush()
        self.writer.close()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write (temporary file + rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
