"""The Hydra entry point: validate the config, build the experiment, fit it, write metrics.json."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from distillab import distributed
from distillab.build import build_experiment, needs_teacher
from distillab.checkpoint import load_checkpoint, rng_state, seed_everything, set_rng_state
from distillab.config import check_choices, config_dir, group_choices, instantiate, register_resolvers, swept_keys
from distillab.errors import ConfigError, Interrupted, RunStopped
from distillab.init_stage import run_init_stages
from distillab.logging import RunLogger, write_json
from distillab.tasks import Task
from distillab.teacher import build_teachers, load_teacher_weights
from distillab.teacher_outputs import build_teacher_cache, wants_cache
from distillab.trainer import FitResult, Trainer, evaluate
from distillab.validate import validate

log = logging.getLogger("distillab")

# Recorded for every run in TensorBoard's HParams dashboard, so every run of a sweep has the same columns.
HPARAM_KEYS = ("loss.temperature", "loss.alpha", "optim.lr", "trainer.max_epochs", "trainer.seed", "data.batch_size")
HPARAM_GROUPS = ("data", "model/student", "model/teacher", "loss", "weighting", "optim", "optim/scheduler")


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The same keys in every run of a sweep: the usual ones plus whatever the sweep varies."""
    choices = group_choices()
    values = {group: choices.get(group) for group in HPARAM_GROUPS}
    values.update({key: OmegaConf.select(cfg, key, default=None) for key in HPARAM_KEYS})
    for key in swept_keys():
        values[key] = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
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
    """One experiment from a composed config. Returns what it writes to `<run dir>/metrics.json`.

    Whatever ends the run, metrics.json says so: `completed`, `failed` (with the error) or
    `interrupted`, so a sweep report can tell finished, failed and still-running jobs apart.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cfg, run_dir)
    except BaseException as error:
        status = getattr(error, "status", "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        # Bad input never overwrites the metrics.json of an earlier run that used this directory.
        if distributed.is_main() and not (isinstance(error, ConfigError) and (run_dir / "metrics.json").exists()):
            write_json(run_dir / "metrics.json", {"status": status, "error": f"{type(error).__name__}: {error}"})
        raise


def resume_state(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from with `trainer.resume=true`; refuses to train over an earlier run."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        if resume:
            log.warning("trainer.resume=true but %s does not exist: starting from the beginning", last)
        return None
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints/last.pt): continue it with trainer.resume=true, "
            "or give this run its own directory (leave hydra.run.dir at its default)."
        )
    state = load_checkpoint(last)
    log.info("resuming %s from step %d (epoch %d done)", run_dir, state.get("step", 0), state.get("epoch", 0))
    return state


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    validate(cfg)
    seed_everything(cfg.trainer.seed)
    trainer: Trainer = instantiate(cfg.trainer)
    device = trainer.device
    resume_from = resume_state(run_dir, trainer.resume)
    # Build everything with untrained teacher networks first: every shape and path check runs before
    # a teacher is trained. Training one reseeds, so the RNG state is restored afterwards: the student's
    # run never depends on whether its teacher came from the cache.
    teachers = build_teachers(cfg, device) if needs_teacher(cfg) else []
    experiment = build_experiment(cfg, device, teachers)
    ddp = trainer.strategy == "ddp"
    if teachers:
        cache = wants_cache(cfg.teacher.cache_outputs, experiment.data, teachers)  # refuses an invalid `true` before any training
        state = rng_state()
        load_teacher_weights(cfg, teachers)  # under DDP, rank 0 trains a missing teacher while the others wait
        set_rng_state(state)
        if cache:
            experiment.teacher_cache = build_teacher_cache(
                cfg.teacher.cache_budget_mb, experiment.data, teachers, experiment.teacher_taps, required=cfg.teacher.cache_outputs is True
            )
    task = experiment.task
    teacher_val = [{f"val/{k}": v for k, v in evaluate(t, experiment.data.val, task, device, ddp).items()} for t in teachers]
    writes = distributed.is_main()  # under DDP, rank 0 alone writes TensorBoard, metrics.json and checkpoints
    # Resuming: TensorBoard drops what was logged after the checkpoint. Asked to resume with no checkpoint (stopped
    # before one was written, e.g. in an init stage): the run starts over, and drops everything logged before.
    purge_step = resume_from["step"] + 1 if resume_from is not None else 0 if trainer.resume else None
    logger = RunLogger(run_dir, purge_step=purge_step, enabled=writes)
    try:
        for i, val in enumerate(teacher_val if resume_from is None else []):
            logger.scalars({f"teacher{i or ''}/{k}": v for k, v in val.items()}, 0)  # teacher/val/acc
        if resume_from is None:
            run_init_stages(experiment, trainer, logger)  # FSP, AB, FT: parts trained before the main training
        result = trainer.fit(experiment, logger, run_dir, resume_from)
        metrics = run_metrics(result, task)
        if teacher_val:
            metrics["teacher_val_acc"] = teacher_val[0].get("val/acc")  # the first teacher; all of them below
            metrics["teachers_val"] = teacher_val
        logger.hparams(hparams_of(cfg), {f"hparam/{k}": v for k, v in metrics.items() if k.startswith(("best_", "final_val", "teacher_val_acc"))}, result.steps)
    finally:
        logger.close()
    if writes:
        write_json(run_dir / "metrics.json", metrics)
    log.info("%s: best %s=%.4g; wrote %s", run_dir, task.monitor, result.best[task.monitor], run_dir / "metrics.json")
    return metrics


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        distributed.check_launch(cfg.trainer.strategy)
        metrics = run(cfg)
    except (ConfigError, RunStopped) as error:
        log.debug("the run stopped", exc_info=True)  # the full traceback goes to the run's log file only
        message = f"distillab: error: {error}" if isinstance(error, ConfigError) else f"distillab: {error}"
        if isinstance(error, Interrupted):
            message += f"; to continue: {resume_command(cfg)}"
        if multirun:  # let Hydra record this job as failed and go on with the others
            log.error(message)
            raise
        print(message, file=sys.stderr)  # metrics.json records it too
        sys.exit(2 if isinstance(error, ConfigError) else error.exit_code)
    except Exception:
        log.exception("the run failed")  # Hydra 1.3 puts no traceback in the job's own log file
        raise
    return metrics[flat_key("best", metrics["monitor"])]


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run in its own directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
    launcher = f"torchrun --nproc_per_node={distributed.world_size()} -m distillab" if distributed.world_size() > 1 else "python -m distillab"
    return " ".join([launcher, *overrides, f"hydra.run.dir={cfg.paths.output_dir}", "trainer.resume=true"])


def main() -> None:
    """Console script `distillab` and `python -m distillab`."""
    try:
        check_choices(sys.argv[1:])
        distributed.init_from_env()  # under torchrun: join the process group, agree on the run directory
        sys.argv[1:] = distributed.process_argv(sys.argv[1:])
    except ConfigError as error:
        print(f"distillab: error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        _hydra_main()
    finally:
        distributed.shutdown()
