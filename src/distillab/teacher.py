"""Teachers: loaded from a checkpoint, or trained once with the same trainer and cached; always frozen.

A cached teacher lives in `${paths.cache_dir}/teachers/<Model>-<key>/`, where the key hashes everything
that determines its weights (model, data, task, loss, optimizer, epochs, seed). Concurrent jobs of a sweep
take a file lock, so the first trains it and the others wait and reuse it; `teacher.pt` is written last
and atomically, so its presence means the teacher is complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from distillab import distributed
from distillab.checkpoint import load_checkpoint, save_atomic
from distillab.config import instantiate
from distillab.errors import ConfigError

log = logging.getLogger(__name__)

# Keys of a teacher's training config that decide its weights (not where or how verbosely it runs).
_DETERMINING = ("model", "data", "task", "loss", "optim", "trainer.max_epochs", "trainer.seed", "trainer.precision")


def teacher_models(cfg: DictConfig) -> list[DictConfig]:
    """Model configs of the run's teachers: the `teachers` list, else the single `model.teacher`."""
    listed = cfg.get("teachers")
    if listed:
        return list(listed)
    single = OmegaConf.select(cfg, "model.teacher", default=None)
    return [] if single is None else [single]


def freeze(model: nn.Module) -> nn.Module:
    """eval() mode (dropout off, BatchNorm statistics fixed) and no parameter requires a gradient."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict, a distillab checkpoint (`student`) or a cached teacher (`model`) into `model`."""
    state = load_checkpoint(path)
    for key in ("model", "student", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing keys {missing[:5]}" if missing else "",
                f"unexpected keys {unexpected[:5]}" if unexpected else "",
                f"shapes differ: {', '.join(wrong[:5])}" if wrong else "",
            )
            if part
        )
        raise ConfigError(f"Checkpoint {path} does not fit the teacher {type(model).__name__}: {details}.")
    model.load_state_dict(state)


def training_config(cfg: DictConfig, model: DictConfig, output_dir: Path) -> DictConfig:
    """The run's config turned into the teacher's own: `model` as the network, `teacher.loss`,
    `teacher.optim`, `teacher.max_epochs`, `teacher.seed`; same data and task. Fully resolved."""
    spec = cfg.teacher
    derived = copy.deepcopy(cfg)
    with open_dict(derived):
        derived.model = {"student": model}
        derived.teachers = None
        derived.loss = spec.loss
        derived.weighting = {"_target_": "distillab.weighting.Fixed", "weights": "${loss.weights}"}
        derived.optim = spec.optim
        derived.trainer.max_epochs = spec.max_epochs
        derived.trainer.seed = spec.seed
        derived.trainer.resume = False  # a teacher is trained whole (an interrupted attempt is discarded)
        derived.trainer.strategy = "single"  # under torchrun, rank 0 trains it alone (the others wait for it)
        derived.paths.output_dir = str(output_dir)
        del derived["teacher"]
    return OmegaConf.create(OmegaConf.to_container(derived, resolve=True))


# Keys inside those that say where the work runs, not what it computes.
_NOT_DETERMINING = ("data.device", "data.num_workers")


def cache_key(training: DictConfig) -> str:
    determining = OmegaConf.create({key: OmegaConf.select(training, key) for key in _DETERMINING})
    for key in _NOT_DETERMINING:
        group, name = key.split(".")
        if isinstance(determining.get(group), DictConfig) and name in determining[group]:
            del determining[group][name]
    text = json.dumps(OmegaConf.to_container(determining), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_teacher(cfg: DictConfig, model: DictConfig) -> Path:
    """Path of the trained teacher's `teacher.pt`; trains it first (once, under a lock) if needed."""
    from distillab.cli import run  # the same entry that runs any experiment; imported here to avoid a cycle

    root = Path(cfg.paths.cache_dir) / "teachers"
    probe = training_config(cfg, model, root)
    name = f"{probe.model.student._target_.rsplit('.', 1)[-1]}-{cache_key(probe)}"
    directory, final = root / name, root / name / "teacher.pt"
    root.mkdir(parents=True, exist_ok=True)
    if not distributed.is_main():  # under DDP rank 0 alone trains it (no collective: training may take hours)
        if not final.is_file():
            log.info("teacher: waiting for rank 0 to train %s", directory)
        while not final.is_file():
            time.sleep(2.0)
        return final
    with FileLock(str(root / f"{name}.lock")):
        if final.is_file():
            log.info("teacher: reusing %s", final)
            return final
        if not cfg.teacher.train_if_missing:
            raise ConfigError(
                f"No teacher checkpoint is set and teacher.train_if_missing is false: set teacher.checkpoint to a trained "
                f"{probe.model.student._target_} or allow training it (it would be cached at {directory})."
            )
        shutil.rmtree(directory, ignore_errors=True)  # leftovers of an interrupted attempt
        log.info("teacher: training %s for %d epochs, caching it in %s", probe.model.student._target_, probe.trainer.max_epochs, directory)
        metrics = run(training_config(cfg, model, directory))
        last = load_checkpoint(directory / "checkpoints" / "last.pt")
        save_atomic({"model": last["student"], "metrics": metrics}, final)
    return final


def build_teachers(cfg: DictConfig, device: torch.device) -> list[nn.Module]:
    """Every configured teacher network, frozen, on `device`, still without trained weights.

    Building first lets every shape and module-path check run before any teacher is trained."""
    return [freeze(instantiate(model_cfg).to(device)) for model_cfg in teacher_models(cfg)]


def load_teacher_weights(cfg: DictConfig, teachers: list[nn.Module]) -> None:
    """Fill `teachers` from `teacher.checkpoint`, or from the cache (training them first if needed)."""
    models = teacher_models(cfg)
    checkpoints: Any = cfg.teacher.checkpoint
    if checkpoints is None:
        checkpoints = [None] * len(models)
    elif isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if len(checkpoints) != len(models):
        raise ConfigError(f"teacher.checkpoint lists {len(checkpoints)} files for {len(models)} teachers: give one per teacher.")
    for teacher, model_cfg, checkpoint in zip(teachers, models, checkpoints):
        load_weights(teacher, checkpoint if checkpoint is not None else cached_teacher(cfg, model_cfg))
        freeze(teacher)
