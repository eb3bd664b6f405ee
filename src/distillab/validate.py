"""Checks on the composed config that run before anything is built or written.

Each rule is one row: the key, a predicate, and what would be valid. A failing rule raises a
`ConfigError` whose message is one sentence naming the key, its value and the valid range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillab.errors import ConfigError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("loss.temperature", lambda v: _number(v) and v > 0, "a number > 0"),
    ("loss.alpha", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("trainer.max_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("trainer.seed", _integer, "an integer"),
    ("trainer.log_every", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("optim.lr", lambda v: _number(v) and v > 0, "a number > 0"),
]


def validate(cfg: DictConfig) -> None:
    for key, ok, valid in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r} is not valid: use {valid}.")
    weights = OmegaConf.select(cfg, "loss.weights", default={}) or {}
    for name, value in weights.items():
        if not _number(value) or value < 0:
            raise ConfigError(f"loss.weights.{name}={value!r} is not valid: use a number >= 0.")
