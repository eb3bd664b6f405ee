"""Hydra's entry to distillab's fused launcher (`hydra/launcher=fused`): Hydra finds launchers in the
`hydra_plugins` package. What it does is `distillab.fused_sweep` (grouping, each member's job) and
`distillab.cli.run_members` (each member opened and checked as a job of its own, then trained together)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger("distillab")


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.distillab_launcher.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="distillab")


class FusedLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from distillab import fused_sweep
        from distillab.cli import run_members

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        before = HydraConfig.instance().cfg
        configs = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = number
            configs.append(config)
        jobs = [fused_sweep.prepare_job(c, "hydra.sweep.dir", "hydra.sweep.subdir") for c in configs]
        plan = fused_sweep.plan([job.task_cfg for job in jobs])
        groups = [unit for unit in plan.units if len(unit) > 1]
        log.info(
            "fused launcher: %d jobs, %d trained in %d group(s) of %s, %d alone",
            len(jobs),
            sum(len(g) for g in groups),
            len(groups),
            ", ".join(str(len(g)) for g in groups) or "-",
            len(jobs) - sum(len(g) for g in groups),
        )
        for i, reason in plan.alone.items():
            log.info(
                "\t#%d runs alone: %s (%s)", initial_job_idx + i, reason, " ".join(filter_overrides(job_overrides[i]))
            )
        returns: list[JobReturn | None] = [None] * len(jobs)
        try:
            for unit in plan.units:
                if len(unit) == 1:
                    (i,) = unit
                    log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])))
                    done = [
                        run_job(
                            hydra_context=self.hydra_context,
                            task_function=self.task_function,
                            config=configs[i],
                            job_dir_key="hydra.sweep.dir",
                            job_subdir_key="hydra.sweep.subdir",
                        )
                    ]
                else:
                    log.info("\tjobs %s: trained together", ", ".join(f"#{initial_job_idx + i}" for i in unit))
                    group = fused_sweep.GroupJobs([jobs[i] for i in unit])
                    try:
                        outcomes = run_members(group)
                    except Exception as error:  # a crash (out of memory, say): its members failed, the sweep goes on,
                        log.error("jobs %s failed: %s", ", ".join(f"#{initial_job_idx + i}" for i in unit), error)
                        outcomes = [error] * len(unit)  # as Hydra's basic launcher goes on after a failed job
                    finally:
                        group.close()
                    done = group.returns(outcomes)
                for i, ret in zip(unit, done):
                    returns[i] = ret
                # the unit's log files closed: the launcher's next line is not one of its jobs'
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        finally:
            HydraConfig.instance().cfg = before
        return [ret for ret in returns if ret is not None]
