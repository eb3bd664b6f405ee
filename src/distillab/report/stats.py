"""Does it help? Runs grouped by every swept key but the seed: mean and sample std over seeds, and the paired
difference to a baseline group over the seeds both have, with a 95 % Student-t confidence interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillab.report.runs import SEED_KEY, Run

WHICH = ("best", "final")


@dataclass
class Group:
    """Completed runs that differ only in `trainer.seed`."""

    keys: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    def by_seed(self, which: str) -> dict[str, float]:
        """Each seed's value. Runs that repeat a seed (one sweep run twice, reported from their parent folder)
        are averaged, so that each seed counts once in the mean, the std and the pairing."""
        values: dict[str, list[float]] = {}
        for run in self.runs:
            if (value := run.value(which)) is not None:
                values.setdefault(run.seed, []).append(value)
        return {seed: statistics.fmean(v) for seed, v in values.items()}

    @property
    def seeds(self) -> int:
        return len({run.seed for run in self.runs})


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def ci95_half_width(values: Sequence[float]) -> float | None:
    """Half-width of the 95 % Student-t confidence interval of the mean (None for fewer than 2 values)."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def group_runs(runs: Sequence[Run], swept: Sequence[str]) -> list[Group]:
    """Completed runs grouped by their values of the swept keys other than the seed, in first-seen order."""
    keys = [k for k in swept if k != SEED_KEY]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        if run.status != "completed":
            continue
        values = tuple(run.overrides.get(k, "") for k in keys)
        groups.setdefault(values, Group(dict(zip(keys, values)))).runs.append(run)
    return list(groups.values())


def parse_baseline(items: Sequence[str], swept: Sequence[str]) -> dict[str, str]:
    """`["loss=ce"]` -> {"loss": "ce"}; each key must be one the sweep varies (the seed excepted)."""
    baseline = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--baseline {item}: give KEY=VALUE, e.g. --baseline loss=ce.")
        valid = ", ".join(k for k in swept if k != SEED_KEY) or "none"
        if key == SEED_KEY:
            raise ValueError(
                f"--baseline {item}: runs are paired by {SEED_KEY} (each run with the baseline run of its own seed), "
                f"so the baseline is chosen by another key the sweep varies: {valid}."
            )
        if key not in swept:
            raise ValueError(f"--baseline {item}: {key} is not a key this sweep varies (it varies {valid}).")
        baseline[key] = value
    return baseline


def baseline_of(group: Group, groups: Sequence[Group], baseline: Mapping[str, str]) -> Group | None:
    """The group that differs from `group` only in the baseline keys, set to the baseline values."""
    wanted = {**group.keys, **baseline}
    return next((g for g in groups if g.keys == wanted), None)


def paired_delta(group: Group, base: Group, which: str) -> tuple[float | None, float | None, int]:
    """Mean and 95 % CI half-width of `group - base` over the seeds both have, and how many there are."""
    ours, theirs = group.by_seed(which), base.by_seed(which)
    diffs = [ours[s] - theirs[s] for s in ours if s in theirs]
    mean = statistics.fmean(diffs) if diffs else None
    return mean, ci95_half_width(diffs), len(diffs)


def summary_rows(
    runs: Sequence[Run], swept: Sequence[str], baseline: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per group: the swept keys, `n` (its seeds), `runs` (more than `n` where runs repeat a seed: they are
    averaged per seed), `best_<metric>_mean/_std`, `final_<metric>_mean/_std`, and with a baseline
    `delta_<which>_<metric>_mean/_ci95` plus `n_paired` (the baseline's own row: 0)."""
    groups = group_runs(runs, swept)
    metric = next((r.monitor for g in groups for r in g.runs), "val/acc").replace("/", "_")
    if baseline and not any(all(g.keys.get(k) == v for k, v in baseline.items()) for g in groups):
        shown = ",".join(f"{k}={v}" for k, v in baseline.items())
        have = sorted(
            {",".join(f"{k}={g.keys.get(k)}" for k in baseline) for g in groups if all(k in g.keys for k in baseline)}
        )
        valid = f"use one of {', '.join(have)}" if have else f"the runs do not vary {', '.join(baseline)}"
        raise ValueError(f"--baseline {shown}: no completed run has it ({valid}).")
    rows = []
    for group in groups:
        row: dict[str, Any] = {**group.keys, "n": group.seeds, "runs": len(group.runs)}
        for which in WHICH:
            row[f"{which}_{metric}_mean"], row[f"{which}_{metric}_std"] = mean_std(list(group.by_seed(which).values()))
        if baseline:
            base = baseline_of(group, groups, baseline)
            paired = {
                which: paired_delta(group, base, which) if base is not None else (None, None, 0)
                for which in ("final", "best")
            }
            for which, (mean, ci, _) in paired.items():
                row[f"delta_{which}_{metric}_mean"], row[f"delta_{which}_{metric}_ci95"] = mean, ci
            row["n_paired"] = paired["final"][2]
        rows.append(row)
    return rows
