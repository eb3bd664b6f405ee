"""Sweep report: `python -m distillab.report <sweep or run dir>` -> Markdown + CSV table and PNG plots.

Reads what the runs wrote (`.hydra/overrides.yaml`, `metrics.json`, TensorBoard event files), so it works
on a finished sweep, on one still running (jobs without metrics.json are listed as `running`), and on a
single run directory. Writes into `<dir>/report/` and prints the paths.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_KEY = "trainer.seed"


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.metrics.get("status", "running")

    @property
    def monitor(self) -> str:
        return self.metrics.get("monitor", "val/acc")

    def value(self, which: str) -> float | None:
        """`best` or `final` value of the monitored metric."""
        return self.metrics.get(f"{which}_{self.monitor.replace('/', '_')}")

    def label(self, varying: list[str], drop: tuple[str, ...] = ()) -> str:
        shown = [f"{k}={self.overrides[k]}" for k in varying if k in self.overrides and k not in drop]
        return ",".join(shown) or self.path.name


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root` (Hydra writes `.hydra/` into each), skipping cached teachers."""
    if (root / ".hydra").is_dir() or (root / "metrics.json").is_file():
        return [root]
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    return sorted(p for p in found if "cache" not in p.relative_to(root).parts)


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags().get("scalars", []) if t.startswith(("val/", "weight/", "loss/total"))]
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def load_run(path: Path) -> Run:
    overrides_file = path / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    overrides = dict(item.split("=", 1) for item in items or [] if "=" in item and not item.startswith("hydra"))
    overrides = {k.lstrip("+~"): v for k, v in overrides.items() if not k.startswith(("paths.", "hydra"))}
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(path, overrides, metrics, read_curves(path))


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (all keys for a single run)."""
    keys = sorted({k for r in runs for k in r.overrides})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def per_run_rows(runs: list[Run], varying: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        weights = run.metrics.get("final_weights") or {}
        rows.append({
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
        })
    return rows


def seed_groups(runs: list[Run], varying: list[str]) -> list[dict[str, Any]]:
    """Runs that differ only in `trainer.seed`, as mean +- std (sample std) of best and final."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "completed":
            groups[run.label(varying, drop=(SEED_KEY,))].append(run)
    rows = []
    for name, members in groups.items():
        best = mean_std([r.value("best") for r in members])
        final = mean_std([r.value("final") for r in members])
        rows.append({"config": name, "seeds": len(members), "best_mean": best[0], "best_std": best[1], "final_mean": final[0], "final_std": final[1]})
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# plots ----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 150, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    return plt


def plot_curves(runs: list[Run], varying: list[str], out: Path) -> Path | None:
    with_curves = [r for r in runs if r.monitor in r.curves]
    if not with_curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.cm.viridis([i / max(len(with_curves) - 1, 1) for i in range(len(with_curves))])
    for color, run in zip(colors, sorted(with_curves, key=lambda r: -(r.value("best") or -math.inf))):
        values = [v for _, v in run.curves[run.monitor]]
        ax.plot(range(1, len(values) + 1), values, color=color, lw=1.4, label=f"{run.label(varying)} ({_fmt(run.value('best'))})")
    monitor = with_curves[0].monitor
    ax.set(xlabel="epoch", ylabel=monitor + (" (%)" if monitor.endswith("acc") else ""), title=f"Validation {monitor.split('/')[-1]} per epoch ({len(with_curves)} runs)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(fontsize=6 if len(with_curves) > 8 else 8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title=f"run (best {monitor})")
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_weights(runs: list[Run], varying: list[str], out: Path) -> Path | None:
    """One panel per run: each term's effective weight over training steps. When `weighting` was
    swept, its values are the columns (fixed | learnable | ...) and the other settings the rows."""
    runs = [r for r in runs if any(t.startswith("weight/") for t in r.curves)]
    if not runs:
        return None
    plt = _pyplot()
    column_key = "weighting" if "weighting" in varying else None
    columns = sorted({r.overrides.get(column_key, "") for r in runs}) if column_key else [""]
    row_labels = sorted({r.label(varying, drop=("weighting",)) for r in runs})
    # one y-scale per row, so a flat fixed weight and a moving learnable one are read on the same axis
    fig, axes = plt.subplots(len(row_labels), len(columns), figsize=(3.2 * len(columns) + 0.5, 1.9 * len(row_labels) + 0.6), squeeze=False, sharex=True, sharey="row")
    terms = sorted({t for r in runs for t in r.curves if t.startswith("weight/")})
    colors = dict(zip(terms, plt.cm.tab10.colors))
    styles = dict(zip(terms, ["-", "--", ":", "-."] * len(terms)))  # equal weights stay visible
    for run in runs:
        i = row_labels.index(run.label(varying, drop=("weighting",)))
        j = columns.index(run.overrides.get(column_key, "")) if column_key else 0
        ax = axes[i][j]
        for term in terms:
            if term in run.curves:
                steps, values = zip(*run.curves[term])
                ax.plot(steps, values, color=colors[term], ls=styles[term], lw=1.4, label=term.removeprefix("weight/"))
        ax.set_title(f"{run.overrides.get(column_key, '')}  {row_labels[i]}".strip(), fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("weight")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(terms), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Effective loss weights during training", y=1.03)
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_heatmap(runs: list[Run], out: Path) -> Path | None:
    """Best metric over loss.temperature x loss.alpha (mean over seeds); one panel per weighting."""
    done = [r for r in runs if r.status == "completed" and {"loss.temperature", "loss.alpha"} <= set(r.overrides)]
    temps = sorted({float(r.overrides["loss.temperature"]) for r in done})
    alphas = sorted({float(r.overrides["loss.alpha"]) for r in done})
    if len(temps) < 2 or len(alphas) < 2:
        return None
    plt = _pyplot()
    import numpy as np

    panels = sorted({r.overrides.get("weighting", "") for r in done})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.4), squeeze=False, sharey=True, layout="constrained")
    cells = defaultdict(list)
    for r in done:
        cells[(r.overrides.get("weighting", ""), float(r.overrides["loss.alpha"]), float(r.overrides["loss.temperature"]))].append(r.value("best"))
    values = {k: statistics.fmean(v) for k, v in cells.items()}
    low, high = min(values.values()), max(values.values())
    for ax, panel in zip(axes[0], panels):
        grid = np.full((len(alphas), len(temps)), np.nan)
        for (p, a, t), v in values.items():
            if p == panel:
                grid[alphas.index(a), temps.index(t)] = v
        image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, origin="lower", aspect="auto")
        for (a_i, t_i), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(t_i, a_i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if v < (low + high) / 2 else "black")
        ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set(xlabel="temperature T", title=f"weighting={panel}" if panel else "")
        ax.grid(False)
    axes[0][0].set_ylabel("alpha (distillation weight)")
    monitor = done[0].monitor
    fig.colorbar(image, ax=axes[0].tolist(), label=f"best {monitor}")
    fig.suptitle(f"Best {monitor} over temperature x alpha")
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def write_report(root: Path) -> list[Path]:
    runs = [load_run(p) for p in find_runs(root)]
    if not runs:
        raise SystemExit(f"distillab.report: no runs under {root}: give a sweep directory (outputs/multirun/DATE/TIME) or a run directory.")
    out_dir = root / "report"
    out_dir.mkdir(exist_ok=True)
    varying = varying_keys(runs)
    rows = per_run_rows(runs, varying)
    written = []

    csv_path = out_dir / "runs.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(csv_path)

    monitor = next((r.monitor for r in runs if r.metrics.get("monitor")), "val/acc")
    columns = ["run", "status", "best", "final", "best_epoch", "teacher", "final_weights", "train_time_s"]
    parts = [f"# Sweep report: {root}", "", f"{len(runs)} runs; metric: {monitor} (best = at the best epoch, final = last epoch); teacher = teacher_val_acc.", ""]
    if SEED_KEY in varying:
        groups = seed_groups(runs, varying)
        for g in groups:
            g["best"] = f"{g['best_mean']:.2f} ± {g['best_std']:.2f}"
            g["final"] = f"{g['final_mean']:.2f} ± {g['final_std']:.2f}"
        parts += ["## Mean ± std over seeds", "", markdown_table(groups, ["config", "seeds", "best", "final"]), ""]
    parts += ["## Runs", "", markdown_table(rows, columns), ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        parts += ["## Failed runs", ""] + [f"- `{r['run']}`: {r['error']} (log: {r['dir']}/distillab.log)" for r in failed] + [""]
    plots = [plot_curves(runs, varying, out_dir / "val_curves.png"), plot_weights(runs, varying, out_dir / "weights.png"), plot_heatmap(runs, out_dir / "heatmap.png")]
    for plot in filter(None, plots):
        parts += [f"![{plot.stem}]({plot.name})", ""]
        written.append(plot)
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(parts))
    written.insert(0, md_path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillab.report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep directory (outputs/multirun/DATE/TIME) or a single run directory")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"distillab.report: {args.directory} is not a directory: give a sweep or run directory.")
    for path in write_report(args.directory):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
