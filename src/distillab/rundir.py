"""The rules of a run directory, without torch: whether it holds a run, its `.hydra/` record (written when
a run is accepted, never by a refused one), and the temporary files an interrupted atomic write left."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distillab.errors import ConfigError

log = logging.getLogger("distillab")


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.pt").is_file()


def refuse_earlier_run(run_dir: Path, resume: object) -> None:
    """A run never trains into a directory that holds one, unless told to continue it."""
    if holds_run(run_dir) and resume is not True:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints/last.pt): continue it with trainer.resume=true, "
            "or give this run its own directory (leave hydra.run.dir at its default)."
        )


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """`.<name>.<pid>.tmp` files beside checkpoints and metrics.json are what an atomic write killed
    mid-way leaves; they are never checkpoints. Removed by the next run or resume in the directory."""
    leftovers = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.glob(".*.tmp")]
    for path in leftovers:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    return leftovers


def write_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the run in `<run dir>/.hydra/`: the composed config, Hydra's own config and the
    command-line overrides (what `python -m distillab.report` and a resume read). The CLI sets
    `hydra.output_subdir=null` so that Hydra does not write it before the run directory was checked."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")
