"""Sweep report: Markdown and CSV tables and PNG plots of a sweep's (or a run's) results.

`python -m distillab.report <sweep or run dir> [--baseline KEY=VALUE ...] [--out DIR]`.

Reads what the runs wrote (`.hydra/overrides.yaml`, `metrics.json`, TensorBoard event files), so it works
on a finished sweep, on one still running (jobs without metrics.json are `running` while a process holds their
directory, `died` once none does), and on a
single run directory. A run whose files cannot be used (a truncated metrics.json, a metric that is not a
number) is named in a warning and left out. Writes into `<dir>/report/` (or `--out DIR`) and prints the paths:

- `runs.csv`: one row per run.
- `summary.csv`: one row per group of runs that differ only in `trainer.seed`: the swept keys, `n`, mean and
  sample std of the best and final monitored metric; with `--baseline loss=ce`, the paired difference to the
  baseline group over the seeds both have (`delta_*_mean`) and its 95 % Student-t half-width (`delta_*_ci95`).
- `report.md` with both tables and the plots: `val_curves.png`, `weights.png`, `heatmap.png`.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from distillab.errors import os_reason
from distillab.report.plots import plot_curves, plot_heatmap, plot_weights
from distillab.report.runs import (
    SEED_KEY,
    Run,
    UnreadableRun,
    find_runs,
    fmt,
    load_run,
    load_runs,
    monitored,
    unstarted_jobs,
    varying_keys,
)
from distillab.report.stats import parse_baseline, summary_rows

__all__ = [
    "ReportError",
    "Run",
    "UnreadableRun",
    "find_runs",
    "fmt",
    "load_run",
    "load_runs",
    "main",
    "summary_rows",
    "varying_keys",
    "write_report",
]

log = logging.getLogger(__name__)


DIED = (
    "no process holds its directory and it wrote no metrics.json: it was killed (kill -9, out of memory) or its "
    "interpreter crashed; its checkpoints/last.pt, if there is one, resumes it (its command again with "
    "trainer.resume=true; for a sweep's job, the sweep's command with its hydra.sweep.dir)"
)


class ReportError(Exception):
    """A report that cannot be made, in one sentence: `main` prints it and exits with status 2."""


def per_run_rows(runs: list[Run], varying: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        weights = run.metrics.get("final_weights") or {}
        rows.append(
            {
                "run": run.label(varying),
                **{k: run.seed if k == SEED_KEY else run.overrides.get(k, "") for k in varying},  # (seed: as run)
                "status": run.status,
                "monitor": run.monitor,
                "best": run.value("best"),
                "final": run.value("final"),
                "best_epoch": run.metrics.get("best_epoch"),
                "teacher": run.metrics.get("teacher_val_acc"),
                "final_weights": " ".join(f"{k}={v:.3g}" for k, v in weights.items()),
                "train_time_s": run.metrics.get("train_time_s"),
                "error": run.metrics.get("error", "") or (DIED if run.status == "died" else ""),
                "dir": str(run.path),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: list[str], headers: Sequence[str] | None = None) -> str:
    lines = ["| " + " | ".join(headers or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def _pm(mean: float | None, spread: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if spread is None else f"{mean:.2f} ± {spread:.2f}"


def spread_note(rows: list[dict[str, Any]], keys: list[str], metric: str, baseline: dict[str, str]) -> str | None:
    """Why std or CI cells are empty: a group with one seed, or fewer than 2 seeds paired with the baseline."""
    if all(row["n"] == 1 for row in rows):
        what = "std and CI: need" if baseline else "std: needs"
        return f"{what} at least 2 seeds per group; each group here has 1 (sweep {SEED_KEY}=0,1,2 to get them)."
    if baseline:
        cis = (f"delta_final_{metric}_ci95", f"delta_best_{metric}_ci95")
        lacking = [(row, row["n_paired"]) for row in rows if any(row[ci] is None for ci in cis)]
    else:
        lacking = [(row, row["n"]) for row in rows if row["n"] < 2]
    if not lacking:
        return None
    named = [(",".join(f"{k}={row[k]}" for k in keys if row[k] != "") or "the runs", n) for row, n in lacking]
    listed = ", ".join(f"{name} has {n}" for name, n in named[:3])  # (a parent folder's report: many groups)
    listed += f", and {len(named) - 3} more" if len(named) > 3 else ""
    against = ",".join(f"{k}={v}" for k, v in baseline.items())
    paired = f" run by both it and {against} (the same {SEED_KEY})" if baseline else ""
    return f"{'CI' if baseline else 'std'}: needs at least 2 seeds per group{paired}; {listed}."


def summary_section(rows: list[dict[str, Any]], keys: list[str], metric: str, baseline: dict[str, str]) -> list[str]:
    """The summary as Markdown: mean ± sample std over seeds, and the paired delta ± 95 % CI half-width."""
    shown = []
    for row in rows:
        cells = {k: row[k] for k in keys} | {"n": row["n"]}
        for which in ("best", "final"):
            cells[which] = _pm(row[f"{which}_{metric}_mean"], row[f"{which}_{metric}_std"])
        if baseline:
            for which in ("final", "best"):
                cells[f"d{which}"] = _pm(row[f"delta_{which}_{metric}_mean"], row[f"delta_{which}_{metric}_ci95"])
        shown.append(cells)
    columns = [*keys, "n", "best", "final"]
    headers = [*keys, "n", "best (mean ± std)", "final (mean ± std)"]
    parts = ["## Summary over seeds", ""]
    if baseline:
        against = ",".join(f"{k}={v}" for k, v in baseline.items())
        columns += ["dfinal", "dbest"]
        headers += [f"Δ final vs {against} (± 95% CI)", f"Δ best vs {against} (± 95% CI)"]
        parts += [
            f"Δ: the paired difference to the {against} runs of the same seed, mean ± the half-width of its 95 % "
            "Student-t confidence interval; an interval that excludes 0 is a difference the seeds agree on.",
            "",
        ]
    notes = [n for n in (spread_note(rows, keys, metric, baseline), repeat_note(rows, keys)) if n]
    for note in notes:
        log.info(note)  # on the terminal too: why report.md's std or CI cells are empty, what n counts
    return [*parts, markdown_table(shown, columns, headers), "", *(f"{note}\n" for note in notes)]


def repeat_note(rows: list[dict[str, Any]], keys: list[str]) -> str | None:
    """Where runs repeat a seed (the same sweep run twice): n counts seeds, and the repeats were averaged."""
    repeated = [row for row in rows if row["runs"] > row["n"]]
    if not repeated:
        return None
    listed = "; ".join(
        f"{','.join(f'{k}={row[k]}' for k in keys) or 'the runs'}: {row['runs']} runs of {row['n']} seeds"
        for row in repeated
    )
    return (
        "n counts seeds: runs that repeat a seed were averaged into that seed's value before the mean, std and "
        f"pairing ({listed})."
    )


@contextmanager
def writing(path: Path, out_dir: Path) -> Iterator[None]:
    """An OSError while writing `path` as one sentence: the file, the system's reason, what to do."""
    try:
        yield
    except OSError as error:
        where = f"the report into {out_dir}" if path == out_dir else str(path)
        raise ReportError(f"cannot write {where} ({os_reason(error)}): give another folder with --out DIR.") from None


def write_report(root: Path, baseline: Sequence[str] = (), out: Path | None = None) -> list[Path]:
    """Writes the report of the sweep or run in `root` into `out` (default `root/report`); returns the files."""
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ReportError(f"{root} {what}: give a sweep directory (outputs/multirun/DATE/TIME) or a run directory.")
    runs, skipped = load_runs(root)
    for unreadable in skipped:
        log.warning("skipped %s: %s", unreadable.file, unreadable.reason)
    if not runs:
        found = f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""
        raise ReportError(
            f"no runs under {root}{found}: give a sweep directory (outputs/multirun/DATE/TIME) or a run directory."
        )
    varying = varying_keys(runs)
    try:
        wanted = parse_baseline(baseline, varying)
        summary = summary_rows(runs, varying, wanted)
    except ValueError as error:
        raise ReportError(str(error)) from None
    out_dir = root / "report" if out is None else out
    with writing(out_dir, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = per_run_rows(runs, varying)
    with writing(out_dir / "runs.csv", out_dir):
        written = [write_csv(out_dir / "runs.csv", rows)]
    if summary:
        with writing(out_dir / "summary.csv", out_dir):
            written.append(write_csv(out_dir / "summary.csv", summary))

    unstarted = unstarted_jobs(root, runs, skipped)
    monitor = monitored(runs)
    columns = ["run", "status", "best", "final", "best_epoch", "teacher", "final_weights", "train_time_s"]
    parts = [
        f"# {'Sweep report' if len(runs) + len(skipped) > 1 else 'Run report'}: {root}",
        "",
        f"{len(runs)} run{'' if len(runs) == 1 else 's'}{f' ({len(skipped)} skipped, see below)' if skipped else ''}"
        f"{f', {len(unstarted)} jobs not started (see below)' if unstarted else ''}; metric: {monitor} "
        "(best = at the best epoch, final = last epoch, so far for a run not completed); teacher = teacher_val_acc.",
        "",
    ]
    if summary and (SEED_KEY in varying or wanted):
        parts += summary_section(summary, [k for k in varying if k != SEED_KEY], monitor.replace("/", "_"), wanted)
    parts += ["## Runs", "", markdown_table(rows, columns), ""]
    failed = [r for r in rows if r["status"] in ("failed", "refused", "died")]
    if failed:
        parts += (
            ["## Failed runs", ""]
            + [f"- `{r['run']}`: {r['error']} (log: {r['dir']}/distillab.log)" for r in failed]
            + [""]
        )
    if skipped:
        parts += ["## Skipped runs", "", *(f"- `{s.file}`: {s.reason}" for s in skipped), ""]
    if unstarted:
        listed = [f"- `{','.join(f'{k}={v}' for k, v in job.items())}`" for job in unstarted]
        parts += [
            "## Jobs not started",
            "",
            "The sweep's multirun.yaml lists them; no run directory exists.",
            "",
            *listed,
            "",
        ]
    plots = []
    with writing(out_dir / "val_curves.png", out_dir):
        plots.append(plot_curves(runs, varying, out_dir / "val_curves.png"))
    with writing(out_dir / "weights.png", out_dir):
        plots.append(plot_weights(runs, varying, out_dir / "weights.png"))
    with writing(out_dir / "heatmap.png", out_dir):
        plots.append(plot_heatmap(runs, out_dir / "heatmap.png"))
    for plot in filter(None, plots):
        parts += [f"![{plot.stem}]({plot.name})", ""]
        written.append(plot)
    md_path = out_dir / "report.md"
    with writing(md_path, out_dir):
        md_path.write_text("\n".join(parts))
    written.insert(0, md_path)
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ReportError(f"{message} (see python -m distillab.report --help).")


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="python -m distillab.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory",
        type=Path,
        nargs="?",  # (also read after --baseline's pairs, which take every word up to the next option)
        help="a sweep directory (outputs/multirun/DATE/TIME) or a single run directory",
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="the group to compare against, e.g. loss=ce: paired differences over the seeds both have",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write the report into DIR (created if missing), not DIRECTORY/report"
    )
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setFormatter(logging.Formatter("distillab.report: warning: %(message)s"))
    warnings.setLevel(logging.WARNING)
    notes = logging.StreamHandler(sys.stdout)  # what the report says about itself (empty std/CI cells)
    notes.setFormatter(logging.Formatter("note: %(message)s"))
    notes.addFilter(lambda record: record.levelno == logging.INFO)
    log.addHandler(warnings)
    log.addHandler(notes)
    level, log.level = log.level, logging.INFO
    try:
        args = parser.parse_args(argv)
        last = args.baseline[-1] if args.baseline else ""
        if args.directory is None and last and ("=" not in last or Path(last).is_dir()):
            args.directory = Path(args.baseline.pop())  # `--baseline loss=ce DIR` (a job's DIR may hold `=`)
        if args.directory is None:
            parser.error("the following arguments are required: directory")
        for pair in args.baseline:
            if "=" not in pair:
                parser.error(f"--baseline takes KEY=VALUE pairs (loss=ce): {pair} is not one")
        written = write_report(args.directory, args.baseline, args.out)
    except ReportError as error:
        print(f"distillab.report: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        log.removeHandler(warnings)
        log.removeHandler(notes)
        log.setLevel(level)
    for path in written:
        print(f"wrote {path}")
