"""Checkpoints: written atomically, read as data only (`weights_only=True`, never arbitrary pickles)."""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillab.errors import ConfigError, first_line
from distillab.files import write_atomic


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """`torch.save` into memory, then written through `files.write_atomic`: a crash mid-write leaves the old file
    intact. (torch's own file writer reports a full disk as a RuntimeError without its errno; Python's write
    raises the OSError that names it, which becomes one sentence.)"""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, lambda handle: handle.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load tensors, numbers, strings and containers of them; refuse anything that would run code."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"Checkpoint {path} {what}: give the path of a .pt file written by distillab or torch.save.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path)  # classes or functions the weights-only unpickler would have to import
        if unsafe:
            raise ConfigError(
                f"Checkpoint {path} holds pickled Python objects ({', '.join(unsafe[:3])}), which distillab refuses "
                "to load (they could run code): save plain state_dicts of tensors instead."
            ) from error
        raise _unreadable(path, error) from error
    except Exception as error:  # zip errors, EOF, a text file read as a legacy pickle (KeyError), ...
        raise _unreadable(path, error) from error
    if not isinstance(state, dict):
        raise ConfigError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict of state: save a state_dict.")
    return state


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint at all
        return []


def _unreadable(path: Path, error: Exception) -> ConfigError:
    detail = f"{type(error).__name__}: {first_line(error).rstrip('.')}"
    if isinstance(error, pickle.UnpicklingError):
        detail = "not a torch checkpoint"
    return ConfigError(
        f"Checkpoint {path} is not a readable torch checkpoint (truncated or another format: {detail}): give a file "
        "written by torch.save."
    )


def rng_state() -> dict[str, Any]:
    """Random-number-generator states of python, numpy and torch, as tensors and plain numbers."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": (version, torch.tensor(python_state, dtype=torch.int64), gauss),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
