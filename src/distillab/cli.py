"""The Hydra entry point: validate the config, build the experiment, fit it, write metrics.json."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from distillab.build import build_experiment
from distillab.checkpoint import seed_everything
from distillab.config import config_dir, group_choices, instantiate, register_resolvers
from distillab.errors import ConfigError
from distillab.logging import RunLogger, write_json
from distillab.tasks import Task
from distillab.trainer import FitResult, Trainer, resolve_device
from distillab.validate import validate

log = logging.getLogger("distillab")

# Recorded for every run in TensorBoard's HParams dashboard, so every run of a sweep has the same columns.
HPARAM_KEYS = ("loss.temperature", "loss.alpha", "optim.lr", "trainer.max_epochs", "trainer.seed", "data.batch_size")
HPARAM_GROUPS = ("data", "model/student", "model/teacher", "loss", "weighting", "optim", "optim/scheduler")


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    choices = group_choices()
    values = {group: choices.get(group) for group in HPARAM_GROUPS}
    values.update({key: OmegaConf.select(cfg, key, default=None) for key in HPARAM_KEYS})
    return values


def flat_key(prefix: str, metric: str) -> str:
    """("best", "val/acc") -> "best_val_acc" """
    return f"{prefix}_{metric.replace('/', '_')}"


def flat(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {flat_key(prefix, k): v for k, v in metrics.items()}


def run_metrics(result: FitResult, task: Task) -> dict[str, Any]:
    """metrics.json: accuracies in percent; `best_*` are the values at the best epoch by `monitor`."""
    return {
        "status": "completed",
        "monitor": task.monitor,
        "best_val_acc": None,  # contract keys, null for tasks without accuracy
        "final_val_acc": None,
        "teacher_val_acc": None,
        **flat("best", result.best),
        **flat("final", result.final),
        "best_epoch": result.best_epoch,
        "final_weights": result.final_weights,
        "epochs": result.epochs,
        "steps": result.steps,
        "train_time_s": round(result.train_time_s, 3),
        "samples_per_s": round(result.samples_per_s, 1),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """One experiment from a composed config. Returns what it writes to `<run dir>/metrics.json`."""
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.trainer.seed)
    trainer: Trainer = instantiate(cfg.trainer)
    experiment = build_experiment(cfg, resolve_device(cfg.trainer.device))
    task = experiment.task
    logger = RunLogger(run_dir)
    try:
        result = trainer.fit(experiment, logger, run_dir)
        metrics = run_metrics(result, task)
        logger.hparams(hparams_of(cfg), {f"hparam/{k}": v for k, v in metrics.items() if k.startswith(("best_", "final_val"))}, result.steps)
    finally:
        logger.close()
    write_json(run_dir / "metrics.json", metrics)
    log.info("%s: best %s=%.4g; wrote %s", run_dir, task.monitor, result.best[task.monitor], run_dir / "metrics.json")
    return metrics


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except ConfigError as error:
        log.debug("configuration error", exc_info=True)  # the full traceback goes to the run's log file only
        print(f"distillab: error: {error}", file=sys.stderr)
        sys.exit(2)
    return metrics[flat_key("best", metrics["monitor"])]


def main() -> None:
    """Console script `distillab` and `python -m distillab`."""
    _hydra_main()
