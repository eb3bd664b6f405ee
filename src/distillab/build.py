"""Instantiate everything a run needs from the composed config: the one place that knows its shape.

Every check that needs the built objects runs here, before a teacher is trained or a step is taken:
module paths (through `FeatureTaps`), "needs a teacher", the weights naming the terms, DDP support,
the metric a staged weighting follows, and every shape a projector has to bridge (the dry run).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distillab import distributed
from distillab.data import DataModule
from distillab.errors import ConfigError, InvalidArgument, first_line
from distillab.experiment import Experiment, forward_pass
from distillab.instantiate import instantiate
from distillab.losses import LossTerm
from distillab.objective import Objective
from distillab.optim import build_optimization
from distillab.taps import FeatureTaps
from distillab.tasks import Classification, Task
from distillab.weighting import Weighting


def needs_teacher(cfg: DictConfig) -> bool:
    """Whether any configured loss term reads a teacher (decided from the classes, nothing is built)."""
    terms = OmegaConf.select(cfg, "loss.terms", default=None)
    if not isinstance(terms, DictConfig) or not terms:
        raise ConfigError(
            "loss.terms is empty or not a mapping: a loss config names its terms, e.g. loss=kd (see conf/loss/)."
        )
    for key, node in terms.items():
        name = str(key)
        target = str(node.get("_target_")) if isinstance(node, DictConfig) else None
        try:
            cls = get_class(str(target))
        except Exception as error:
            raise ConfigError(
                f"loss.terms.{name}._target_={target!r} is not an importable loss term class ({error})."
            ) from error
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise ConfigError(
                f"loss.terms.{name}._target_={target!r} is not a distillab.losses.LossTerm: a loss term subclasses it."
            )
    return any(getattr(get_class(node._target_), "needs_teacher", False) for node in terms.values())


def build_objective(cfg: DictConfig) -> tuple[Objective, Weighting]:
    terms: dict[str, LossTerm] = {
        name: instantiate(node, key=f"loss.terms.{name}") for name, node in cfg.loss.terms.items()
    }
    weighting: Weighting = instantiate(cfg.weighting, key="weighting")
    if set(weighting.names) != set(terms):
        raise ConfigError(
            f"loss.weights has entries for {sorted(weighting.names)} but loss.terms defines {sorted(terms)}: give "
            "every term exactly one weight."
        )
    return Objective(terms), weighting


def check_terms(objective: Objective, weighting: Weighting, teachers: list[nn.Module], ddp: bool) -> None:
    """What a term or weighting needs of the run: a teacher; one process (trainer.strategy=single)."""
    for name, term in objective.items():
        if term.needs_teacher and not teachers:
            raise ConfigError(
                f"loss.terms.{name} needs a teacher but none is configured: choose one, e.g. model/teacher=deep_nn, "
                "or a loss without a teacher such as loss=ce or loss=self_distill."
            )
    if not ddp:
        return
    for name, term in objective.items():
        if term.init_epochs > 0 or not term.supports_ddp:
            raise ConfigError(
                f"loss.terms.{name} does not run under trainer.strategy=ddp yet (an init stage, or per-sample state "
                "in one process): use trainer.strategy=single."
            )
    if not weighting.supports_ddp:
        raise ConfigError(
            f"weighting {type(weighting).__name__} decides its update in one process, so it does not run under "
            "trainer.strategy=ddp: use trainer.strategy=single."
        )


def install_taps(
    objective: Objective, student: nn.Module, teachers: list[nn.Module]
) -> tuple[FeatureTaps, list[FeatureTaps]]:
    """Hooks on every module path a loss term reads, on the student and on the first teacher (the one
    feature terms read as `outputs.teacher`). A wrong path fails here, naming the term and valid paths."""
    student_paths: dict[str, str] = {}
    teacher_paths: dict[str, str] = {}
    for name, term in objective.items():
        student_paths.update(dict.fromkeys(term.student_taps, f"loss.terms.{name} student layer"))
        teacher_paths.update(dict.fromkeys(term.teacher_taps, f"loss.terms.{name} teacher layer"))
    teacher_taps = [FeatureTaps(t, teacher_paths if i == 0 else {}) for i, t in enumerate(teachers)]
    return FeatureTaps(student, student_paths), teacher_taps


def setup_terms(exp: Experiment) -> None:
    """Each term's `bind_data` sees the training set; then a dry run on one batch (eval mode, no
    gradients: no BatchNorm statistics move), and each term's `setup` sees the real feature shapes and
    builds its projectors before the optimizer exists."""
    for term in exp.objective.values():
        term.bind_data(exp.data)
    batch = next(iter(exp.data.train))
    device = next(exp.student.parameters()).device
    index = batch[2].to(device) if len(batch) > 2 else None
    exp.student.eval()
    try:
        with torch.no_grad():
            outputs = forward_pass(
                exp.student,
                exp.student_taps,
                exp.teachers,
                exp.teacher_taps,
                batch[0].to(device),
                batch[1].to(device),
                index=index,
            )
    except (RuntimeError, ValueError, IndexError) as error:
        detail = first_line(error)
        raise ConfigError(
            f"the networks cannot take this data's inputs of shape {tuple(batch[0].shape[1:])} ({detail}): check "
            f"model.student and model.teacher (in_channels, image_size) against the data's in_channels="
            f"{exp.data.in_channels} and image_size={exp.data.image_size}."
        ) from error
    exp.student.train()
    if isinstance(exp.task, Classification):
        named = [
            ("model.student", outputs.student.out),
            *((f"teacher {i}", t.out) for i, t in enumerate(outputs.teachers)),
        ]
        for key, out in named:
            if out.dim() != 2 or out.shape[1] != exp.data.num_classes:
                raise ConfigError(
                    f"{key} gives outputs of shape {tuple(out.shape[1:])} per sample, but the data has "
                    f"{exp.data.num_classes} classes: set its num_classes to {exp.data.num_classes} (or leave it at "
                    "${data.num_classes})."
                )
    for name, term in exp.objective.items():
        try:
            term.setup(outputs)
        except InvalidArgument as error:  # parts a term builds from the shapes (its projectors)
            raise ConfigError(
                f"loss.terms.{name}.{error.argument}={error.value!r} is not valid: use {error.valid}."
            ) from error


def param_groups(student: nn.Module, objective: Objective, weighting: Weighting) -> list[dict]:
    """The student and every term's own parameters (projectors) train together; a weighting's
    parameters get a group of their own (their learning rate, no weight decay)."""
    groups: list[dict[str, Any]] = [{"name": "model", "params": [*student.parameters(), *objective.parameters()]}]
    weighting_params = list(weighting.parameters())
    if weighting_params:
        group = {"name": "weighting", "params": weighting_params, "weight_decay": 0.0}
        if weighting.lr is not None:
            group["lr"] = weighting.lr
        groups.append(group)
    return groups


def build_experiment(cfg: DictConfig, device: torch.device, teachers: list[nn.Module] | None = None) -> Experiment:
    """`teachers` are built and frozen (`teacher.build_teachers`); their weights may be loaded later.
    Under `trainer.strategy=ddp` the data is this rank's shard."""
    teachers = teachers or []
    ddp = OmegaConf.select(cfg, "trainer.strategy", default="single") == "ddp"
    with distributed.main_rank_first() if ddp else contextlib.nullcontext():  # rank 0 downloads, the others then read
        data: DataModule = instantiate(cfg.data, key="data")
    if ddp:
        data = data.shard(distributed.rank(), distributed.world_size())
    task: Task = instantiate(cfg.task, key="task")
    student: nn.Module = instantiate(cfg.model.student, key="model.student").to(device)
    objective, weighting = build_objective(cfg)
    check_terms(objective, weighting, teachers, ddp)
    validation = [f"val/{m}" for m in task.metrics]
    check_monitor("task.monitor", task.monitor, validation)
    weighting.check_metrics(
        [*validation, *(f"loss/{n}" for n in weighting.names), *(f"weight/{n}" for n in weighting.names)]
    )
    student_taps, teacher_taps = install_taps(objective, student, teachers)
    exp = Experiment(data, task, student, objective, weighting, None, student_taps, teachers, teacher_taps)  # type: ignore[arg-type]
    setup_terms(exp)
    exp.objective, exp.weighting = objective.to(device), weighting.to(device)
    weighting.bind(student)
    steps = len(data.train)  # type: ignore[arg-type]
    exp.optim = build_optimization(cfg.optim, param_groups(student, objective, weighting), steps_per_epoch=steps)
    if exp.optim.monitor is not None:
        check_monitor("optim.scheduler.monitor", exp.optim.monitor, validation)
    return exp


def check_monitor(key: str, value: str, available: list[str]) -> None:
    """A metric followed after each epoch must be one the task reports (checked before the first epoch)."""
    if value not in available:
        raise ConfigError(f"{key}={value!r} is not a metric of this task: use one of {', '.join(available)}.")
