"""The end of a `--multirun` sweep: one table of every job and the command that makes the report.

A Hydra callback (`hydra.callbacks.sweep_summary` in config.yaml), run by the process that launched the
jobs once they have all ended. It reads what each job wrote (`metrics.json`, `.hydra/overrides.yaml`),
so it works with every launcher whose jobs share the file system.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_table(sweep_dir: Path) -> str:
    """The jobs of the sweep in `sweep_dir`, one line each: swept keys, status, best (epoch) and final metric
    (the report's rows, `report.per_run_rows`, as aligned text)."""
    from distillab.report import per_run_rows
    from distillab.report.runs import fmt, load_runs, monitored, unstarted_jobs, varying_keys

    runs, skipped = load_runs(sweep_dir, curves=False)
    unstarted = unstarted_jobs(sweep_dir, runs, skipped)
    if not runs:
        return f"sweep {sweep_dir}: no job wrote a run directory" + (
            f" that can be read ({len(skipped)} cannot)" if skipped else ""
        )
    keys = varying_keys(runs) if len(runs) > 1 else []
    keys = sorted({*keys, *(k for job in unstarted for k in job)})  # what tells the jobs apart, started or not
    monitor = monitored(runs)
    columns = {
        **{k: k for k in keys},
        "status": "status",
        "best": f"best {monitor}",
        "best_epoch": "epoch",
        "final": f"final {monitor}",
    }
    ended = [
        {**row, "status": "not finished" if row["status"] in ("running", "died") else row["status"]}
        for row in per_run_rows(runs, keys)
    ]
    rows = [[fmt(row[c]) for c in columns] for row in ended]  # (the sweep has ended: no job of it is running)
    rows += [
        [job.get(c, "-") if c in keys else "not started" if c == "status" else "-" for c in columns]
        for job in unstarted
    ]
    header = list(columns.values())
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    failed = sum(run.status != "completed" for run in runs)
    title = f"sweep {sweep_dir}: {len(runs) + len(unstarted)} jobs" + (f", {failed} not completed" if failed else "")
    title += f", {len(unstarted)} not started" if unstarted else ""
    unreadable = [f"skipped {s.file}: {s.reason}" for s in skipped]
    return "\n".join([title, *lines, *unreadable])


_PRINTED: set[str] = set()


def forget_printed() -> None:
    """A new command in this process (a test, a notebook): its sweep's table is printed, even for a sweep
    directory an earlier command printed (a sweep continued)."""
    _PRINTED.clear()


def print_summary(sweep_dir: Path) -> None:
    """The table and the commands, on stderr, once per sweep directory."""
    if str(sweep_dir) in _PRINTED:
        return
    _PRINTED.add(str(sweep_dir))
    try:
        table = sweep_table(sweep_dir)
    except Exception as error:  # a summary must never turn a finished sweep into a failed one
        table = f"sweep {sweep_dir}: could not read its jobs ({type(error).__name__}: {error})"
    report = shlex.join(["python", "-m", "distillab.report", str(sweep_dir)])
    compare = shlex.join(["tensorboard", "--logdir", str(sweep_dir)])
    print(f"{table}\nreport: {report}\ncompare: {compare}", file=sys.stderr, flush=True)


class SweepSummary(Callback):
    """Prints the sweep's table and the report command when a multirun ends. (Hydra skips this when a job
    failed; the CLI then prints it for jobs that ran in its own process, `cli.main`.)"""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_summary(Path(config.hydra.sweep.dir))
