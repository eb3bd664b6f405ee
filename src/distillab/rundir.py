"""A run directory belongs to one run, without torch.

- A default (timestamped) directory is claimed with an exclusive `mkdir`: two runs started in the same second
  get two directories (`FreshRunDir`, a Hydra callback).
- While a run trains, it holds a lock on its directory (`flock` on `<run dir>/.lock`, which the kernel
  releases when the process ends, killed or not): a second run aimed at it is refused.
- Its `.hydra/` record (composed config, Hydra's config, overrides) is written when the run is accepted.
  A directory holding an earlier run's record is refused unless the run resumes it; a resume is compared with
  the record, only `RESUMABLE` keys may differ, and the record is rewritten once the resume is about to train
  (`update_record`). A refused run, or a resume with nothing to do, changes no byte of the directory.
"""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from distillab.errors import ConfigError, os_reason, refuse
from distillab.files import remove_partial_writes
from distillab.validate import REFERENCE, raw_value

log = logging.getLogger("distillab")

RECORD = ".hydra/config.yaml"
LOCK = ".lock"
# What a resume may change: how long it trains, and how often it logs, checkpoints and shows progress; and
# `paths.*`, where the data, the cache and the run are (not what they hold). Any other difference is refused.
RESUMABLE = (
    "trainer.max_epochs",
    "trainer.resume",
    "trainer.log_every",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.image_every",
    "trainer.grad_norm_every",
    "paths.*",
)


def holds_run(run_dir: Path) -> str | None:
    """What shows that an earlier run used `run_dir` (its record, a checkpoint, its metrics), or None. A run
    refused before it trained (metrics.json says `refused`, no checkpoint) holds nothing worth keeping: the
    corrected command may use its directory."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "checkpoints/last.pt"
    if _refused(run_dir / "metrics.json"):
        return None
    for mark in (RECORD, "metrics.json"):
        if (run_dir / mark).is_file():
            return mark
    return None


def _refused(metrics: Path) -> bool:
    try:
        return json.loads(metrics.read_text()).get("status") == "refused"
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not an object: not a refusal's record
        return False


def own_directory() -> str:
    """How this run gets a directory of its own: by leaving `hydra.sweep.dir` (a job of a sweep) or `hydra.run.dir`
    (a run from the command line) at its default, or with a new `paths.output_dir` (a run from Python: `compose`,
    then `runner.run`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    mode = HydraConfig.get().mode if HydraConfig.initialized() else None
    if mode == RunMode.MULTIRUN:
        return "leave hydra.sweep.dir at its default"
    return "leave hydra.run.dir at its default" if mode == RunMode.RUN else "set paths.output_dir to a new directory"


def already_holds(run_dir: Path, mark: str) -> ConfigError:
    """The refusal of a run aimed at a directory where `mark` shows an earlier run."""
    return ConfigError(
        f"{run_dir} already holds a run ({mark}): continue it with trainer.resume=true, or give this run its own "
        f"directory ({own_directory()})."
    )


def check_path(run_dir: Path) -> None:
    """TensorBoard's writer and the report need a path they can encode: refuse one that is not UTF-8."""
    try:
        str(run_dir).encode("utf-8")
    except UnicodeEncodeError as error:
        shown = str(run_dir).encode("utf-8", "backslashreplace").decode()
        raise ConfigError(
            f"the run directory {shown} has a byte that is not UTF-8 ({error.reason}): choose a name in UTF-8 "
            "(hydra.run.dir=..., or paths.root=...)."
        ) from None


class RunLock:
    """An exclusive `flock` on `<run dir>/.lock`, held from `acquire` until `release` (or the process's end)."""

    def __init__(self, handle: IO[bytes], path: Path, created: bool) -> None:
        self.handle, self.path, self.created = handle, path, created

    @classmethod
    def acquire(cls, run_dir: Path, resume: bool = False) -> RunLock:
        """`resume`: the run asks to continue the one in `run_dir` (the refusal then says to wait for it)."""
        import fcntl

        path = run_dir / LOCK
        created = not path.exists()
        handle = open(path, "ab")  # noqa: SIM115 (held for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                if resume:  # (a sweep continued while the first one still runs: the two refuse each other's job)
                    raise ConfigError(
                        f"{run_dir} is in use by another run that is still going: wait for it to end, then resume "
                        "it with the same command (a run that has completed is left as it is)."
                    ) from None
                raise ConfigError(
                    f"{run_dir} is in use by another run that is still going: wait for it to end, or give this run "
                    f"its own directory ({own_directory()})."
                ) from None
            log.warning("could not lock %s (%s): nothing stops another run from using it", run_dir, error.strerror)
        return cls(handle, path, created)

    def release(self, refused: bool = False) -> None:
        """Unlock; a refused run also removes the lock file if it made it (it leaves the directory as it was)."""
        if refused and self.created:
            self.path.unlink(missing_ok=True)
        self.handle.close()


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds `run_dir`'s lock (a run is training there). True where that cannot be told: no
    lock file (a run stopped before it took its directory), or a file system without `flock`."""
    import fcntl

    try:
        handle = open(run_dir / LOCK, "rb")  # noqa: SIM115 (closed below; never created here)
    except OSError:
        return True
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a run's exclusive lock refuses it
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _flat(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def _values(cfg: DictConfig) -> dict[str, Any]:
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that resolves only inside its own run: compare as written
        container = OmegaConf.to_container(cfg, resolve=False)
    return dict(_flat(container))


_ABSENT = "absent"


def changed_keys(recorded: DictConfig, requested: DictConfig) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs between two configs (a key only one has counts), as (recorded, requested)."""
    old, new = _values(recorded), _values(requested)
    keys = sorted(old.keys() | new.keys())
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def _package(group: str) -> str:
    """Where a config group's choice lands: `loss` -> loss, `model@model.student` -> model.student."""
    return group.split("@", 1)[1] if "@" in group else group.replace("/", ".")


def _changes(run_dir: Path, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """What `cfg` changes against the recorded config of `run_dir`, where things are (`paths.*`) aside."""
    recorded = OmegaConf.load(run_dir / RECORD)
    assert isinstance(recorded, DictConfig)
    if "paths" in cfg:  # where things are may move (a copied run): keys that only interpolate paths.* follow
        recorded.paths = cfg.paths
    return changed_keys(recorded, cfg)


def _follows(cfg: DictConfig, key: str, refused: Mapping[str, Any]) -> bool:
    """`key`'s value is made from another refused key (`${one_minus:${loss.alpha}}`): its change follows from that
    one's, which the sentence names. (One made from a key a resume may change, `T_max: ${trainer.max_epochs}`, is
    named itself: it is refused too.)"""
    raw = raw_value(cfg, key)
    return isinstance(raw, str) and any(ref in refused and ref != key for ref in REFERENCE.findall(raw))


def check_resume(run_dir: Path, cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """The requested config against the recorded one: only `RESUMABLE` keys may differ, else one sentence naming
    the others (a changed group choice as the choice, `loss was ce, now kd`, rather than every key under it). The
    allowed changes are logged and recorded when the resume is about to train (`update_record`)."""
    changes = _changes(run_dir, cfg)
    hydra_record = run_dir / ".hydra" / "hydra.yaml"
    before = OmegaConf.select(OmegaConf.load(hydra_record), "hydra.runtime.choices") if hydra_record.is_file() else {}
    groups = {
        g: (before.get(g, _ABSENT), v)
        for g, v in choices.items()
        if not g.startswith("hydra/") and before and before.get(g, _ABSENT) != v
    }
    packages = tuple(f"{_package(g)}." for g in groups)
    refused = {
        **groups,
        **{k: v for k, v in changes.items() if k not in RESUMABLE and not k.startswith(packages)},
    }
    if refused:
        said = {k: v for k, v in refused.items() if not _follows(cfg, k, refused)}  # (loss.weights.ce: loss.alpha's)
        listed = "; ".join(f"{k} was {old}, now {new}" for k, (old, new) in list(said.items())[:4])
        more = f"; and {len(said) - 4} more" if len(said) > 4 else ""
        raise ConfigError(
            f"trainer.resume=true cannot change what {run_dir} was trained with ({listed}{more}): resume with its "
            f"recorded config ({RECORD}) or start a new run directory; a resume may change only "
            f"{', '.join(RESUMABLE)}."
        )


def open_run(run_dir: Path, cfg: DictConfig, resume: bool, choices: Mapping[str, Any]) -> RunLock:
    """Claim `run_dir` for this run: lock it, refuse it if it holds an earlier run's record (unless resumed with a
    matching config and group `choices`), then write the record (first start) and remove what an interrupted write
    left. On a refusal nothing in the directory has changed."""
    check_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock.acquire(run_dir, resume)
    try:
        mark = holds_run(run_dir)
        if mark is not None and not resume:
            raise already_holds(run_dir, mark)
        if resume and mark is not None and (run_dir / RECORD).is_file():
            check_resume(run_dir, cfg, choices)
    except ConfigError:
        lock.release(refused=True)
        raise
    if mark is None:  # a new directory, or one a refused run left: this run's record
        write_record(run_dir, cfg)
    remove_partial_writes(run_dir)
    return lock


def update_record(run_dir: Path, cfg: DictConfig) -> None:
    """A resume about to train (its checkpoint read, everything built): the record now says what it trains with
    (the `RESUMABLE` keys it changed: how long, how it logs) and the overrides it was given (the report's labels).
    Not before: a resume that is refused, or finds nothing to do, changes no byte of the directory."""
    if not (run_dir / RECORD).is_file():
        return
    changes = {k: v for k, v in _changes(run_dir, cfg).items() if k != "trainer.resume"}
    for key, (old, new) in changes.items():
        log.info("resume changes %s from %r to %r", key, old, new)
    if changes:
        write_record(run_dir, cfg)


def write_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the run in `<run dir>/.hydra/`: the composed config, Hydra's own config and the
    command-line overrides (what `python -m distillab.report` and a resume read). The CLI sets
    `hydra.output_subdir=null` so that Hydra does not write it before the run directory was checked."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")
    OmegaConf.save(cfg, record / "config.yaml")  # last: its presence marks a complete record


def claim_fresh(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that this process creates itself (an exclusive mkdir)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"{base} and 9,999 siblings exist: give this run its own directory (hydra.run.dir=...).")


def hydra_value(text: str) -> str:
    """`text` as a value Hydra's override grammar reads back unchanged: as is when it is a plain path, else
    quoted (spaces, non-ASCII letters, quotes and the grammar's own characters need it)."""
    if re.fullmatch(r"[A-Za-z0-9_./~:@+-]+", text):
        return text
    from hydra.core.override_parser.types import Quote, QuotedString

    return QuotedString(text=text, quote=Quote.single).with_quotes()


def unwritable(where: object, error: OSError) -> str:
    """The sentence for a run directory the file system refuses (read-only, full, no permission)."""
    remedy = "give the run a writable place (paths.root=... or hydra.run.dir=...)."
    return f"cannot create {where}: {os_reason(error)}: {remedy}"


def _named_by_time(config: DictConfig, key: str) -> bool:
    """Whether the directory at `key` is named by the clock (`${now:...}`, as the defaults are) and not typed on
    the command line: one that two runs started in the same second would share. A directory a config file fixes
    (`hydra.sweep.dir: .../kd_study`) is used as set, like a typed one: rerunning it continues it."""
    if any(str(o).startswith(f"{key}=") for o in config.hydra.overrides.hydra):
        return False
    section, _, leaf = key.rpartition(".")
    raw = OmegaConf.to_container(OmegaConf.select(config, section), resolve=False)
    return isinstance(raw, dict) and "${now:" in str(raw.get(leaf))


class FreshRunDir(Callback):
    """Default run and sweep directories are named by the second they start in; two runs (a SLURM array, two
    terminals) started in the same second would share one. This claims the directory before Hydra uses it, and
    takes the next free name (`<time>-2`) if another run has it. A directory typed on the command line, or fixed
    by a config file, is used as set (the lock and the record decide whether the run may use it)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        """Claims a default directory; creates a typed one (as Hydra would next), so that a directory the file
        system refuses is one sentence before anything runs (Hydra would print its traceback)."""
        wanted = Path(str(OmegaConf.select(config, key)))
        try:
            if not _named_by_time(config, key):
                wanted.mkdir(parents=True, exist_ok=True)
                return
            claimed = claim_fresh(wanted)
        except OSError as error:  # read-only, full, no permission
            refuse(ConfigError(unwritable(error.filename or wanted, error)))
        with read_write(config.hydra), open_dict(config.hydra):
            OmegaConf.update(config, key, str(claimed))
            if key == "hydra.sweep.dir" and claimed != wanted:
                # each job's config is composed again from the sweep's hydra overrides (where `${now:...}` gives
                # the unclaimed name): the claimed one goes into them, so that the jobs write where the sweep does
                config.hydra.overrides.hydra.append(f"{key}={hydra_value(str(claimed))}")
