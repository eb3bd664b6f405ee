"""`hydra/launcher=fused`: a sweep's jobs trained in groups, each group in one process, in lock step.

Jobs join a group when they differ only in what each member of a fused step keeps for itself: the loss (its
choice and every number in it), the weighting (value-level strategies), the projector, and the seed
(`trainer.seed`, and `data.seed`, which follows it by default and decides the data order). Everything else (the
student, the teacher, the data, the batch size, the epochs, the optimizer and its schedule, the trainer's
settings) must be equal, or the job starts another group. A job whose step cannot be shared runs alone, as with
Hydra's basic launcher, and the sweep's log says why (`alone_reason`). Groups of one run alone too.

Each member is still its own job: its run directory, `.hydra/`, log file, TensorBoard events, metrics.json and
checkpoints, as Hydra's `run_job` would give it (`GroupJobs`). The training is `runner.run_group`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from distillab.run_logger import OfRun, OnceForTheGroup, speaking_for

log = logging.getLogger("distillab")

# Keys a member keeps for itself; everything else must be equal within a group.
OWN_NODES = ("loss", "weighting", "projector")
OWN_KEYS = ("trainer.seed", "trainer.resume", "data.seed", "paths.output_dir")


def _drop(node: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.get(key) if isinstance(node.get(key), dict) else {}  # type: ignore[assignment]
    node.pop(last, None)


def group_key(task_cfg: DictConfig) -> str:
    """What must be equal for two jobs to train as one: the composed config without the members' own keys."""
    plain: dict[str, Any] = OmegaConf.to_container(task_cfg, resolve=True)  # type: ignore[assignment]
    for key in (*OWN_NODES, *OWN_KEYS):
        _drop(plain, key)
    return json.dumps(plain, sort_keys=True, default=str)


def alone_reason(task_cfg: DictConfig) -> str | None:
    """Why this job cannot share a fused step, or None."""
    trainer = task_cfg.trainer
    if trainer.strategy == "ddp":
        return "trainer.strategy=ddp trains in processes of its own"
    if trainer.backward == "separate":
        return "trainer.backward=separate takes one backward pass per term"
    if trainer.grad_norm_every:
        return "trainer.grad_norm_every measures each term's gradient with backward passes of its own"
    if trainer.compile or trainer.channels_last:
        return "trainer.compile and trainer.channels_last apply to a network of its own"
    if trainer.get("cuda_graph"):
        return "trainer.cuda_graph captures the step of a run of its own"
    from distillab.errors import ConfigError
    from distillab.instantiate import locate
    from distillab.losses import LossTerm

    def get_class(target: str) -> Any:
        try:
            return locate(target, "")
        except ConfigError:  # the job, run alone, says why in one sentence
            return None

    for name, term in (OmegaConf.select(task_cfg, "loss.terms") or {}).items():
        if isinstance(term, DictConfig) and (term.get("init_epochs") or 0) > 0:
            return f"loss term {name} trains an init stage first (init_epochs={term.init_epochs})"
        cls = get_class(str(term._target_)) if isinstance(term, DictConfig) and term.get("_target_") else None
        if cls is None and isinstance(term, DictConfig) and term.get("_target_"):
            return f"loss term {name}'s class cannot be imported"
        if isinstance(cls, type) and issubclass(cls, LossTerm) and not cls.fuses:
            return f"loss term {name} reads the networks' own layers, which a fused group stacks"
    target = OmegaConf.select(task_cfg, "weighting._target_")
    if target:
        from distillab.weighting import Weighting

        cls = get_class(str(target))
        if cls is None:
            return "its weighting's class cannot be imported"
        if isinstance(cls, type) and issubclass(cls, Weighting) and cls.decides_in_backward():
            return f"weighting {cls.__name__} decides the gradient in a backward of its own (gradient-level)"
    return None


@dataclass
class Plan:
    """The sweep's jobs in launch order: each unit a list of job positions (a group, or one job alone)."""

    units: list[list[int]] = field(default_factory=list)
    alone: dict[int, str] = field(default_factory=dict)  # job position -> why it runs alone


def plan(task_cfgs: Sequence[DictConfig]) -> Plan:
    result = Plan()
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(task_cfgs):
        reason = alone_reason(cfg)
        if reason is not None:
            result.alone[i] = reason
            result.units.append([i])
            continue
        key = group_key(cfg)
        if key not in groups:
            groups[key] = []
            result.units.append(groups[key])
        groups[key].append(i)
    return result


@dataclass
class Job:
    """One member's Hydra job: its full config (with `hydra`), the task config, its log file's handler."""

    config: DictConfig
    task_cfg: DictConfig
    run_dir: Path
    handler: logging.Handler | None = None


def prepare_job(config: DictConfig, job_dir_key: str, job_subdir_key: str) -> Job:
    """A sweep job's output directory and task config, as Hydra's `run_job` computes them."""
    HydraConfig.instance().set_config(config)
    output_dir = os.path.join(str(OmegaConf.select(config, job_dir_key)), str(OmegaConf.select(config, job_subdir_key)))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(config)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return Job(config, task_cfg, Path(str(task_cfg.paths.output_dir)))


class GroupJobs:
    """The jobs of one group, set up as Hydra's `run_job` sets up one: `HydraConfig` and job logging (the console
    once, a line the members share shown once on it: `OnceForTheGroup`; a log file per member that takes only its own
    member's records and the group's: `OfRun`)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        first = self.jobs[0].config
        configure_log(first.hydra.job_logging, first.hydra.verbose)
        root = logging.getLogger()
        files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        self.once = {h: OnceForTheGroup() for h in root.handlers if not isinstance(h, logging.FileHandler)}
        for handler, once in self.once.items():
            handler.addFilter(once)
        for handler in files:
            root.removeHandler(handler)
            handler.close()
        for job in self.jobs:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(job.run_dir / "distillab.log", delay=True)
            if files:
                handler.setFormatter(files[0].formatter)
                handler.setLevel(files[0].level)
            handler.addFilter(OfRun(job.run_dir))
            root.addHandler(handler)
            job.handler = handler

    @property
    def task_cfgs(self) -> list[DictConfig]:
        return [job.task_cfg for job in self.jobs]

    @contextlib.contextmanager
    def job(self, i: int) -> Iterator[None]:
        """Everything done for member `i` alone: its Hydra config is the current one, its records its own."""
        job = self.jobs[i]
        HydraConfig.instance().set_config(job.config)
        with speaking_for(job.run_dir):
            yield

    def drop_log(self, i: int) -> None:
        """A refused member writes nothing into its directory: its log file is closed unopened."""
        handler = self.jobs[i].handler
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
            self.jobs[i].handler = None

    def close(self) -> None:
        for i in range(len(self.jobs)):
            self.drop_log(i)
        for handler, once in self.once.items():
            handler.removeFilter(once)

    def returns(self, outcomes: Sequence[object]) -> list[JobReturn]:
        """Hydra's record of each member: its value (the monitored best) or what stopped it."""
        returns = []
        for job, outcome in zip(self.jobs, outcomes):
            ret = JobReturn()
            ret.cfg, ret.hydra_cfg = job.task_cfg, copy.deepcopy(job.config)
            ret.overrides = list(OmegaConf.to_container(job.config.hydra.overrides.task))  # type: ignore[arg-type]
            ret.working_dir = os.getcwd()
            ret.task_name = str(job.config.hydra.job.name)
            failed = isinstance(outcome, BaseException)
            ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
            ret.return_value = outcome
            returns.append(ret)
        return returns
