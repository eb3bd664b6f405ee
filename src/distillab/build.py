"""Instantiate everything a run needs from the composed config: the one place that knows its shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn

from distillab.config import instantiate
from distillab.data import DataModule
from distillab.errors import ConfigError
from distillab.objective import Objective
from distillab.optim import Optimization, build_optimization
from distillab.taps import FeatureTaps
from distillab.tasks import Task
from distillab.weighting import Weighting


@dataclass
class Experiment:
    """Everything `Trainer.fit` needs, built and on its device."""

    data: DataModule
    task: Task
    student: nn.Module
    objective: Objective
    weighting: Weighting
    optim: Optimization
    student_taps: FeatureTaps
    teachers: list[nn.Module] = field(default_factory=list)
    teacher_taps: list[FeatureTaps] = field(default_factory=list)


def build_objective(cfg: DictConfig) -> tuple[Objective, Weighting]:
    terms = {name: instantiate(node) for name, node in cfg.loss.terms.items()}
    weighting = instantiate(cfg.weighting)
    if set(weighting.names) != set(terms):
        raise ConfigError(
            f"loss.weights has entries for {sorted(weighting.names)} but loss.terms defines {sorted(terms)}: "
            "give every term exactly one weight."
        )
    return Objective(terms), weighting


def param_groups(student: nn.Module, objective: Objective, weighting: Weighting) -> list[dict]:
    """The student and every term's own parameters (projectors) train together; a weighting's
    parameters get a group of their own (their learning rate, no weight decay)."""
    groups = [{"name": "model", "params": [*student.parameters(), *objective.parameters()]}]
    weighting_params = list(weighting.parameters())
    if weighting_params:
        group = {"name": "weighting", "params": weighting_params, "weight_decay": 0.0}
        if weighting.lr is not None:
            group["lr"] = weighting.lr
        groups.append(group)
    return groups


def build_experiment(cfg: DictConfig, device: torch.device) -> Experiment:
    data: DataModule = instantiate(cfg.data)
    task: Task = instantiate(cfg.task)
    student: nn.Module = instantiate(cfg.model.student).to(device)
    objective, weighting = build_objective(cfg)
    objective, weighting = objective.to(device), weighting.to(device)
    optim = build_optimization(cfg.optim, param_groups(student, objective, weighting), steps_per_epoch=len(data.train))
    return Experiment(
        data=data,
        task=task,
        student=student,
        objective=objective,
        weighting=weighting,
        optim=optim,
        student_taps=FeatureTaps(student, []),
    )
