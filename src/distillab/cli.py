"""The Hydra entry point (`python -m distillab`, the `distillab` script) and error printing, nothing else.

Mistakes are reported before torch is imported, from structure: `command_line` checks the command line
(each override's syntax, group choice and key); Hydra composes, `validate` checks the composed values; only
then does the runner load.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from distillab.command_line import (
    check_choices,
    check_keys,
    check_syntax,
    config_flags,
    distillab_command,
    duplicate_sweep_values,
    flags_first,
    last_of_each,
    parsed,
    record_typed,
    set_twice,
    typed,
)
from distillab.config import (
    canonical_overrides,
    config_dir,
    default_experiment_left_out,
    in_sweep,
    register_resolvers,
)
from distillab.errors import (
    CaptureFailed,
    ConfigError,
    Interrupted,
    RunStopped,
    TeacherInterrupted,
    WriteFailed,
    refuse,
)
from distillab.run_logger import flat_key, record_failure
from distillab.rundir import RunLock, hydra_value, open_run, unwritable
from distillab.sweep_end import forget_printed, print_summary
from distillab.validate import validate

if TYPE_CHECKING:
    from distillab.fused_sweep import GroupJobs

log = logging.getLogger("distillab")
_SWEEP_DIR: list[str] = []  # the sweep whose jobs ran in this process (basic launcher)
_STOPPED_ON_EVERY_RANK: list[bool] = []  # the run stopped at a step every DDP rank stops at (a signal, a NaN)


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher) set the variables of torch.distributed's env:// initialisation; with
    --nproc_per_node=1 too, where WORLD_SIZE is 1."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _drop_file_logging() -> None:
    """Close the run's log file before anything is written to it (a refused run changes nothing)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


# Where a run's files are: relative values are relative to the directory the command ran in.
PLACES = ("paths.root", "paths.data_dir", "paths.cache_dir")


def _from_anywhere(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """`overrides` with `paths.root` (and `paths.data_dir` or `paths.cache_dir`, where they were typed) made
    absolute where they were relative: a printed command then finds this run's teacher cache and data from any
    directory it is pasted into, not a new cache under that directory."""
    typed = {o.split("=", 1)[0].lstrip("+"): o for o in overrides if "=" in o}
    pinned = {}
    for key in PLACES:
        value = OmegaConf.select(cfg, key, default=None)
        if key in typed and _swept(typed[key]):
            continue  # (a sweep of places, each job its own: left as typed)
        if (key == "paths.root" or key in typed) and isinstance(value, str) and not os.path.isabs(value):
            pinned[key] = f"{key}={hydra_value(os.path.abspath(value))}"
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in pinned] + list(pinned.values())


def _swept(override: str) -> bool:
    """`override` lists several values (`a=x,y`, `choice(...)`), or cannot be read as one."""
    read = parsed([override])
    return read is None or read[0].is_sweep_override()


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run in its own directory, quoted for a POSIX shell, from any directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
    launcher = (
        ["torchrun", f"--nproc_per_node={os.environ['WORLD_SIZE']}", "-m", "distillab"]
        if launched_by_torchrun()
        else ["python", "-m", "distillab"]
    )
    run_dir = hydra_value(str(cfg.paths.output_dir))
    again = _from_anywhere(cfg, last_of_each(overrides))
    return distillab_command([*again, f"hydra.run.dir={run_dir}", "trainer.resume=true"], launcher)


def continue_sweep_command(cfg: DictConfig) -> str:
    """The command line that continues this sweep in its own directory, from any directory: jobs that completed
    are kept, an interrupted one resumes from its checkpoint, the others start."""
    again = [a for a in config_flags(typed())[1] if not a.startswith(("trainer.resume=", "hydra.sweep.dir="))]
    sweep_dir = hydra_value(str(Path(HydraConfig.get().sweep.dir).resolve()))
    again = _from_anywhere(cfg, last_of_each(again))
    return distillab_command([*again, f"hydra.sweep.dir={sweep_dir}", "trainer.resume=true"])


class JobFailed(CompactHydraException):
    """A sweep's job that was refused or stopped, its sentence already logged. Hydra ends a sweep with a failed
    job by raising what the first one raised; for a `CompactHydraException` it prints the message alone, not a
    traceback (which stays for a crash)."""


def _job_failed(error: BaseException) -> BaseException:
    """What a sweep's job hands Hydra for `error`: a refusal or a stop as one line (`JobFailed`), a crash as it is."""
    if isinstance(error, ConfigError):
        return JobFailed(f"distillab: error: {error}")
    return JobFailed(f"distillab: {error}") if isinstance(error, RunStopped) else error


def _fail(error: ConfigError | RunStopped, cfg: DictConfig, multirun: bool) -> Any:
    log.debug("the run stopped", exc_info=error)  # the full traceback goes to the run's log file only
    message = f"distillab: error: {error}" if isinstance(error, ConfigError) else f"distillab: {error}"
    if isinstance(error, TeacherInterrupted) and not multirun:
        message += f"; to train it again, in the same run directory: {resume_command(cfg)}"
    elif isinstance(error, Interrupted) and multirun:  # the sweep stops too: no further job starts
        message += f"; the sweep stopped, to continue it (finished jobs are kept): {continue_sweep_command(cfg)}"
    elif isinstance(error, Interrupted):
        message += f"; to continue: {resume_command(cfg)}"
    elif isinstance(error, CaptureFailed) and multirun:  # its other jobs would stop the same way
        message += "; the sweep stopped there, as its other jobs would"
    if multirun and isinstance(error, (Interrupted, CaptureFailed)):  # SystemExit passes through Hydra: the sweep ends
        log.error(message)
        sys.exit(error.exit_code)
    if multirun:  # let Hydra record this job as failed and go on with the others
        log.error(message)
        raise _job_failed(error) from error
    print(message, file=sys.stderr)
    if isinstance(error, RunStopped) and error.every_rank:
        _STOPPED_ON_EVERY_RANK.append(True)
    sys.exit(2 if isinstance(error, ConfigError) else error.exit_code)


class _Signalled(KeyboardInterrupt):
    """A signal outside training, raised where the program is: a `BaseException`, as Python's own
    KeyboardInterrupt, so that no `except Exception` on the way (a constructor's wrapper, Hydra's
    instantiate) turns it into something else. `signals_interrupt` hands it on as `Interrupted`."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"Interrupted by {name} while the run was not training (before its first step or after its last)"
        )
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt(run_dirs: Sequence[Path]) -> Iterator[None]:
    """SIGINT and SIGTERM while the claimed runs in `run_dirs` are not training (importing torch, building,
    closing) stop them at once as `Interrupted`: one line with the command that continues it, and `interrupted`
    in each one's metrics.json (written here: the signal may come before the runner, which records the others, is
    even imported), not a silent exit (SIGTERM) or a traceback (SIGINT). While they train, the loop's own handlers
    take over (`StopSignals`: the step in flight finishes and a checkpoint is written)."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    if threading.current_thread() is not threading.main_thread():  # Python sets handlers there only
        yield
        return
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Signalled as signalled:
        interrupted = Interrupted(str(signalled), signalled.signum)
        for run_dir in run_dirs if _main_rank() else []:
            record_failure(run_dir, "interrupted", interrupted)  # (a finished job's record is kept)
        raise interrupted from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    multirun = in_sweep()
    if multirun:
        _SWEEP_DIR[:] = [HydraConfig.get().sweep.dir]
    run_dir = Path(cfg.paths.output_dir)
    lock = _open(cfg, run_dir, multirun, _drop_file_logging)
    try:
        return _run_claimed(cfg, run_dir, multirun)
    finally:
        if lock is not None:
            lock.release()


def _open(cfg: DictConfig, run_dir: Path, multirun: bool, drop_log: Callable[[], None]) -> RunLock | None:
    """The run directory claimed for this run (`rundir.open_run`), or the refusal reported (`_fail`) with
    `drop_log` called first: a refused run writes nothing into the directory."""
    try:
        if not _main_rank():  # under DDP the ranks share rank 0's directory
            return None
        resume = OmegaConf.select(cfg, "trainer.resume", default=False) is True
        return open_run(run_dir, cfg, resume, HydraConfig.get().runtime.choices)
    except OSError as error:  # a read-only or full file system
        drop_log()
        return _fail(ConfigError(unwritable(error.filename or run_dir, error)), cfg, multirun)
    except ConfigError as error:
        drop_log()
        return _fail(error, cfg, multirun)


def run_members(group: GroupJobs) -> list[float | BaseException | None]:
    """A fused group's jobs (`hydra/launcher=fused`): each opened and checked as `_hydra_main` would, then those
    left trained together by `runner.run_group`. Returns each job's value, or what stopped it."""
    _SWEEP_DIR[:] = [HydraConfig.get().sweep.dir]
    cfgs = group.task_cfgs
    values: list[float | BaseException | None] = [None] * len(cfgs)
    locks: list[RunLock] = []
    ready: list[int] = []
    for i, cfg in enumerate(cfgs):
        run_dir = group.jobs[i].run_dir
        with group.job(i):
            try:
                lock = _open(cfg, run_dir, True, functools.partial(group.drop_log, i))  # a refusal is logged
            except JobFailed as refused:  # (as `_fail` hands it to Hydra): this job only; the others go on
                values[i] = refused
                continue
            if lock is not None:
                locks.append(lock)
            try:
                values[i] = _before_run(cfg, run_dir, functools.partial(group.drop_log, i))
            except ConfigError as error:
                log.error("distillab: error: %s", error)
                values[i] = error
                continue
            if values[i] is None:
                ready.append(i)
    try:
        from distillab.runner import run_group

        with signals_interrupt([group.jobs[i].run_dir for i in ready]):
            outcomes = run_group([cfgs[i] for i in ready], job=lambda k: group.job(ready[k])) if ready else []
    except (ConfigError, RunStopped) as error:  # an interruption: every member checkpointed, the sweep stops
        with group.job(ready[0]):
            return _fail(error, cfgs[ready[0]], True)
    finally:
        for lock in locks:
            lock.release()
    for i, outcome in zip(ready, outcomes):  # (what stopped a member, the runner has logged as its own)
        values[i] = outcome if isinstance(outcome, BaseException) else _value(outcome)
    return [_job_failed(v) if isinstance(v, BaseException) else v for v in values]  # as `_fail` hands Hydra


def _value(metrics: dict[str, Any]) -> float | None:
    """What a job returns to Hydra: its monitored best value."""
    return metrics[flat_key("best", metrics["monitor"])]


def _before_run(cfg: DictConfig, run_dir: Path, drop_log: Callable[[], None]) -> float | None:
    """The checks of a claimed run before the runner loads: a completed run resumed (its best value: nothing is
    done), notes on the command line, `validate` with the overrides (a refusal is recorded in metrics.json)."""
    done = completed(run_dir, cfg)
    if done is not None:  # (a sweep continued after an interruption): its finished jobs change nothing
        drop_log()
        log.info(
            "%s already completed this run (metrics.json: %s epochs, trainer.max_epochs=%s): nothing to resume",
            run_dir,
            done["epochs"],
            cfg.trainer.max_epochs,
        )
        return _value(done)
    left_out = default_experiment_left_out(typed())
    if left_out:
        log.info(left_out)
    for key, values in set_twice(typed()).items():
        log.warning("%s is set more than once on the command line (%s): the last one counts", key, ", ".join(values))
    try:
        validate(cfg, HydraConfig.get().overrides.task)  # the runner validates again, without the command line
    except ConfigError as error:
        if _main_rank():
            record_failure(run_dir, error.status, error)
        raise
    return None


def _run_claimed(cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    try:
        with signals_interrupt([run_dir]):
            done = _before_run(cfg, run_dir, _drop_file_logging)
            if done is not None:
                return done
            from distillab import distributed
            from distillab.runner import run

            distributed.check_launch(cfg.trainer.strategy)
            metrics = run(cfg)
    except OSError as error:  # a file operation outside distillab's own writers (TensorBoard's, a dataset's)
        failed = WriteFailed(error.filename or run_dir, error, doing="using")
        log.debug("the run stopped", exc_info=error)
        if _main_rank():
            record_failure(run_dir, "failed", failed)
        return _fail(failed, cfg, multirun)
    except (ConfigError, RunStopped) as error:
        return _fail(error, cfg, multirun)
    except Exception:
        # Hydra 1.3 prints the traceback on the console but puts none in the job's own log file: the file alone
        log.debug("the run failed", exc_info=True)
        raise
    return _value(metrics)


def completed(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """A resume of a run that finished at least the epochs asked (a sweep continued after an interruption, or a
    resume that forgot `trainer.max_epochs`): its metrics.json, and nothing is run or written again. None when
    there is something to do."""
    if OmegaConf.select(cfg, "trainer.resume", default=False) is not True:
        return None
    from distillab.report.runs import UnreadableRun, read_metrics

    try:
        metrics = read_metrics(run_dir / "metrics.json")
    except UnreadableRun:
        return None
    epochs, asked = metrics.get("epochs"), OmegaConf.select(cfg, "trainer.max_epochs")
    if metrics.get("status") != "completed" or not isinstance(epochs, int) or not isinstance(asked, int):
        return None
    if epochs < asked:
        return None  # asked for more epochs: the resume trains them
    best = metrics.get(flat_key("best", str(metrics.get("monitor", "val/acc"))))
    return metrics if isinstance(best, (int, float)) else None


def main() -> None:
    """Console script `distillab` and `python -m distillab`."""
    register_resolvers()
    args = flags_first(sys.argv[1:])
    record_typed(args)
    _SWEEP_DIR.clear()  # (what an earlier `main` in this process left: tests, notebooks)
    _STOPPED_ON_EVERY_RANK.clear()
    forget_printed()
    try:
        check_syntax(args)
        check_choices(args)
        check_keys(args)
        repeated = duplicate_sweep_values(args) if any(a in ("-m", "--multirun") for a in args) else None
        if repeated:
            raise ConfigError(repeated)
        args = canonical_overrides(args)
        if launched_by_torchrun():
            from distillab import distributed

            distributed.init_from_env()  # join the process group, agree on the run directory
            args = distributed.process_argv(args)
    except ConfigError as error:
        refuse(error)
    sys.argv[1:] = args
    finished = False
    try:
        _hydra_main()
        finished = True
    finally:
        if _SWEEP_DIR and _main_rank():  # also when a job failed, which Hydra's own end-of-sweep hook skips
            print_summary(Path(_SWEEP_DIR[0]))
        if launched_by_torchrun():
            from distillab import distributed

            distributed.shutdown(finished or bool(_STOPPED_ON_EVERY_RANK))  # the others reach the barrier too
