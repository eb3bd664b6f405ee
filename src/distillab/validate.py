"""Checks on the composed config that run before anything is built or written (and before torch is imported).

Each rule is one row: the key, a predicate, and what would be valid. A failing rule raises a `ConfigError`
whose message is one sentence naming the key, its value (and the key it was interpolated from) and the
valid range. Checks that need the built objects live with them: each loss term, weighting and projector
validates its own arguments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillab.errors import ConfigError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("trainer.max_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("trainer.seed", _integer, "an integer"),
    ("trainer.log_every", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("optim.lr", lambda v: _number(v) and 0 < v < math.inf, "a finite number > 0"),
]

_REFERENCE = re.compile(r"\$\{(?:[\w.-]+:)?([A-Za-z_][\w.]*)\}")


def interpolated_from(cfg: DictConfig, key: str) -> str:
    """` (from loss.alpha=1.5)` when the value at `key` is interpolated from other keys, else ``."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    raw = node._get_node(leaf)._value() if isinstance(node, DictConfig) and leaf in node else None  # type: ignore[union-attr]
    refs = list(dict.fromkeys(_REFERENCE.findall(raw))) if isinstance(raw, str) else []
    shown = [f"{ref}={OmegaConf.select(cfg, ref, default=None)!r}" for ref in refs]
    return f" (from {', '.join(shown)})" if shown else ""


def check_weights(weights: Mapping[str, Any], describe: Callable[[str], str] = lambda name: "") -> None:
    """Each weight is a finite number >= 0 (the one place this is checked)."""
    for name, value in weights.items():
        if not _number(value) or not 0 <= value < math.inf:
            raise ConfigError(f"loss.weights.{name}={value!r}{describe(name)} is not valid: use a finite number >= 0.")


def validate(cfg: DictConfig) -> None:
    for key, ok, valid in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r}{interpolated_from(cfg, key)} is not valid: use {valid}.")
    weights = OmegaConf.select(cfg, "loss.weights", default={}) or {}
    check_weights(weights, lambda name: interpolated_from(cfg, f"loss.weights.{name}"))
