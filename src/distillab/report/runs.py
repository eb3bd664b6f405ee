"""What the runs of a sweep wrote, read back: overrides (`.hydra/overrides.yaml`), `metrics.json` and the
TensorBoard scalars the plots draw."""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distillab.config import NOT_A_SETTING, shown_key
from distillab.errors import os_reason
from distillab.run_logger import OLD_WEIGHT, WEIGHT, flat_key

SEED_KEY = "trainer.seed"
STATUSES = ("completed", "failed", "interrupted", "refused")  # what a run writes into its metrics.json
NUMBERS = ("best_epoch", "teacher_val_acc", "train_time_s")  # read as numbers besides the monitored metric's
_JSON_TYPES = {list: "a list", str: "a string", bool: "true or false", type(None): "null", int: "a number"}


class UnreadableRun(ValueError):
    """A run directory whose files the report cannot use: `file` and what is wrong with it."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason

    @property
    def run_dir(self) -> Path:
        """The run directory the file belongs to (`metrics.json` in it, `overrides.yaml` in its `.hydra/`)."""
        return self.file.parent.parent if self.file.parent.name == ".hydra" else self.file.parent


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    recorded_seed: str = ""  # trainer.seed as `.hydra/config.yaml` records it

    @property
    def seed(self) -> str:
        """trainer.seed as typed, else as recorded (the default): runs that repeat a seed are one sample, not two."""
        return self.overrides.get(SEED_KEY) or self.recorded_seed

    @functools.cached_property
    def status(self) -> str:
        """metrics.json's; without one, `running` while a process holds the run's directory, else `died` (killed
        before it could write its record: kill -9, out of memory, a crash of the interpreter)."""
        from distillab.rundir import is_held

        return self.metrics.get("status") or ("running" if is_held(self.path) else "died")

    @property
    def monitor(self) -> str:
        return self.metrics.get("monitor", "val/acc")

    @property
    def maximises(self) -> bool:
        """Whether a higher monitored value is better (the task's `mode`, which metrics.json records)."""
        return self.metrics.get("mode", "max") == "max"

    def value(self, which: str) -> float | None:
        """`best` or `final` value of the monitored metric; for a run without metrics.json (running, or died), what
        its TensorBoard curve reached so far."""
        if self.metrics:
            return self.metrics.get(flat_key(which, self.monitor))
        points = [value for _, value in self.curves.get(self.monitor, [])]
        if not points:
            return None
        return points[-1] if which == "final" else max(points) if self.maximises else min(points)

    def label(self, varying: list[str], drop: tuple[str, ...] = (), default: str | None = None) -> str:
        """The run's swept settings (`key=value,...`, without `drop`); when none is left, `default` (the
        directory's name if not given)."""
        shown = [f"{k}={self.overrides[k]}" for k in varying if k in self.overrides and k not in drop]
        return ",".join(shown) or (self.path.name if default is None else default)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell or legend value: numbers to `digits` decimals, missing values as -."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def monitored(runs: list[Run]) -> str:
    """The metric a sweep's runs monitor (a failed run's metrics.json may not say)."""
    return next((r.monitor for r in runs if r.metrics.get("monitor")), "val/acc")


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root` (Hydra writes `.hydra/` into each), skipping cached teachers."""
    if (root / ".hydra").is_dir() or (root / "metrics.json").is_file():
        return [root]
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    return sorted(p for p in found if "cache" not in p.relative_to(root).parts)


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    tensorboard_log = logging.getLogger("tensorboard")
    level = tensorboard_log.level
    tensorboard_log.setLevel(logging.ERROR)  # its warning that it purged what a resumed run's first attempt logged
    try:  # after the checkpoint is not news: the run asked for it (RunLogger's purge_step)
        acc.Reload()
    finally:
        tensorboard_log.setLevel(level)
    tags = [t for t in acc.Tags().get("scalars", []) if t.startswith(("val/", WEIGHT, OLD_WEIGHT, "loss/total"))]
    curves = {}
    for tag in tags:  # a run written before the weights moved to `loss_weight/` reads the same
        name = WEIGHT + tag.removeprefix(OLD_WEIGHT) if tag.startswith(OLD_WEIGHT) else tag
        curves[name] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return curves


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def metrics_problem(metrics: dict[str, Any]) -> str | None:
    """What makes a metrics.json object unusable to the report (None when nothing does): a text field that is
    not text, or a number it reads (the monitored metric's best and final, epoch, times, weights) that is not a
    finite number. A missing value or null is fine: a failed or unfinished run has none."""
    for key in ("status", "monitor", "mode"):
        if key in metrics and not isinstance(metrics[key], str):
            return f"{key} is {_shown(metrics[key])}, not a string"
    if "status" in metrics and metrics["status"] not in STATUSES:
        return f"status is {_shown(metrics['status'])}, not one a run writes ({', '.join(STATUSES)})"
    monitor = metrics.get("monitor", "val/acc")
    for key in (flat_key("best", monitor), flat_key("final", monitor), *NUMBERS):
        if metrics.get(key) is not None and not _finite(metrics[key]):
            return f"{key} is {_shown(metrics[key])}, not a finite number"
        if key.endswith("_acc") and metrics.get(key) is not None and not 0 <= metrics[key] <= 100:
            return f"{key} is {_shown(metrics[key])}, not an accuracy in percent (0 to 100)"
    weights = metrics.get("final_weights")
    if weights is not None and not (isinstance(weights, dict) and all(map(_finite, weights.values()))):
        return f"final_weights is {_shown(weights)}, not an object of finite numbers"
    return None


def read_metrics(file: Path) -> dict[str, Any]:
    """A run's metrics.json ({} while it has none); `UnreadableRun` names the file and what is wrong."""
    if not file.is_file():
        return {}
    try:
        data = file.read_bytes()
    except OSError as error:
        raise UnreadableRun(file, f"cannot read it ({os_reason(error)})") from None
    if not data.strip():
        raise UnreadableRun(file, "empty")
    try:
        metrics = json.loads(data)
    except UnicodeDecodeError:
        raise UnreadableRun(file, "not UTF-8 text") from None
    except json.JSONDecodeError:
        raise UnreadableRun(file, "not valid JSON (truncated?)") from None
    if not isinstance(metrics, dict):
        raise UnreadableRun(file, f"holds {_JSON_TYPES.get(type(metrics), 'a number')}, not a JSON object")
    return metrics


def read_overrides(file: Path) -> dict[str, str]:
    """The command-line overrides of a run (`.hydra/overrides.yaml`), by the names users type (`model/student`),
    without Hydra's, path and resume keys (`config.NOT_A_SETTING`)."""
    if not file.is_file():
        return {}
    try:
        items = yaml.safe_load(file.read_bytes()) or []
    except OSError as error:
        raise UnreadableRun(file, f"cannot read it ({os_reason(error)})") from None
    except yaml.YAMLError:  # a reader error (not UTF-8) too
        raise UnreadableRun(file, "not valid YAML") from None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise UnreadableRun(file, "not a YAML list of overrides")
    overrides = dict(item.split("=", 1) for item in items if "=" in item)
    keys = {k: shown_key(k.lstrip("+~")) for k in overrides}  # `model@model.student` as typed: `model/student`
    return {keys[k]: v for k, v in overrides.items() if not keys[k].startswith(NOT_A_SETTING)}


def load_run(path: Path, curves: bool = True) -> Run:
    """What the run in `path` wrote; `UnreadableRun` when its overrides or metrics.json cannot be read (the
    values in it are checked by `load_runs`)."""
    overrides = read_overrides(path / ".hydra" / "overrides.yaml")
    metrics = read_metrics(path / "metrics.json")
    seed = "" if SEED_KEY in overrides else recorded_seed(path / ".hydra" / "config.yaml")  # (typed: not needed)
    return Run(path, overrides, metrics, read_curves(path) if curves else {}, seed)


def recorded_seed(config: Path) -> str:
    """`trainer.seed` as the run's `.hydra/config.yaml` records it (the default, when no override set it), or ""
    when it cannot be read."""
    try:
        recorded = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    trainer = recorded.get("trainer") if isinstance(recorded, dict) else None
    seed = trainer.get("seed") if isinstance(trainer, dict) else None
    return "" if seed is None else str(seed)


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (all keys for a single run)."""
    keys = sorted({k for r in runs for k in r.overrides})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def load_runs(root: Path, curves: bool = True) -> tuple[list[Run], list[UnreadableRun]]:
    """The runs under `root` the report can use, and those it cannot: files it cannot read, or a metrics.json
    whose values it cannot use (`metrics_problem`)."""
    runs, skipped = [], []
    for path in find_runs(root):
        try:
            run = load_run(path, curves)
            problem = metrics_problem(run.metrics)
            if problem is not None:
                raise UnreadableRun(path / "metrics.json", problem)
        except UnreadableRun as unreadable:
            skipped.append(unreadable)
        else:
            runs.append(run)
    return runs, skipped


def unstarted_jobs(sweep_dir: Path, runs: list[Run], skipped: list[UnreadableRun]) -> list[dict[str, str]]:
    """The jobs of a sweep by Hydra's basic sweeper (a cross product of listed values, recorded in its
    `multirun.yaml`) with no directory among `runs` and `skipped`: each as its swept keys and values. None can be
    listed for other sweepers (Optuna draws its trials) or for values that are drawn (`interval()`)."""
    import itertools

    from distillab.config import job_name, recorded_sweep, shown_key, sweep_values

    started = {run.path.name for run in runs} | {s.run_dir.name for s in skipped}
    recorded = recorded_sweep(sweep_dir)
    if recorded is None or not recorded.sweeper.endswith(".BasicSweeper"):
        return []
    swept = sweep_values(str(sweep_dir), recorded.params)
    if not swept or not all(swept.values()):
        return []
    missing = []
    for number, values in enumerate(itertools.product(*swept.values())):
        overrides = [f"{key}={value}" for key, value in zip(swept, values)]
        if job_name(overrides, swept, number) not in started:
            missing.append(
                {shown_key(key.lstrip("+~")): value for key, value in zip(swept, values)}
            )  # as read_overrides
    return missing
