"""Instantiate everything a run needs from the composed config: the one place that knows its shape."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from distillab import distributed
from distillab.config import instantiate
from distillab.data import DataModule
from distillab.distributed import shard_data
from distillab.errors import ConfigError
from distillab.init_stage import has_init_stage
from distillab.objective import ModelOutput, Objective, Outputs
from distillab.optim import Optimization, build_optimization
from distillab.taps import FeatureTaps, check_paths
from distillab.tasks import Task
from distillab.teacher_outputs import TeacherOutputCache, run_teachers
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
    teacher_cache: TeacherOutputCache | None = None  # set once the teachers are trained (teacher.cache_outputs)

    def forward(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Outputs:
        """Student forward (with gradients) and the frozen teachers' outputs with their tapped features:
        looked up by sample `index` in the teacher cache when there is one, else computed."""
        cached = self.teacher_cache.lookup(index) if self.teacher_cache is not None and index is not None else None
        return forward_pass(self.student, self.student_taps, self.teachers, self.teacher_taps, x, y, cached, index)


def forward_pass(
    student: nn.Module,
    student_taps: FeatureTaps,
    teachers: list[nn.Module],
    teacher_taps: list[FeatureTaps],
    x: Tensor,
    y: Tensor,
    teacher_outs: list[ModelOutput] | None = None,
    index: Tensor | None = None,
) -> Outputs:
    out = ModelOutput(student(x), student_taps.pop())
    if teacher_outs is None:
        teacher_outs = run_teachers(teachers, teacher_taps, x)
    return Outputs(inputs=x, targets=y, student=out, teachers=teacher_outs, index=index)


def needs_teacher(cfg: DictConfig) -> bool:
    """Whether any configured loss term reads a teacher (decided from the classes, nothing is built)."""
    return any(getattr(get_class(node._target_), "needs_teacher", False) for node in cfg.loss.terms.values())


def build_objective(cfg: DictConfig) -> tuple[Objective, Weighting]:
    terms = {name: instantiate(node) for name, node in cfg.loss.terms.items()}
    weighting = instantiate(cfg.weighting)
    if set(weighting.names) != set(terms):
        raise ConfigError(
            f"loss.weights has entries for {sorted(weighting.names)} but loss.terms defines {sorted(terms)}: "
            "give every term exactly one weight."
        )
    return Objective(terms), weighting


def install_taps(objective: Objective, student: nn.Module, teachers: list[nn.Module]) -> tuple[FeatureTaps, list[FeatureTaps]]:
    """Hooks on every module path a loss term reads, on the student and on the first teacher (the one
    feature terms read as `outputs.teacher`). A wrong path fails here, naming the term and valid paths."""
    student_paths: list[str] = []
    teacher_paths: list[str] = []
    for name, term in objective.terms.items():
        check_paths(student, getattr(term, "student_taps", []), f"loss.terms.{name} student layer")
        student_paths += getattr(term, "student_taps", [])
        if teachers:
            check_paths(teachers[0], getattr(term, "teacher_taps", []), f"loss.terms.{name} teacher layer")
            teacher_paths += getattr(term, "teacher_taps", [])
    teacher_taps = [FeatureTaps(t, teacher_paths if i == 0 else []) for i, t in enumerate(teachers)]
    return FeatureTaps(student, student_paths), teacher_taps


def setup_terms(objective: Objective, student: nn.Module, student_taps: FeatureTaps, teachers: list[nn.Module], teacher_taps: list[FeatureTaps], data: DataModule, device: torch.device) -> None:
    """Each term's `bind_data` sees the training set; then a dry run on one batch (eval mode, no
    gradients: no BatchNorm statistics move), and each term's `setup` sees the real feature shapes and
    builds its projectors before the optimizer exists."""
    for term in objective.terms.values():
        if hasattr(term, "bind_data"):
            term.bind_data(data)
    batch = next(iter(data.train))
    index = batch[2].to(device) if len(batch) > 2 else None
    was_training = student.training
    student.eval()
    with torch.no_grad():
        outputs = forward_pass(student, student_taps, teachers, teacher_taps, batch[0].to(device), batch[1].to(device), index=index)
    student.train(was_training)
    for term in objective.terms.values():
        if hasattr(term, "setup"):
            term.setup(outputs)


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


def build_experiment(cfg: DictConfig, device: torch.device, teachers: list[nn.Module] | None = None) -> Experiment:
    """`teachers` are built and frozen (`teacher.build_teachers`); their weights may be loaded later.
    Under `trainer.strategy=ddp` the data is this rank's shard."""
    teachers = teachers or []
    ddp = OmegaConf.select(cfg, "trainer.strategy", default="single") == "ddp"
    with distributed.main_rank_first() if ddp else contextlib.nullcontext():  # rank 0 downloads, the others then read
        data: DataModule = instantiate(cfg.data)
    if ddp:
        data = shard_data(data, distributed.rank(), distributed.world_size())
    task: Task = instantiate(cfg.task)
    student: nn.Module = instantiate(cfg.model.student).to(device)
    objective, weighting = build_objective(cfg)
    for name, term in objective.terms.items():
        if getattr(term, "needs_teacher", False) and not teachers:
            raise ConfigError(
                f"loss.terms.{name} needs a teacher but none is configured: choose one, e.g. model/teacher=deep_nn, "
                "or a loss without a teacher such as loss=ce or loss=self_distill."
            )
    unsupported = [n for n, t in objective.terms.items() if has_init_stage(t) or not getattr(t, "supports_ddp", True)]
    if ddp and unsupported:
        raise ConfigError(f"loss.terms.{unsupported[0]} does not run under trainer.strategy=ddp yet (an init stage, or per-sample state in one process): use trainer.strategy=single.")
    student_taps, teacher_taps = install_taps(objective, student, teachers)
    setup_terms(objective, student, student_taps, teachers, teacher_taps, data, device)
    objective, weighting = objective.to(device), weighting.to(device)
    weighting.bind(student)
    optim = build_optimization(cfg.optim, param_groups(student, objective, weighting), steps_per_epoch=len(data.train))
    return Experiment(data, task, student, objective, weighting, optim, student_taps, teachers, teacher_taps)
