"""Plots of a sweep: validation curves, weight trajectories, the temperature x alpha heatmap."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from distillab.report.runs import SEED_KEY, Run, fmt
from distillab.run_logger import WEIGHT


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


# Okabe & Ito's colour-blind-safe palette (Color Universal Design), then line styles for a second key.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LINE_STYLES = ["-", "--", ":", "-."]


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def style_key(runs: list[Run], varying: list[str]) -> str | None:
    """The swept key drawn as line style: `weighting` if swept, else the first categorical key with 2-4 values."""
    keys = [k for k in varying if k != SEED_KEY]
    candidates = (["weighting"] if "weighting" in keys else []) + keys
    for key in candidates:
        values = {r.overrides.get(key, "") for r in runs}
        if 2 <= len(values) <= len(LINE_STYLES) and not all(_numeric(v) for v in values):
            return key
    return None


def curve_groups(runs: list[Run], varying: list[str]) -> dict[tuple[str, ...], tuple[list[float], list[float], int]]:
    """Runs that differ only in `trainer.seed`, by their other swept values: the mean and sample std of the
    monitored validation curve per epoch (over the epochs all of them reached), and how many runs."""
    keys = [k for k in varying if k != SEED_KEY]
    grouped: dict[tuple[str, ...], list[list[float]]] = defaultdict(list)
    for run in runs:
        if run.monitor in run.curves:
            grouped[tuple(run.overrides.get(k, "") for k in keys)].append([v for _, v in run.curves[run.monitor]])
    result = {}
    for key, curves in grouped.items():
        epochs = min(len(c) for c in curves)
        columns = [[c[e] for c in curves] for e in range(epochs)]
        means = [statistics.fmean(col) for col in columns]
        stds = [statistics.stdev(col) if len(col) > 1 else 0.0 for col in columns]
        result[key] = (means, stds, len(curves))
    return result


def plot_curves(runs: list[Run], varying: list[str], out: Path) -> Path | None:
    """Validation curves, one line per setting (mean over seeds, with a +-1 std band where several ran);
    colour per setting, line style per value of one categorical swept key (`style_key`), legend outside."""
    groups = curve_groups(runs, varying)
    if not groups:
        return None
    plt = _pyplot()
    keys = [k for k in varying if k != SEED_KEY]
    styled = style_key(runs, varying)
    style_values = sorted({r.overrides.get(styled, "") for r in runs}) if styled else []
    colour_keys = [k for k in keys if k != styled] or keys  # with one key, colour and style both show it
    colour_of = {g: ",".join(f"{k}={v}" for k, v in zip(keys, g) if k in colour_keys) for g in groups}
    colour_labels = sorted(set(colour_of.values()))
    drawn = next(r for r in runs if r.monitor in r.curves)
    monitor, peak = drawn.monitor, (max if drawn.maximises else min)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    best_first = sorted(groups, key=lambda g: peak(groups[g][0]), reverse=drawn.maximises)
    for group in best_first:
        means, stds, n = groups[group]
        values = dict(zip(keys, group))
        colour = PALETTE[colour_labels.index(colour_of[group]) % len(PALETTE)]
        style = LINE_STYLES[style_values.index(values[styled])] if styled else "-"
        epochs = range(1, len(means) + 1)
        label = ",".join(f"{k}={v}" for k, v in values.items()) or "run"
        ax.plot(
            epochs,
            means,
            color=colour,
            ls=style,
            lw=1.5,
            label=f"{label} ({fmt(peak(means))}{f', n={n}' if n > 1 else ''})",
        )
        if n > 1:
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=colour,
                alpha=0.15,
                lw=0,
            )
    ax.set(
        xlabel="epoch",
        ylabel=monitor + (" (%)" if monitor.endswith("acc") else ""),
        title=f"Validation {monitor.split('/')[-1]} per epoch"
        + (" (mean +- std over seeds)" if any(n > 1 for _, _, n in groups.values()) else ""),
    )
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(
        fontsize=6 if len(groups) > 8 else 8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        title=f"setting (peak of the {'mean ' if any(n > 1 for _, _, n in groups.values()) else ''}{monitor})",
    )
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def weight_panels(runs: list[Run], varying: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """The panels of `weights.png`: each run's panel (its setting without `weighting`, its weighting), the panels
    in reading order, and the grid's column count.

    With `weighting` swept and every other setting crossed with it, the grid is settings (rows) x weightings
    (columns). Otherwise (a one-key sweep, a partial cross) the panels wrap into the fewest rows of at most
    three columns (or one per weighting), so the grid has no empty panel but the last row's remainder."""
    column_key = "weighting" if "weighting" in varying else None
    columns_of = [r.overrides.get(column_key, "") if column_key else "" for r in runs]
    cells = [(r.label(varying, drop=("weighting",), default=""), c) for r, c in zip(runs, columns_of)]
    if len(set(cells)) < len(cells):  # runs the swept keys do not tell apart (not a sweep): a panel each
        cells = [(r.path.name, c) for r, c in zip(runs, columns_of)]
    panels = sorted(set(cells))
    rows, columns = sorted({r for r, _ in panels}), sorted({c for _, c in panels})
    if len(rows) * len(columns) == len(panels):
        return cells, [(r, c) for r in rows for c in columns], len(columns)
    return cells, panels, len(columns) if column_key and 1 < len(columns) <= 4 else min(3, len(panels))


def plot_weights(runs: list[Run], varying: list[str], out: Path) -> Path | None:
    """One panel per run: each term's effective weight over training steps. When `weighting` was
    swept, its values are the columns (fixed | learnable | ...) and the other settings the rows."""
    runs = [r for r in runs if any(t.startswith(WEIGHT) for t in r.curves)]
    if not runs:
        return None
    plt = _pyplot()
    cells, panels, n_columns = weight_panels(runs, varying)
    n_rows = -(-len(panels) // n_columns)
    # one y-scale per row, so a flat fixed weight and a moving learnable one are read on the same axis
    fig, grid = plt.subplots(
        n_rows,
        n_columns,
        figsize=(3.2 * n_columns + 0.5, 1.9 * n_rows + 0.6),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    places = [ax for row in grid for ax in row]
    for ax in places[len(panels) :]:  # the last row's remainder in a wrapped layout
        ax.remove()
    axes = dict(zip(panels, places))
    terms = sorted({t for r in runs for t in r.curves if t.startswith(WEIGHT)})
    colors = dict(zip(terms, PALETTE * len(terms)))
    styles = dict(zip(terms, ["-", "--", ":", "-."] * len(terms)))  # equal weights stay visible
    for run, cell in zip(runs, cells):
        ax = axes[cell]
        for term in terms:
            if term in run.curves:
                steps, values = zip(*run.curves[term])
                ax.plot(
                    steps,
                    values,
                    color=colors[term],
                    ls=styles[term],
                    lw=1.4,
                    marker="o" if len(steps) < 3 else None,  # a short run's one or two points stay visible
                    label=term.removeprefix(WEIGHT),
                )
        ax.set_title(f"{cell[1]}  {cell[0]}".strip(), fontsize=7)
    for k, ax in enumerate(places[: len(panels)]):
        if k + n_columns >= len(panels):  # nothing below it: the step axis is read here
            ax.set_xlabel("step")
            ax.xaxis.set_tick_params(labelbottom=True)
        if k % n_columns == 0:
            ax.set_ylabel("weight")
    legend: dict[str, Any] = {}  # every term once, whichever panel drew it
    for ax in axes.values():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()), list(legend), loc="center left", frameon=False, bbox_to_anchor=(1.0, 0.5), title="term"
    )
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
