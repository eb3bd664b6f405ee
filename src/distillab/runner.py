"""Run one experiment from a composed config: validate, seed, build, teachers, fit (every stage), metrics.json.

The one entry that the CLI, the tests, notebooks and teacher training (through `teacher.cached_teacher`,
which is handed `run`) all call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillab import distributed
from distillab.build import build_data, build_experiment, needs_teacher
from distillab.checkpoint import load_checkpoint, rng_state, seed_everything, set_rng_state
from distillab.command_line import distillab_command, last_of_each
from distillab.config import config_dir, group_choices, in_sweep, shown_override, sweep_varied_values, swept_keys
from distillab.errors import ConfigError, Interrupted, RunStopped, SetupFailed, building, config_key
from distillab.instantiate import instantiate
from distillab.run_logger import SHARED, RunLogger, flat_key, record_failure, speaking_for, write_json
from distillab.rundir import already_holds, update_record
from distillab.tasks import Classification, Task
from distillab.teacher import TeacherInfo, build_teachers, load_teacher_weights
from distillab.teacher_outputs import build_teacher_cache, wants_cache
from distillab.training import FitResult, Trainer, evaluate
from distillab.training.group import Member
from distillab.training.loop import best_tag
from distillab.validate import validate

log = logging.getLogger("distillab")


def loss_reads(loss: Any) -> list[str]:
    """`loss.<key>` for each number a loss config sets at its top level (`temperature`, `alpha`, `beta`, ...):
    the settings its terms and weights read through `${loss.<key>}`."""
    return [f"loss.{k}" for k, v in loss.items() if isinstance(v, int | float) and not isinstance(v, bool)]


def loss_choice_reads(choice: str) -> list[str]:
    """`loss_reads` of one `loss=` choice, from its file in distillab's conf/ (none for a choice not there)."""
    import yaml

    path = config_dir() / "loss" / f"{choice}.yaml"
    node = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    return loss_reads(node.get("loss", node) if "terms" not in node else node)  # `# @package _global_` nests it


def hparams_of(cfg: DictConfig) -> tuple[dict[str, Any], list[str], list[str]]:
    """What the HParams dashboard records for this run: the keys its sweep varies (a single run: the keys its
    command line sets), then the numbers its loss reads (`loss_reads`), with their values; the keys among them
    that the sweep varies; and the loss numbers that other runs of a sweep over `loss=` choices record and this
    one does not (`RunLogger.hparams`'s `others`)."""
    choices, varied = group_choices(), sweep_varied_values()
    own = loss_reads(OmegaConf.to_container(cfg.loss, resolve=True, throw_on_missing=False))
    values: dict[str, Any] = {}
    for key in [*(varied or swept_keys()), *own]:
        values[key] = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
    others = {k for choice in varied.get("loss", []) for k in loss_choice_reads(choice)} - set(values)
    return values, list(varied), sorted(others)


def run_metrics(result: FitResult, task: Task) -> dict[str, Any]:
    """metrics.json: accuracies in percent; `best_*` are the values at the best epoch by `monitor`."""
    return {
        "status": "completed",
        "monitor": task.monitor,
        "mode": task.mode,
        "best_val_acc": None,  # contract keys, null for tasks without accuracy
        "final_val_acc": None,
        "teacher_val_acc": None,
        **validation_reached(result),
        "final_weights": result.final_weights,
        "steps": result.steps,
        **({"stages": result.stages} if result.stages else {}),
        "train_time_s": round(result.train_time_s, 3),
        "samples_per_s": round(result.samples_per_s, 1),
    }


def run(cfg: DictConfig, label: str = "student") -> dict[str, Any]:
    """One experiment from a composed config. Returns what it writes to `<run dir>/metrics.json`.
    `label` names the trained network in the closing summary (teacher training passes "teacher").

    Whatever ends the run, metrics.json says so: `completed`, `failed` (with the error) or
    `interrupted`, so a sweep report can tell finished, failed and still-running jobs apart.
    """
    (outcome,) = run_group([cfg], label)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _status(error: BaseException) -> str:
    return getattr(error, "status", "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")


def run_group(
    cfgs: Sequence[DictConfig],
    label: str = "student",
    job: Callable[[int], contextlib.AbstractContextManager[object]] | None = None,
) -> list[dict[str, Any] | BaseException]:
    """Experiments trained together (a fused sweep's group; `run` is a group of one): each set up as its own
    run would be, then one `Trainer.fit_group`, then each one's metrics.json and summary. Returns each run's
    metrics, or what stopped it (also recorded in its metrics.json); a group of one raises instead.
    `job(i)` is entered around everything done for run `i` alone (the launcher: Hydra's job config, its log)."""
    job = job or (lambda i: speaking_for(Path(cfgs[i].paths.output_dir)))
    alone = len(cfgs) == 1
    outcomes: list[dict[str, Any] | BaseException] = []
    runs: list[_Run] = []
    caches: dict[str, Any] = {}  # teacher-output caches, built once for the members that can share one
    for i, cfg in enumerate(cfgs):
        with job(i):  # the run's own Hydra config: `paths.output_dir` resolves to its own directory
            run_dir = Path(cfg.paths.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            with _recorded(run_dir, raise_it=alone) as failed:
                runs.append(_set_up(i, cfg, run_dir, label, "" if alone else run_dir.name, caches))
        outcomes.append(failed[0] if failed else {})
    _share_data(runs)
    by_start: dict[tuple[int, int, int], list[_Run]] = {}
    for r in runs:  # members resumed at different points train in turn
        by_start.setdefault(r.start_point(), []).append(r)
    parts = list(by_start.values())
    for number, part in enumerate(parts):
        try:
            part[0].trainer.fit_group([r.member for r in part])
        except BaseException as error:  # a signal (every member checkpointed) or a crash: the group ends, and
            _record_stop(part, error, job, begun=True)  # the part training, and the parts not begun, say so
            _record_stop([r for later in parts[number + 1 :] for r in later], error, job, begun=False)
            raise
        for r in part:  # (before the next part trains: a stop there leaves these finished)
            with job(r.position), _recorded(r.member.run_dir, raise_it=alone) as failed:
                outcomes[r.position] = _finish(r, label)
            if failed:
                outcomes[r.position] = failed[0]
    return outcomes


def validation_reached(result: FitResult) -> dict[str, Any]:
    """metrics.json's `epochs`, `best_epoch` and best and last validation metrics (`best_val_acc`, ...)."""
    return {
        **{flat_key("best", k): v for k, v in result.best.items()},
        **{flat_key("final", k): v for k, v in result.final.items()},
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
    }


def reached(member: Member) -> dict[str, Any] | None:
    """What an unfinished run reached (`validation_reached`); None before its first validated epoch (or its
    checkpoint's), so that `record_failure` keeps what an earlier record says."""
    return validation_reached(member.p.result) if member.p.result.epochs else None


def _record_stop(
    runs: Sequence[_Run],
    error: BaseException,
    job: Callable[[int], contextlib.AbstractContextManager[object]],
    begun: bool,
) -> None:
    """The metrics.json of each run of a group that stopped (`error`: a signal or a crash) before it finished:
    how it stopped (its own error, where the NaN policy stopped it first) and how far it got. A run whose part had
    not `begun` training records what its checkpoint holds, or keeps its earlier record (`record_failure`)."""
    for r in runs:
        with job(r.position):
            if r.member.logger is not None:
                r.member.logger.close()
            if distributed.is_main():
                stopped = r.member.error or error
                so_far = reached(r.member)
                if begun and so_far is None:  # it trained, if not to a validated epoch: its stop replaces the record
                    so_far = {}
                record_failure(r.member.run_dir, _status(stopped), stopped, so_far)


@contextlib.contextmanager
def _recorded(run_dir: Path, raise_it: bool) -> Iterator[list[BaseException]]:
    """What a run raises goes into its metrics.json (`failed`, `interrupted`); then it is raised (a run of its
    own, or a signal), or handed back in the list (a member of a group: the others go on)."""
    failed: list[BaseException] = []
    try:
        yield failed
    except BaseException as error:
        if distributed.is_main():
            record_failure(run_dir, _status(error), error)
        if raise_it or not isinstance(error, Exception) or isinstance(error, Interrupted):
            raise  # (a signal stops the whole group: its sweep stops and says how to continue)
        log.debug("the run stopped", exc_info=error)  # the traceback, in its own log file only
        log.error("%s: %s", run_dir.name, error)
        failed.append(error)


def _share_data(runs: list[_Run]) -> None:
    """Runs with the same data config (seed included) share one `DataModule`: their batches are one batch,
    copied to the device, run through the teacher and the students' stacked forward once."""
    seen: dict[str, Any] = {}
    for r in runs:
        key = repr(OmegaConf.to_container(r.cfg.data, resolve=True))
        r.member.exp.data = seen.setdefault(key, r.member.exp.data)


def resume_state(run_dir: Path, resume: bool, max_epochs: int | None = None) -> dict[str, Any] | None:
    """The checkpoint to continue from with `trainer.resume=true`; refuses to train over an earlier run, and a
    resume asking for fewer epochs (`max_epochs`) than the run has trained."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        if resume and in_sweep():  # a sweep continued: the jobs it had not begun start now
            log.info("%s had not begun: it starts from the beginning", run_dir.name)
        elif resume:
            log.warning("trainer.resume=true but %s does not exist: starting from the beginning", last)
        return None
    if not resume:
        raise already_holds(run_dir, "checkpoints/last.pt")
    state = load_checkpoint(last)
    done, partway = state.get("epoch", 0), state.get("progress", {}).get("batch", 0)
    begun = done + 1 if isinstance(partway, int) and partway > 0 else done  # stopped partway through an epoch
    if max_epochs is not None and isinstance(done, int) and begun > max_epochs:
        key = config_key("trainer.max_epochs")
        raise ConfigError(
            f"{key}={max_epochs} is fewer than the {begun} epochs this run has begun (checkpoints/last.pt): resume "
            f"with {key}={begun} or more, or with the command printed when it stopped (which keeps its own)."
        )
    log.info("resuming %s from step %d", run_dir, state.get("step", 0))
    return state


def prepare_teachers(cfg: DictConfig, exp: Any, caches: dict[str, Any] | None = None) -> list[TeacherInfo]:
    """Load (or train and cache) the teachers' weights, then their output cache (`teacher.cache_outputs`).
    Training one reseeds, so the RNG state is restored afterwards: the student's run never depends on
    whether its teacher came from the cache. `caches`: output caches already built in this process (a fused
    group's members), reused when the teachers, their taps and the training inputs are the same."""
    features = any(taps.paths for taps in exp.teacher_taps)  # a term reads the teachers' features
    cache = wants_cache(cfg.teacher.cache_outputs, exp.data, exp.teachers, features)  # an invalid `true`: refused
    state = rng_state()
    infos = load_teacher_weights(cfg, exp.teachers, train=_train_teacher)  # DDP: rank 0 trains, the others wait
    set_rng_state(state)
    for info in infos:
        if info.kind != "cache":
            continue
        val = ", ".join(f"{k}={v:.4g}" for k, v in (info.val or {}).items())
        log.info(
            "teacher: %s from cache entry %s (%s epoch %s of %s: %s)",
            info.name,
            info.source,
            info.select,
            info.epoch,
            info.epochs,
            val,
            extra=SHARED,
        )
    if not cache:
        return infos
    same = json.dumps(  # what the cached outputs depend on (the data's seed only orders the batches)
        [
            OmegaConf.to_container(cfg.teacher, resolve=True),
            OmegaConf.to_container(cfg.model.teacher, resolve=True),
            {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "seed"},  # type: ignore[union-attr]
            [sorted(taps.paths) for taps in exp.teacher_taps],
            cfg.trainer.max_epochs,
        ],
        sort_keys=True,
        default=str,
    )
    if caches is not None and same in caches:
        exp.teacher_cache = caches[same]
        return infos
    exp.teacher_cache = build_teacher_cache(
        cfg.teacher.cache_budget_mb,
        exp.data,
        exp.teachers,
        exp.teacher_taps,
        required=cfg.teacher.cache_outputs is True,
        epochs=cfg.trainer.max_epochs,
        store=Path(cfg.paths.cache_dir) / "teacher_views",
    )
    if caches is not None:
        caches[same] = exp.teacher_cache
    return infos


class _NotSetUp(Exception):
    """Carries what a teacher's own training raised through the student's `setting_up` unchanged: a crash
    while training is not a set-up error (it gets its traceback and `status: failed`, as the student's would)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _train_teacher(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run(cfg, label="teacher")
    except (ConfigError, RunStopped):
        raise
    except Exception as error:
        raise _NotSetUp(error) from error


@contextlib.contextmanager
def setting_up(doing: str, run_dir: Path) -> Iterator[None]:
    """Before the first training step, whatever is raised reaches the user as one sentence (a `ConfigError`,
    exit 2): checked values say what would be valid; anything else (a constructor, a file, a library) says
    what was being done and what it raised, with the traceback in the run's log file."""
    try:
        yield
    except (ConfigError, RunStopped):
        raise
    except _NotSetUp as carried:
        raise carried.error from carried.error.__cause__
    except Exception as error:
        from omegaconf.errors import OmegaConfBaseException

        key = getattr(error, "full_key", None) if isinstance(error, OmegaConfBaseException) else None
        if key:  # a key the code reads was removed (~key) or left at ??? (a missing value)
            raise ConfigError(f"{key} is missing or has no value: {doing} needs it; set {key}=...") from error
        raise SetupFailed(doing, error, str(run_dir / "distillab.log")) from error


@dataclass
class _Run:
    """One run between its set-up and its end: what `_finish` needs besides the trained member."""

    position: int  # in the group
    cfg: DictConfig
    trainer: Trainer
    member: Member
    infos: list[TeacherInfo]
    teacher_val: list[dict[str, float]]

    def start_point(self) -> tuple[int, int, int]:
        progress = (self.member.resume_from or {}).get("progress", {})
        return progress.get("stage", 0), progress.get("epoch", 0), progress.get("batch", 0)


def _set_up(position: int, cfg: DictConfig, run_dir: Path, label: str, name: str, caches: dict[str, Any]) -> _Run:
    """Everything before the first step, each failure one sentence: checks, seed, build, teachers, prepare."""
    with setting_up("checking the config", run_dir):
        validate(cfg)
        seed_everything(cfg.trainer.seed)
        trainer: Trainer = instantiate(cfg.trainer, key="trainer")
        trainer.label = "" if label == "student" else label
    with setting_up(f"reading {run_dir / 'checkpoints' / 'last.pt'}", run_dir):
        resume_from = resume_state(run_dir, trainer.resume, trainer.max_epochs)
    # Build everything with untrained teacher networks first: every shape and path check runs before
    # a teacher is trained. The data first: a dataset missing is said before a teacher's weights are fetched.
    with setting_up("building the experiment (data, models, loss terms, optimizer)", run_dir), building(cfg):
        data = build_data(cfg)
        teachers = build_teachers(cfg, trainer.device) if needs_teacher(cfg) else []
        exp = build_experiment(cfg, trainer.device, teachers, data)
    with setting_up("preparing the teacher", run_dir):
        infos = prepare_teachers(cfg, exp, caches) if exp.teachers else []
        teacher_val = [
            {f"val/{k}": v for k, v in evaluate(t, exp.data.val, exp.task, trainer.device, trainer.ddp).items()}
            for t in exp.teachers
        ]
    for info, val in zip(infos, teacher_val):
        check_teacher_finite(info, val)
        warn_if_untrained(info, val, exp.data.num_classes if isinstance(exp.task, Classification) else None)
        if info.kind != "cache":
            log.info(
                "teacher: %s %s: %s on this run's validation set",
                f"loaded {info.source} into" if info.kind == "file" else "as built by",
                info.name if info.kind == "file" else f"{info.source} ({info.name}, teacher.source=built)",
                ", ".join(f"{k}={v:.4g}" for k, v in val.items()),
            )
    with setting_up("preparing the models for training (memory format, compilation, DDP, the resumed state)", run_dir):
        member = trainer.prepare(exp, run_dir, name, resume_from)  # a checkpoint that does not fit: said here
    # Resuming: TensorBoard drops what was logged after the checkpoint. Asked to resume with no checkpoint (stopped
    # before one was written): the run starts over, and drops everything logged before.
    purge_step = resume_from["step"] + 1 if resume_from is not None else 0 if trainer.resume else None
    # under DDP, rank 0 alone writes TensorBoard, metrics.json and checkpoints
    member.logger = RunLogger(run_dir, purge_step, distributed.is_main(), exp.weighting.names)
    for i, val in enumerate(teacher_val if resume_from is None else []):
        member.logger.scalars({f"teacher{i or ''}/{k}": v for k, v in val.items()}, 0)  # teacher/val/acc
    if trainer.resume and distributed.is_main():
        update_record(run_dir, cfg)
    return _Run(position, cfg, trainer, member, infos, teacher_val)


def _finish(r: _Run, label: str) -> dict[str, Any]:
    """metrics.json, the HParams summary and the closing lines of one trained run (or raise what stopped it)."""
    member, task, teacher_val, infos = r.member, r.member.exp.task, r.teacher_val, r.infos
    logger, run_dir = member.logger, member.run_dir
    assert logger is not None
    try:
        if member.error is not None:
            raise member.error
        assert member.result is not None  # set by `Trainer.fit_group` for every member it trained
        metrics = run_metrics(member.result, task)
        if teacher_val:
            metrics["teacher_val_acc"] = teacher_val[0].get("val/acc")  # the first teacher's, on this validation set
            metrics["teacher"] = {**infos[0].as_dict(), "val_here": teacher_val[0]}
            metrics["teachers_val"] = teacher_val
            if len(infos) > 1:
                metrics["teachers"] = [{**info.as_dict(), "val_here": val} for info, val in zip(infos, teacher_val)]
        final = member.result.final
        tags = [tag for m in (task.monitor, *(m for m in final if m != task.monitor)) for tag in (m, best_tag(m))]
        metric_tags = [*tags, *([f"teacher/{task.monitor}"] if teacher_val else [])]
        values, differs, others = hparams_of(r.cfg)
        logger.hparams(values, metric_tags, differs, others)
    finally:
        logger.close()
    if distributed.is_main():
        write_json(run_dir / "metrics.json", metrics)
        distilled, classification = bool(teacher_val), isinstance(task, Classification)
        hints = next_commands(r.cfg, distilled, classification) if label == "student" else []
        summarize(run_dir, metrics, task, label, hints, member.label)
    return metrics


def teacher_origin(info: TeacherInfo) -> tuple[str, str]:
    """Where a teacher's weights came from, and what would give it better ones: for the checks below."""
    return {
        "file": (f"teacher.checkpoint {info.source}", "give a checkpoint trained on this data"),
        "built": (
            f"the teacher as {info.source} builds it (teacher.source=built)",
            "give its _target_ weights trained on this data (weights=..., pretrained=true) or use "
            "teacher.source=trained",
        ),
    }.get(
        info.kind,
        (
            f"the cached teacher {info.source}",
            f"train it for more epochs (teacher.max_epochs, now {info.epochs}: a new cache entry) or with another "
            "recipe (teacher.optim.*), or give teacher.checkpoint",
        ),
    )


def check_teacher_finite(info: TeacherInfo, val: dict[str, float]) -> None:
    """A teacher whose validation loss is NaN or Inf would make every distillation term non-finite at the first
    step, where the student's lr would be blamed: it is refused as the teacher."""
    bad = {k: v for k, v in val.items() if not math.isfinite(v)}
    if not bad:
        return
    where, remedy = teacher_origin(info)
    shown = ", ".join(f"{k}={v}" for k, v in bad.items())
    raise ConfigError(
        f"{where} ({info.name}) gives non-finite outputs on this run's validation set ({shown}): {remedy}."
    )


def warn_if_untrained(info: TeacherInfo, val: dict[str, float], num_classes: int | None) -> None:
    """A classification teacher at most twice chance, and within a tenth of the way from chance to 100 %, on this
    run's validation set (19 % for 10 classes, 55 % for 2, 2 % for 100) was most likely never trained on these
    labels (`teacher.source=built` without pretrained weights, a checkpoint of other data): its students would
    distil noise. A warning, not a refusal: distilling a random teacher is itself a studied baseline."""
    acc = val.get("val/acc")
    if num_classes is None or num_classes < 2 or acc is None:
        return
    chance = 100.0 / num_classes
    if acc > min(2 * chance, chance + (100.0 - chance) / 10):
        return
    where, remedy = teacher_origin(info)
    log.warning(
        "%s (%s) scores val/acc=%.4g on this run's validation set, about chance for %d classes (%.4g): it looks "
        "untrained on these labels, so the student would distil noise; %s.",
        where,
        info.name,
        acc,
        num_classes,
        chance,
        remedy,
    )


# How far (in accuracy points) the final epoch may fall below the best before the closing lines say so: a final
# figure that far below the best misleads a comparison of final accuracies (fixed vs learnable weights, say). Runs
# shorter than NOTED_EPOCHS are still learning: their last epochs are not a settled figure either way.
FINAL_GAP, NOTED_EPOCHS = 1.0, 10


def next_commands(cfg: DictConfig, distilled: bool, classification: bool) -> list[str]:
    """What the closing lines suggest trying next, built on this run's own command line (so that they run on its
    data and models): the comparison it calls for (the student alone after a distillation, with the figure its
    experiment records in `student_alone`; distillation after a student alone), and a sweep of temperature and
    weighting. None for a job of a sweep (the sweep's table and report command close it), a chosen experiment
    (whose folder holds its comparisons: `experiment=cifar100/<pair>/ce`), a DDP run or another task."""
    from hydra.core.hydra_config import HydraConfig

    if not classification or not HydraConfig.initialized() or in_sweep():
        return []
    task = list(HydraConfig.get().overrides.task)
    chosen = any(o.lstrip("+").startswith("experiment") for o in task)  # (`~experiment` leaves the default out)
    if cfg.trainer.strategy != "single" or chosen:
        return []  # an experiment's loss is its method (its own `ce` is the comparison); torchrun's commands differ
    mine = ("loss", "+loss", "~loss", "weighting", "+weighting", "hydra.", "trainer.resume")
    typed = last_of_each([shown_override(o) for o in task if not o.startswith(mine)])
    if distilled:
        # the experiment's recorded figure holds for its own settings: not after other epochs, models or data
        as_recorded = all(o.startswith(("paths.", "trainer.progress", "trainer.log_every")) for o in typed)
        figure = OmegaConf.select(cfg, "student_alone", default=None) if as_recorded else None
        alone = f"the student alone, to compare{f': {figure}' if figure else ''}"
        compare = f"{distillab_command([*typed, 'loss=ce'])} ({alone})"
    else:
        compare = f"{distillab_command([*typed, 'loss=kd'])} (the same student distilled from the teacher)"
    swept = ["--multirun", *typed, "loss=kd", "loss.temperature=1,4", "weighting=fixed,learnable"]
    return [compare, f"{distillab_command(swept)} (a sweep; then python -m distillab.report DIR)"]


def summarize(
    run_dir: Path,
    metrics: dict[str, Any],
    task: Task,
    label: str = "student",
    next_steps: Sequence[str] = (),
    name: str = "",
) -> None:
    """The run's last lines: the trained network's best and final metric, the teacher, where to look. `name`: the
    run's name in a fused group, which its own lines then start with (its epoch lines do too)."""
    monitor = task.monitor
    best, final = float(metrics[flat_key("best", monitor)]), float(metrics[flat_key("final", monitor)])
    who = f"{name} " if name else ""
    lines = [
        f"{who}{label}: best {monitor}={best:.4g} (epoch {metrics['best_epoch']} of {metrics['epochs']}), "
        f"final {final:.4g}"
    ]
    gap = (best - final) * (1 if task.mode == "max" else -1)
    settled = metrics["epochs"] >= NOTED_EPOCHS
    if label != "teacher" and monitor.endswith("acc") and gap > FINAL_GAP and settled:  # (accuracy is in percent)
        lines.append(
            f"{who}note: the final epoch is {gap:.2f} points below the best: its last epochs overfit or are noisy; "
            "compare runs at their best epoch too (the report's best column), or train fewer epochs"
        )
    teachers = metrics.get("teachers") or ([metrics["teacher"]] if metrics.get("teacher") else [])
    shared: list[str] = []  # (the teachers: what a fused group's members say alike)
    for i, teacher in enumerate(teachers):  # every teacher of a multi-teacher run, numbered as in TensorBoard
        where = (
            f"{teacher['select']} epoch {teacher['epoch']} of {teacher['epochs']}"
            if teacher["kind"] == "cache"
            else teacher["source"]
        )
        shared.append(
            f"teacher{f' {i + 1} of {len(teachers)}' if len(teachers) > 1 else ''}: {teacher['name']} ({where}), "
            f"{monitor}={teacher['val_here'].get(monitor, float('nan')):.4g} on this validation set"
        )
    lines += shared
    if label == "teacher":  # a stage of the student's run, not its end: one line, and the run goes on
        lines = [f"teacher stage done: {lines[0].removeprefix('teacher: ')}; its run: {run_dir}"]
    else:
        lines += [
            f"run directory: {run_dir} (metrics.json, checkpoints/)",
            f"look at it: tensorboard --logdir {shlex.quote(str(run_dir))}",
            *(f"next: {command}" for command in next_steps),
        ]
    for line in lines:
        log.info(line, extra=SHARED if line in shared else None)
