"""Plots of a sweep: validation curves, weight trajectories, the temperature x alpha heatmap."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from distillab.report.runs import Run


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 150,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 9,
        }
    )
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
        ax.plot(
            range(1, len(values) + 1),
            values,
            color=color,
            lw=1.4,
            label=f"{run.label(varying)} ({_fmt(run.value('best'))})",
        )
    monitor = with_curves[0].monitor
    ax.set(
        xlabel="epoch",
        ylabel=monitor + (" (%)" if monitor.endswith("acc") else ""),
        title=f"Validation {monitor.split('/')[-1]} per epoch ({len(with_curves)} runs)",
    )
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(
        fontsize=6 if len(with_curves) > 8 else 8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        title=f"run (best {monitor})",
    )
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
    fig, axes = plt.subplots(
        len(row_labels),
        len(columns),
        figsize=(3.2 * len(columns) + 0.5, 1.9 * len(row_labels) + 0.6),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    terms = sorted({t for r in runs for t in r.curves if t.startswith("weight/")})
    colors = dict(zip(terms, plt.cm.tab10.colors))
    styles = dict(zip(terms, ["-", "--", ":", "-."] * len(terms)))  # equal weights stay visible
    for run in runs:
        i = row_labels.index(run.label(varying, drop=("weighting",)))
        j = columns.index(run.overrides.get(column_key, "")) if column_key is not None else 0
        ax = axes[i][j]
        for term in terms:
            if term in run.curves:
                steps, values = zip(*run.curves[term])
                ax.plot(steps, values, color=colors[term], ls=styles[term], lw=1.4, label=term.removeprefix("weight/"))
        ax.set_title(f"{run.overrides.get(column_key, '') if column_key else ''}  {row_labels[i]}".strip(), fontsize=7)
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
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.4), squeeze=False, sharey=True, layout="constrained"
    )
    cells = defaultdict(list)
    for r in done:
        cells[
            (r.overrides.get("weighting", ""), float(r.overrides["loss.alpha"]), float(r.overrides["loss.temperature"]))
        ].append(r.value("best"))
    values = {k: statistics.fmean(x for x in v if x is not None) for k, v in cells.items()}
    low, high = min(values.values()), max(values.values())
    for ax, panel in zip(axes[0], panels):
        grid = np.full((len(alphas), len(temps)), np.nan)
        for (p, a, t), v in values.items():
            if p == panel:
                grid[alphas.index(a), temps.index(t)] = v
        image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, origin="lower", aspect="auto")
        for (a_i, t_i), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(
                    t_i,
                    a_i,
                    f"{v:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < (low + high) / 2 else "black",
                )
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
