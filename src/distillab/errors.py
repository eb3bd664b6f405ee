"""The exceptions a user sees as one sentence: bad input (`ConfigError`), and a run that stopped (`RunStopped`)."""

import os


def first_line(error: BaseException) -> str:
    """What an exception says, as one line for a one-sentence message (its type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def os_reason(error: OSError) -> str:
    """What the operating system said, as the errno's meaning (`No space left on device`)."""
    return os.strerror(error.errno) if error.errno else first_line(error)


class ConfigError(ValueError):
    """A configuration, file or data problem found before training starts.

    The message names the offending key or file and what would be valid; the CLI prints it alone,
    without a traceback.
    """


class RunStopped(RuntimeError):
    """Training ended early on purpose, with its state saved; the message says what happened and what next.

    The CLI prints the message alone and exits with `exit_code`; metrics.json gets `status`.
    """

    status = "failed"
    exit_code = 1


class NonFiniteLoss(RunStopped):
    """The total loss became NaN or Inf (`trainer.nan_policy=stop`)."""


class Interrupted(RunStopped):
    """SIGTERM or SIGINT arrived: the current step finished and a checkpoint was written."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class InvalidArgument(ConfigError):
    """A constructor rejected one of its arguments. `distillab.config.instantiate` names the config key
    (`loss.terms.kd.temperature=0 (from loss.temperature=0) is not valid: use ...`); raised from code that
    is not built from config, the message names the argument alone."""

    def __init__(self, argument: str, value: object, valid: str) -> None:
        self.argument, self.value, self.valid = argument, value, valid
        super().__init__(f"{argument}={value!r} is not valid: use {valid}.")


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
