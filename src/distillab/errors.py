"""The exceptions a user sees as one sentence: bad input (`ConfigError`), and a run that stopped (`RunStopped`)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, NoReturn


def first_line(error: BaseException) -> str:
    """What an exception says, as one line for a one-sentence message (its type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def os_reason(error: OSError) -> str:
    """What the operating system said, as the errno's meaning (`No space left on device`)."""
    return os.strerror(error.errno) if error.errno else first_line(error)


# Where the keys of the config being built came from, when that is not where the user set them: a teacher's own
# run reads `optim` from the user's `teacher.optim` (`teacher.training_config`). Empty for an ordinary run.
_KEY_SOURCES: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("distillab_key_sources", default=())


@contextlib.contextmanager
def keys_read_from(sources: Mapping[str, str]) -> Iterator[None]:
    """While a run built from a derived config is set up, each of its keys by the key the user set
    (`{"optim": "teacher.optim", "model.student": "model.teacher"}`): `config_key` names them so."""
    token = _KEY_SOURCES.set(tuple(sorted(sources.items(), key=lambda item: -len(item[0]))))  # longest first
    try:
        yield
    finally:
        _KEY_SOURCES.reset(token)


# The composed config being built (`building`), where a node can be another key's value.
_BUILDING: ContextVar[Any] = ContextVar("distillab_building", default=None)


@contextlib.contextmanager
def building(cfg: Any) -> Iterator[None]:
    """While the objects of `cfg` are built, a key inside a node that is another key's value
    (`loss.terms.fitnet.projector: ${projector}`) is named by the key the user sets (`projector.max_parameters`)."""
    token = _BUILDING.set(cfg)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def config_being_built() -> Any:
    """The composed config `building` was given (None outside it): where an interpolation's source is looked up."""
    return _BUILDING.get()


def referred_key(node: Any, name: str) -> str | None:
    """The key that `node.name` is a plain copy of (`${projector}` -> `projector`), else None."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig) or name not in list(node) or not OmegaConf.is_interpolation(node, name):
        return None
    raw: dict[str, Any] = OmegaConf.to_container(node, resolve=False)  # type: ignore[assignment]
    plain = re.fullmatch(r"\$\{([\w.]+)\}", str(raw[name]))
    return plain.group(1) if plain else None


def _through_interpolations(key: str, cfg: Any) -> str:
    """`key` with a leading part that is a plain interpolation (`${projector}`) replaced by what it refers to."""
    from omegaconf import DictConfig

    parts, node = key.split("."), cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in list(node):
            return key
        referred = referred_key(node, part)
        if referred is not None:
            return ".".join([referred, *parts[i + 1 :]])
        node = node[part]
    return key


def config_key(key: str) -> str:
    """`key` as the user set it: itself; or, inside a node that is another key's value, that key
    (`loss.terms.fitnet.projector.hidden` -> `projector.hidden`, while `building`); or in a teacher's own run the
    key it was read from (`optim.lr` -> `teacher.optim.lr`, `model.student` -> `model.teacher`). Every message
    that names a key of the config being built names it through here."""
    cfg = config_being_built()
    if cfg is not None:
        key = _through_interpolations(key, cfg)
    for own, source in _KEY_SOURCES.get():
        if key == own or key.startswith((f"{own}.", f"{own}[")):
            return source + key[len(own) :]
    return key


def config_choice(group: str) -> str:
    """A config group as a command line chooses it for the config being built: `optim/scheduler`, or in a
    teacher's run `optim/scheduler@teacher.optim.scheduler` (the package the teacher's choice is made at)."""
    dotted = group.replace("/", ".")
    source = config_key(dotted)
    return group if source == dotted else f"{group}@{source}"


def refuse(error: ConfigError) -> NoReturn:
    """A command refused before any run started: its one sentence on stderr, exit code 2 (a usage error)."""
    print(f"distillab: error: {error}", file=sys.stderr)
    sys.exit(2)


class ConfigError(ValueError):
    """A configuration, file or data problem found before training starts.

    The message names the offending key or file and what would be valid; the CLI prints it alone,
    without a traceback. metrics.json says `refused` (nothing trained: the corrected command may use the directory).
    """

    status = "refused"


class RunStopped(RuntimeError):
    """Training ended early on purpose, with its state saved; the message says what happened and what next.

    The CLI prints the message alone and exits with `exit_code`; metrics.json gets `status`.
    """

    status = "failed"
    exit_code = 1

    def __init__(self, message: str, every_rank: bool = False) -> None:
        super().__init__(message)
        self.every_rank = every_rank  # the training loop stopped at a step every DDP rank stops at (they agree on it)


class NonFiniteLoss(RunStopped):
    """The total loss became NaN or Inf (`trainer.nan_policy=stop`)."""


class CaptureFailed(RunStopped):
    """`trainer.cuda_graph=true`, and the training step could not be captured as a CUDA graph (or replayed as one).
    The run stops rather than going on eagerly: a failed capture can leave the CUDA random generator and memory
    pool in states an eager step should not inherit."""


class Interrupted(RunStopped):
    """SIGTERM or SIGINT arrived: the current step finished and a checkpoint was written."""

    status = "interrupted"

    def __init__(self, message: str, signum: int, every_rank: bool = False) -> None:
        super().__init__(message, every_rank)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class InvalidArgument(ConfigError):
    """The one error a constructor, `setup` or `bind_models` raises for an argument it refuses.

    `argument` is the argument's path inside the object (`temperature`, `stages[0].until`, `projector.hidden`),
    never a config key: whoever built the object knows where it sits in the config and prefixes that
    (`distillab.instantiate.instantiate(node, key)`, `build.naming`), so the same class is named right
    under `loss.terms.kd`, `teacher.loss.terms.kd` or in a notebook. `why` says what is wrong when the value
    alone does not (`it pairs 2 student layers with 3 teacher layers`); `valid` what would be valid.
    """

    def __init__(self, argument: str, value: object, valid: str, why: str = "") -> None:
        self.argument, self.value, self.valid, self.why = argument, value, valid, why
        super().__init__(f"{argument}={value!r} is not valid{f' ({why})' if why else ''}: use {valid}.")

    def named(self, prefix: str) -> InvalidArgument:
        """The same refusal with `prefix` before the argument (`loss.terms.kd` + `temperature`), the whole key as
        the user set it (`config_key`)."""
        named = InvalidArgument(config_key(f"{prefix}.{self.argument}"), self.value, self.valid, self.why)
        named.__cause__ = self
        return named


class TeacherInterrupted(Interrupted):
    """SIGTERM or SIGINT arrived while a teacher was being trained for the cache: nothing of it is kept
    (a teacher is trained whole), so rerunning the same command trains it again."""


class SetupFailed(ConfigError):
    """Something other than a checked value went wrong while the run was being set up (before its first
    training step): a constructor, a file, a library. One sentence says what was being done and what was
    raised; the traceback goes to the run's log file."""

    def __init__(self, doing: str, error: BaseException, log_file: str) -> None:
        detail = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
        super().__init__(f"{doing} failed before training ({detail}): the traceback is in {log_file}.")


class WriteFailed(RunStopped):
    """The operating system refused a file operation during the run (disk full, read-only, permissions): the file
    and the reason, in one sentence. The file's previous version, if any, is kept (writes are atomic)."""

    def __init__(self, path: object, error: OSError, doing: str = "writing") -> None:
        super().__init__(
            f"{doing} {path} failed ({os_reason(error)}): free some space, or make its folder writable, and resume"
        )
        self.path, self.errno = path, error.errno
