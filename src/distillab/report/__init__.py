"""Sweep report: Markdown and CSV tables and PNG plots of a sweep's (or a run's) results.

`python -m distillab.report <sweep or run dir> [--baseline KEY=VALUE ...]`.

Reads what the runs wrote (`.hydra/overrides.yaml`, `metrics.json`, TensorBoard event files), so it works
on a finished sweep, on one still running (jobs without metrics.json are listed as `running`), and on a
single run directory. Writes into `<dir>/report/` and prints the paths:

- `runs.csv`: one row per run.
- `summary.csv`: one row per group of runs that differ only in `trainer.seed`: the swept keys, `n`, mean and
  sample std of the best and final monitored metric; with `--baseline loss=ce`, the paired difference to the
  baseline group over the seeds both have (`delta_*_mean`) and its 95 % Student-t half-width (`delta_*_ci95`).
- `report.md` with both tables and the plots: `val_curves.png`, `weights.png`, `heatmap.png`.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillab.report.plots import plot_curves, plot_heatmap, plot_weights
from distillab.report.runs import SEED_KEY, Run, find_runs, fmt, load_run, monitored, varying_keys
from distillab.report.stats import parse_baseline, summary_rows

__all__ = ["Run", "find_runs", "fmt", "load_run", "main", "summary_rows", "varying_keys", "write_report"]


def per_run_rows(runs: list[Run], varying: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        weights = run.metrics.get("final_weights") or {}
        rows.append(
            {
                "run": run.label(varying),
                **{k: run.overrides.get(k, "") for k in varying},
                "status": run.status,
                "monitor": run.monitor,
                "best": run.value("best"),
                "final": run.value("final"),
                "best_epoch": run.metrics.get("best_epoch"),
                "teacher": run.metrics.get("teacher_val_acc"),
                "final_weights": " ".join(f"{k}={v:.3g}" for k, v in weights.items()),
                "train_time_s": run.metrics.get("train_time_s"),
                "error": run.metrics.get("error", ""),
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
    return [*parts, markdown_table(shown, columns, headers), ""]


def write_report(root: Path, baseline: Sequence[str] = ()) -> list[Path]:
    runs = [load_run(p) for p in find_runs(root)]
    if not runs:
        raise SystemExit(
            f"distillab.report: no runs under {root}: give a sweep directory (outputs/multirun/DATE/TIME) or a run "
            "directory."
        )
    varying = varying_keys(runs)
    try:
        wanted = parse_baseline(baseline, varying)
        summary = summary_rows(runs, varying, wanted)
    except ValueError as error:
        raise SystemExit(f"distillab.report: {error}") from None
    out_dir = root / "report"
    out_dir.mkdir(exist_ok=True)
    rows = per_run_rows(runs, varying)
    written = [write_csv(out_dir / "runs.csv", rows)]
    if summary:
        written.append(write_csv(out_dir / "summary.csv", summary))

    monitor = monitored(runs)
    columns = ["run", "status", "best", "final", "best_epoch", "teacher", "final_weights", "train_time_s"]
    parts = [
        f"# Sweep report: {root}",
        "",
        f"{len(runs)} runs; metric: {monitor} (best = at the best epoch, final = last epoch); teacher = "
        "teacher_val_acc.",
        "",
    ]
    if summary and (SEED_KEY in varying or wanted):
        parts += summary_section(summary, [k for k in varying if k != SEED_KEY], monitor.replace("/", "_"), wanted)
    parts += ["## Runs", "", markdown_table(rows, columns), ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        parts += (
            ["## Failed runs", ""]
            + [f"- `{r['run']}`: {r['error']} (log: {r['dir']}/distillab.log)" for r in failed]
            + [""]
        )
    plots = [
        plot_curves(runs, varying, out_dir / "val_curves.png"),
        plot_weights(runs, varying, out_dir / "weights.png"),
        plot_heatmap(runs, out_dir / "heatmap.png"),
    ]
    for plot in filter(None, plots):
        parts += [f"![{plot.stem}]({plot.name})", ""]
        written.append(plot)
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(parts))
    written.insert(0, md_path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillab.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory", type=Path, help="a sweep directory (outputs/multirun/DATE/TIME) or a single run directory"
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="the group to compare against, e.g. loss=ce: paired differences over the seeds both have",
    )
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"distillab.report: {args.directory} is not a directory: give a sweep or run directory.")
    for path in write_report(args.directory, args.baseline):
        print(f"wrote {path}")
