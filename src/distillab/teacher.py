"""Teachers: loaded from a checkpoint, or trained once by a run of their own and cached; always frozen.

A cached teacher lives in `${paths.cache_dir}/teachers/<model>-<key>/`, where the key hashes everything
that determines its weights (model, data, task, loss, optimizer, `teacher.max_epochs`, `teacher.seed`,
`teacher.train_subset`): a student's own epochs or seed never change which teacher it gets. Concurrent
jobs of a sweep take a file lock, so the first trains it and the others wait and reuse it; `teacher.pt`
(its best and its last epoch's weights, with their epochs and validation metrics) is written last and
atomically, so its presence means the teacher is complete. `teacher.select` (best or last) says which
weights are distilled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from distillab import distributed
from distillab.checkpoint import load_checkpoint, save_atomic
from distillab.config import group_choices
from distillab.errors import ConfigError, Interrupted, TeacherInterrupted, keys_read_from
from distillab.instantiate import instantiate, locate

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # teacher.pt holds both the best and the last weights; 3: optim/scheduler=none hashed as it is
# Keys of a teacher's training config that decide its weights (not where or how verbosely it runs).
_DETERMINING = ("model", "data", "task", "loss", "optim", "trainer.max_epochs", "trainer.seed", "trainer.precision")
# Keys inside those that say where the work runs, not what it computes.
_NOT_DETERMINING = (
    "data.device",
    "data.num_workers",
    "data.in_memory",
    "data.augment_on",
    "data.download",
    "data.cache_dir",
)

# The teacher's own run reads these keys of its config from the student's run's `teacher.*` (training_config;
# `keys_read_from` names them so in that run's messages).
FROM_TEACHER = {
    "loss": "teacher.loss",
    "optim": "teacher.optim",
    "trainer.max_epochs": "teacher.max_epochs",
    "trainer.seed": "teacher.seed",
    "data.train_subset": "teacher.train_subset",
}

RunFn = Callable[[DictConfig], dict[str, Any]]  # the runner's `run`, which trains a teacher like any experiment


@dataclass
class TeacherInfo:
    """Which teacher weights a run distils: where they came from, the epoch, the validation metric then."""

    name: str  # the model's config choice (deep_nn), else its class
    source: str  # the cache entry, the checkpoint file, or the _target_ that built it
    kind: str  # "cache", "file" or "built" (teacher.source=built: the weights its constructor gave it)
    select: str | None = None  # best or last (cache entries)
    epoch: int | None = None
    epochs: int | None = None
    val: dict[str, float] | None = None  # the validation metrics recorded when it was trained (cache entries)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_models(cfg: DictConfig) -> list[DictConfig]:
    """Model configs of the run's teachers: the `teachers` list, else the single `model.teacher`."""
    listed = cfg.get("teachers")
    if listed:
        return list(listed)
    single = OmegaConf.select(cfg, "model.teacher", default=None)
    return [] if single is None else [single]


def teacher_key(cfg: DictConfig, index: int) -> str:
    """Where teacher `index`'s model config sits: `teachers.<index>`, or `model.teacher` for a single teacher."""
    return f"teachers.{index}" if cfg.get("teachers") else "model.teacher"


def model_name(model: DictConfig, index: int = 0) -> str:
    """`deep_nn` (the model/teacher choice) for the run's first teacher, the class name for others."""
    choice = group_choices().get("model/teacher") if index == 0 else None
    return choice or str(model.get("_target_", "teacher")).rsplit(".", 1)[-1]


def freeze(model: nn.Module) -> nn.Module:
    """eval() mode (dropout off, BatchNorm statistics fixed) and no parameter requires a gradient."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_weights(
    model: nn.Module, path: str | Path, state: dict[str, Any] | None = None, select: str = "best"
) -> dict[str, Any]:
    """Load a state_dict, a distillab checkpoint (`student`) or a cache entry's teacher.pt (its `select` weights,
    `models`) into `model`; returns the file's contents."""
    contents = load_checkpoint(path) if state is None else state
    weights = contents
    if isinstance(contents.get("models"), dict) and isinstance(contents["models"].get(select), dict):
        weights = {"model": contents["models"][select]}
    for key in ("model", "student", "state_dict"):
        if isinstance(weights.get(key), dict):
            weights = weights[key]
            break
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [
        f"{k} {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
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
        raise ConfigError(
            f"Checkpoint {path} does not fit the teacher {type(model).__name__}: {details}; give teacher.checkpoint a "
            "file of this architecture, or choose the model it was trained as (model/teacher=...)."
        )
    model.load_state_dict(weights)
    return contents


def training_config(cfg: DictConfig, model: DictConfig, output_dir: Path) -> DictConfig:
    """The run's config turned into the teacher's own: `model` as the network, `teacher.loss`,
    `teacher.optim`, `teacher.max_epochs`, `teacher.seed`, `teacher.train_subset`; same data and task.
    Fully resolved."""
    derived = copy.deepcopy(cfg)
    with open_dict(derived):
        derived.model = {"student": model}
        derived.teachers = None
        for key, source in FROM_TEACHER.items():
            if key != "data.train_subset" or "train_subset" in derived.data:
                OmegaConf.update(derived, key, OmegaConf.select(cfg, source, default=None), merge=False)
        derived.weighting = {"_target_": "distillab.weighting.Fixed", "weights": "${loss.weights}"}
        augment = derived.data.get("augment")
        if isinstance(augment, DictConfig) and getattr(locate(str(augment._target_), "data.augment"), "copies", 1) > 1:
            # several views of each sample (MLKD's weak and strong): a teacher trains on one, cropped and flipped
            derived.data.augment = {"_target_": "distillab.data.augment.CropFlip", "padding": augment.padding}
        derived.trainer.resume = False  # a teacher is trained whole (an interrupted attempt is discarded)
        derived.trainer.strategy = "single"  # under torchrun, rank 0 trains it alone (the others wait for it)
        derived.paths.output_dir = str(output_dir)
        del derived["teacher"]
    resolved = OmegaConf.create(OmegaConf.to_container(derived, resolve=True))
    assert isinstance(resolved, DictConfig)
    return resolved


def cache_key(training: DictConfig) -> str:
    """The hash of what decides a teacher's weights (`_DETERMINING`), not of where its files are: a value under
    `paths.*` (`data.train.root: ${paths.data_dir}`) is hashed as the key it came from, so a run resumed with
    `paths.root` absolute, or from another directory, finds the teacher its first start trained."""
    determining = OmegaConf.create({key: OmegaConf.select(training, key) for key in _DETERMINING})
    for key in _NOT_DETERMINING:
        group, name = key.split(".")
        if isinstance(determining.get(group), DictConfig) and name in determining[group]:
            del determining[group][name]
    places = {str(v): f"<paths.{k}>" for k, v in (OmegaConf.select(training, "paths") or {}).items() if v}
    text = json.dumps(
        {"format": CACHE_FORMAT, **_placed(OmegaConf.to_container(determining), places)},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _placed(value: Any, places: dict[str, str]) -> Any:
    """`value` with each string under one of `places` (a resolved `paths.*` value) written from that key instead,
    the longest first (`paths.data_dir` is under `paths.root`)."""
    if isinstance(value, dict):
        return {k: _placed(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [_placed(v, places) for v in value]
    if isinstance(value, str):
        for place in sorted(places, key=len, reverse=True):
            if value == place or value.startswith(place.rstrip("/") + "/"):
                return places[place] + value[len(place) :]
    return value


def cache_entry(cfg: DictConfig, model: DictConfig, index: int = 0) -> Path:
    """The cache directory of this teacher: `<cache_dir>/teachers/<model>-<key>`."""
    root = Path(cfg.paths.cache_dir) / "teachers"
    key = cache_key(training_config(cfg, model, root))
    entry = root / f"{model_name(model, index)}-{key}"
    if not (entry / "teacher.pt").is_file():  # the same teacher under another name: the run's first teacher is
        same = sorted(p for p in root.glob(f"*-{key}") if (p / "teacher.pt").is_file())  # named by its choice,
        entry = same[0] if same else entry  # the others by class (`teachers=[${model.teacher}, ...]`)
    return entry


def cached_teacher(cfg: DictConfig, model: DictConfig, train: RunFn, index: int = 0) -> Path:
    """Path of the trained teacher's `teacher.pt`; trains it first (once, under a lock, through `train`) if needed."""
    from filelock import FileLock, Timeout

    directory = cache_entry(cfg, model, index)
    final, root, name = directory / "teacher.pt", directory.parent, directory.name
    root.mkdir(parents=True, exist_ok=True)
    failed = root / f"{name}.failed"  # rank 0's sentence when its training of this teacher failed (DDP)
    if not distributed.is_main():  # under DDP rank 0 alone trains it (no collective: training may take hours)
        return wait_for_rank_0(final, failed, float(cfg.teacher.get("wait_minutes", 720)))
    lock = FileLock(str(root / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another process holds it: it is training this teacher
        log.info("teacher: another process is training %s (lock %s.lock); waiting for it", directory, root / name)
        lock.acquire()
    try:
        if final.is_file():
            return final
        if not cfg.teacher.train_if_missing:
            raise ConfigError(
                "No teacher checkpoint is set and teacher.train_if_missing is false: set teacher.checkpoint to a "
                "trained "
                f"{model_name(model, index)} or allow training it (it would be cached at {directory})."
            )
        shutil.rmtree(directory, ignore_errors=True)  # leftovers of an interrupted attempt
        failed.unlink(missing_ok=True)
        training = training_config(cfg, model, directory)
        log.info(
            "teacher stage: training %s for %d epochs before the student, caching it in %s (later runs reuse it)",
            model_name(model, index),
            training.trainer.max_epochs,
            directory,
        )
        try:  # the teacher run's messages name the keys the user set
            with keys_read_from(
                {**FROM_TEACHER, "model.student": teacher_key(cfg, index), "weighting.weights": "teacher.loss.weights"}
            ):  # its messages name the user's keys
                metrics = train(training)
        except BaseException as error:
            sentence = f"training the teacher {model_name(model, index)}: {error}"
            if distributed.world_size() > 1:  # the other ranks, waiting for this teacher, stop with its sentence
                failed.write_text(json.dumps({"launch": launch_id(), "error": f"{type(error).__name__}: {sentence}"}))
            if isinstance(error, ConfigError):  # the teacher's run names its keys as its own config does
                raise ConfigError(sentence) from error
            if isinstance(error, Interrupted):
                raise TeacherInterrupted(
                    f"Interrupted by {signal.Signals(error.signum).name} while training the teacher "
                    f"{model_name(model, index)} for its cache entry {directory}, which keeps nothing of an "
                    "unfinished teacher",
                    error.signum,
                ) from error
            raise
        best, last = (load_checkpoint(directory / "checkpoints" / f"{which}.pt") for which in ("best", "last"))
        save_atomic(
            {
                "format": CACHE_FORMAT,
                "models": {"best": best["student"], "last": last["student"]},
                "epochs": {"best": metrics["best_epoch"], "last": metrics["epochs"]},
                "val": {"best": _val(metrics, "best"), "last": _val(metrics, "final")},
                "metrics": metrics,
            },
            final,
        )
    finally:
        lock.release()
    return final


def launch_id() -> str:
    """What every process of one torchrun launch shares (its rendezvous id and master port), and an earlier launch
    most likely does not."""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.environ.get('MASTER_PORT', '')}"


def _failure(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or being written
        return None
    return value if isinstance(value, dict) else None


def wait_for_rank_0(final: Path, failed: Path, minutes: float) -> Path:
    """A DDP rank other than 0 waits for rank 0 to train the teacher into `final`: at most `minutes`, and no longer
    once rank 0 has written why its training failed (`failed`)."""
    if not final.is_file():
        log.info("teacher: waiting for rank 0 to train %s (at most %g minutes: teacher.wait_minutes)", final, minutes)
    deadline = time.monotonic() + minutes * 60
    while not final.is_file():
        failure = _failure(failed)
        if failure is not None and failure.get("launch") == launch_id():  # not one left by an earlier launch
            raise ConfigError(f"rank 0 could not train the teacher this rank waits for: {failure.get('error')}")
        if time.monotonic() > deadline:
            raise ConfigError(
                f"rank {distributed.rank()} waited {minutes:g} minutes for rank 0 to train the teacher into {final}, "
                "which is not there: look at rank 0's log, or raise teacher.wait_minutes for a longer teacher."
            )
        time.sleep(min(2.0, max(0.01, minutes * 60 / 100)))
    return final


def _val(metrics: dict[str, Any], which: str) -> dict[str, float]:
    prefix = f"{which}_val_"
    return {
        f"val/{k[len(prefix) :]}": v for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, (int, float))
    }


def build_teachers(cfg: DictConfig, device: torch.device) -> list[nn.Module]:
    """Every configured teacher network, frozen, on `device`, still without trained weights.

    Building first lets every shape and module-path check run before any teacher is trained."""
    return [
        freeze(instantiate(model_cfg, key=teacher_key(cfg, i)).to(device))
        for i, model_cfg in enumerate(teacher_models(cfg))
    ]


def load_teacher_weights(cfg: DictConfig, teachers: list[nn.Module], train: RunFn) -> list[TeacherInfo]:
    """Fill `teachers` from `teacher.checkpoint`, or from the cache (training them first, through `train`,
    if needed), or keep the weights they were built with (`teacher.source=built`); returns where each one's
    weights came from."""
    models = teacher_models(cfg)
    checkpoints: Any = cfg.teacher.checkpoint
    if checkpoints is None:
        checkpoints = [None] * len(models)
    elif isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if len(checkpoints) != len(models):
        raise ConfigError(
            f"teacher.checkpoint lists {len(checkpoints)} files for {len(models)} teachers: give one per teacher."
        )
    select = cfg.teacher.get("select", "best")
    built = cfg.teacher.get("source", "trained") == "built"
    if built and any(c is not None for c in checkpoints):
        raise ConfigError(
            "teacher.source=built distils the teacher as its _target_ builds it (its pretrained weights), and "
            "teacher.checkpoint names a file to load: set one of them, not both."
        )
    infos = []
    for i, (teacher, model_cfg, checkpoint) in enumerate(zip(teachers, models, checkpoints)):
        name = model_name(model_cfg, i)
        if built:  # torchvision's weights=..., timm's pretrained=true: loaded by the constructor, not trained here
            infos.append(TeacherInfo(name, str(model_cfg.get("_target_")), "built"))
        elif checkpoint is not None:
            contents = load_weights(teacher, checkpoint, select=select)
            epochs = contents.get("epochs")  # a cache entry's teacher.pt: per selection; a checkpoint: its own
            epoch = epochs.get(select) if isinstance(epochs, dict) else contents.get("epoch")
            epoch = epoch if isinstance(epoch, int) else None
            infos.append(TeacherInfo(name, str(checkpoint), "file", epoch=epoch))
        else:
            path = cached_teacher(cfg, model_cfg, train, i)
            try:
                entry = load_checkpoint(path)
            except ConfigError as error:  # truncated or overwritten: the entry is rebuilt once it is gone
                raise ConfigError(
                    f"the teacher cache entry {path.parent} is corrupt ({path.name} cannot be read): delete "
                    f"{path.parent} and run again to retrain it."
                ) from error
            if entry.get("format") != CACHE_FORMAT:
                raise ConfigError(
                    f"{path} is a cached teacher of an older format: delete {path.parent} and run again to retrain it."
                )
            load_weights(teacher, path, {"model": entry["models"][select]})
            infos.append(
                TeacherInfo(
                    name,
                    str(path.parent),
                    "cache",
                    select,
                    entry["epochs"][select],
                    entry["epochs"]["last"],
                    entry["val"][select],
                )
            )
        freeze(teacher)
    return infos
