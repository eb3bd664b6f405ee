"""What the runs of a sweep wrote, read back: overrides (`.hydra/overrides.yaml`), `metrics.json` and the
TensorBoard scalars the plots draw."""

from __future__ import annotations

import json
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

    @property
    def maximises(self) -> bool:
        """Whether a higher monitored value is better (the task's `mode`, which metrics.json records)."""
        return self.metrics.get("mode", "max") == "max"

    def value(self, which: str) -> float | None:
        """`best` or `final` value of the monitored metric."""
        return self.metrics.get(f"{which}_{self.monitor.replace('/', '_')}")

    def label(self, varying: list[str], drop: tuple[str, ...] = ()) -> str:
        shown = [f"{k}={self.overrides[k]}" for k in varying if k in self.overrides and k not in drop]
        return ",".join(shown) or self.path.name


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
    acc.Reload()
    tags = [t for t in acc.Tags().get("scalars", []) if t.startswith(("val/", "weight/", "loss/total"))]
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def load_run(path: Path, curves: bool = True) -> Run:
    overrides_file = path / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    overrides = dict(item.split("=", 1) for item in items or [] if "=" in item and not item.startswith("hydra"))
    overrides = {k.lstrip("+~"): v for k, v in overrides.items() if not k.startswith(("paths.", "hydra"))}
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(path, overrides, metrics, read_curves(path) if curves else {})


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (all keys for a single run)."""
    keys = sorted({k for r in runs for k in r.overrides})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
