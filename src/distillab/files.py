"""Files written so that a reader never sees half of one: a temporary file beside the target, renamed over it;
and the leftovers of a process killed mid-write removed. No torch, no Hydra (the report imports it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from distillab.errors import WriteFailed

log = logging.getLogger("distillab")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write` into a temporary file beside `path` (`.<name>.<pid>.tmp`, which `remove_partial_writes` clears
    when a process dies mid-write), flushed to disk, then renamed over `path`: a reader sees the old file or the
    new one, never half of one. What the OS refuses (disk full, read-only) is `WriteFailed`; the old file stays."""
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # the OS refused, the writer failed, or a signal: no partial file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise WriteFailed(path, error) from error
        raise


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """`.<name>.<pid>.tmp` files beside checkpoints and metrics.json are what an atomic write killed
    mid-way leaves; they are never checkpoints. Removed by the next run or resume in the directory."""
    leftovers = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.glob(".*.tmp")]
    for path in leftovers:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    return leftovers
