"""Checks on the composed config that run before anything is built or written (and before torch is imported).

Each rule is one row: the key, a predicate, and what would be valid. A failing rule raises a `ConfigError`
whose message is one sentence naming the key, its value (and the key it was interpolated from) and the
valid range. Checks that need the built objects live with them: each loss term, weighting and projector
validates its own arguments.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distillab.errors import ConfigError, config_key


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _path(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


# Keys no constructor reads (or whose bound is stricter than the constructor's: torch takes any lr >= 0). A
# constructor's own checks are not restated here: `trainer.max_epochs` is the Trainer's, `data.batch_size` the
# data's, `weighting.lr` the weighting's; they run before anything trains, named by `instantiate`.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("trainer.seed", lambda v: _integer(v) and 0 <= v < 2**32, "an integer >= 0 and < 2**32"),
    # Learning rates above 10 diverge with every optimizer distillab ships; lower ones are the user's call.
    ("optim.lr", lambda v: _number(v) and 0 < v <= 10, "a finite number > 0 and <= 10"),
    ("optim.weight_decay", lambda v: _number(v) and 0 <= v <= 1, "a finite number >= 0 and <= 1"),
    ("optim.momentum", lambda v: _number(v) and 0 <= v < 1, "a number >= 0 and < 1"),
    ("optim.warmup_epochs", lambda v: _number(v) and 0 <= v < math.inf, "a finite number of epochs >= 0 (0: off)"),
    ("optim.warmup_start_factor", lambda v: _number(v) and 0 < v <= 1, "a number > 0 and <= 1"),
    ("optim.grad_clip_norm", lambda v: _number(v) and 0 < v < math.inf, "a finite number > 0, or null (off)"),
    # CAGrad's c (torchjd): the paper's values are 0.2-0.8; far above, cvxpy's solver fails mid-training.
    ("weighting.aggregator.c", lambda v: _number(v) and 0 <= v <= 10, "a number >= 0 and <= 10"),
    # MGDA's Frank-Wolfe (torchjd reads them only when it runs, at the first step)
    ("weighting.aggregator.epsilon", lambda v: _number(v) and 0 < v < 1, "a number > 0 and < 1"),
    ("weighting.aggregator.max_iters", lambda v: _integer(v) and 1 <= v <= 10**6, "an integer >= 1 and <= 1000000"),
    ("teacher.max_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1 (the teacher's own epochs)"),
    ("teacher.seed", lambda v: _integer(v) and 0 <= v < 2**32, "an integer >= 0 and < 2**32"),
    ("teacher.select", lambda v: v in ("best", "last"), "best (the epoch with its best validation metric) or last"),
    ("teacher.cache_budget_mb", lambda v: _number(v) and 0 <= v < math.inf, "a finite number of megabytes >= 0"),
    ("teacher.train_if_missing", lambda v: isinstance(v, bool), "true or false"),
    ("teacher.source", lambda v: v in ("trained", "built"), "trained (a checkpoint, or trained and cached) or built"),
    ("teacher.wait_minutes", lambda v: _number(v) and 0 < v < math.inf, "a finite number of minutes > 0"),
    ("teacher.cache_outputs", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    (
        "teacher.checkpoint",
        lambda v: _path(v) or (isinstance(v, ListConfig) and all(map(_path, v))),
        "the path of a .pt file, a list of them (one per teacher), or null (train and cache it)",
    ),
    (
        "teachers",
        lambda v: isinstance(v, ListConfig) and len(v) > 0,
        "a list of model configs, or null (model.teacher alone)",
    ),
    ("trainer.progress", lambda v: isinstance(v, bool), "true, false or null (a bar only on a terminal)"),
    ("trainer.resume", lambda v: isinstance(v, bool), "true or false"),
    ("trainer.channels_last", lambda v: isinstance(v, bool), "true or false"),
    ("trainer.cuda_graph", lambda v: isinstance(v, bool), "true or false"),
    (
        "trainer.compile",
        lambda v: isinstance(v, bool) or (isinstance(v, str) and v.strip() != ""),
        "true, false or a torch.compile backend name such as aot_eager",
    ),
    ("optim.scheduler.factor", lambda v: _number(v) and 0 < v <= 1, "a number > 0 and <= 1"),
    ("optim.scheduler.total_iters", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("optim.scheduler.mode", lambda v: v in ("min", "max"), "min or max"),
    ("optim.scheduler.patience", lambda v: _integer(v) and v >= 0, "an integer number of epochs >= 0"),
    ("optim.scheduler.threshold", lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0"),
]

# Keys a constructor reads with a default of its own: without them (`~trainer.max_epochs`) a run would train with
# that default without a word, so they must be there (what values they take is the constructor's to check).
REQUIRED = (
    "trainer.max_epochs",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.grad_norm_every",
    "trainer.device",
    "data.batch_size",
)

_PATHS = ("paths.root", "paths.data_dir", "paths.cache_dir")

REFERENCE = re.compile(r"\$\{(?:[\w.-]+:)?([A-Za-z_][\w.]*)\}")
RESOLVER = re.compile(r"\$\{([\w.-]+):")  # the name of a resolver called: ${one_minus:...}


def interpolated_from(cfg: DictConfig, key: str) -> str:
    """` (from loss.alpha=1.5)` when the value at `key` is interpolated from other keys, else ``."""
    raw = raw_value(cfg, key)
    refs = list(dict.fromkeys(REFERENCE.findall(raw))) if isinstance(raw, str) else []
    shown = [f"{config_key(ref)}={OmegaConf.select(cfg, ref, default=None)!r}" for ref in refs]
    return f" (from {', '.join(shown)})" if shown else ""


def set_at(cfg: DictConfig, key: str, seen: tuple[str, ...] = ()) -> str:
    """The key a user sets for the value at `key`: the one key it is a plain copy of (`shallow_layers:
    ${loss.shallow_layers}` -> loss.shallow_layers, followed on), else `key` itself; named as the user sets it."""
    raw = raw_value(cfg, key)
    refs = REFERENCE.findall(raw) if isinstance(raw, str) else []
    if len(refs) == 1 and raw.strip() == f"${{{refs[0]}}}" and refs[0] not in seen:
        return set_at(cfg, refs[0], (*seen, key))
    return config_key(key)


def raw_value(cfg: DictConfig, key: str) -> Any:
    """The value at `key` with its interpolations unresolved (`${one_minus:${loss.alpha}}`), or None."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else None
    return raw.get(leaf) if isinstance(raw, dict) else None


def check_experiment_for(cfg: DictConfig) -> None:
    """An experiment may say which group choices it is made for (`experiment_for: {data: digits}`): with
    another one its settings would apply to data they were not chosen for, so the run is refused."""
    wanted = OmegaConf.select(cfg, "experiment_for", default=None)
    if not wanted:
        return
    from distillab.config import group_choices

    choices = group_choices()
    for group, choice in wanted.items():
        if group in choices and choices[group] != choice:
            experiment = choices.get("experiment", "the experiment")
            raise ConfigError(
                f"experiment={experiment} is made for {group}={choice}, not {group}={choices[group]}: add ~experiment "
                f"to run {group}={choices[group]} with its own settings, or choose an experiment made for it."
            )


def check_creatable(key: str, value: Any) -> None:
    """`value` is, or can be made, a directory: its nearest existing ancestor is a writable directory."""
    import os
    from pathlib import Path

    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} is not valid: use a directory path.")
    path = Path(value).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={value!r} cannot be a directory: {existing} is a file; use another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value!r} cannot be created: {existing} is not writable; use another path.")


# The nodes whose keys distillab's own code (or an interpolation) reads by name; every other node is either
# built by a `_target_`, whose constructor refuses an unknown key itself, or iterated (loss.terms, loss.weights).
_PLAIN_NODES = ("", "paths", "loss", "teacher")


def _references(node: Any) -> set[str]:
    """Every key some `${...}` interpolation in the config refers to."""
    found: set[str] = set()
    if isinstance(node, (dict, list)):
        for value in node.values() if isinstance(node, dict) else node:
            found |= _references(value)
    elif isinstance(node, str):
        found |= set(REFERENCE.findall(node))
    return found


def _leaves(node: Any, path: str) -> set[str]:
    """The dotted paths of every value under `node` (at `path`; a container as `to_container` gives it)."""
    if not isinstance(node, dict):
        return {path}
    return {leaf for k, v in node.items() for leaf in _leaves(v, f"{path}.{k!s}")}


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A key added on the command line (`+loss.temprature=4`) that nothing reads is a typo: refused, with the
    nearest existing key, instead of training silently without it. Hydra refuses a `+key` that exists, so an
    added key is new: under a plain node, only an interpolation can read it."""
    import difflib

    added = [o[1:].split("=", 1)[0] for o in overrides if o.startswith("+") and not o.startswith("++") and "=" in o]
    from distillab.config import config_dir, is_group

    # group additions (`+experiment=quickstart`, `+model@model.student=mlp`) are choices, checked by Hydra
    added = [k for k in added if not ("/" in k or "@" in k or k.startswith("hydra.") or is_group([config_dir()], k))]
    if not added:
        return
    raw: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    referenced = _references(raw)
    for key in added:
        if key in referenced or any(r.startswith(f"{key}.") for r in referenced):
            continue
        top = key.split(".")[0]
        if "." in key and _leaves(raw.get(top), top) <= set(added):
            key = top  # `+trainr.max_epochs=3`: a top-level node the command line made, whose name is the typo
        parent, _, leaf = key.rpartition(".")
        if parent not in _PLAIN_NODES:
            continue
        node = OmegaConf.select(cfg, parent) if parent else cfg
        existing = [str(k) for k in node if str(k) != leaf]
        near = difflib.get_close_matches(leaf, existing, n=1, cutoff=0.6)
        prefix = f"{parent}." if parent else ""
        hint = (
            f"did you mean {prefix}{near[0]}?"
            if near
            else f"the keys {'there' if parent else 'at the top level'} are {', '.join(sorted(existing))}."
        )
        raise ConfigError(f"+{key} adds a key that no part of the run reads: {hint}")


def check_resolves(cfg: DictConfig) -> None:
    """Every value has one (no `???`) and every `${...}` finds what it refers to."""
    from omegaconf.errors import (
        InterpolationKeyError,
        InterpolationToMissingValueError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        full_key = getattr(error, "full_key", None)
        key = config_key(full_key) if full_key else "a key"
        raw = raw_value(cfg, full_key) if full_key else None
        refs = REFERENCE.findall(raw) if isinstance(raw, str) else []
        missing = next((ref for ref in refs if OmegaConf.is_missing(cfg, ref)), None) if refs else None
        if isinstance(error, InterpolationToMissingValueError) and missing:
            raise ConfigError(
                f"{key} refers to {config_key(missing)}, which has no value: set {config_key(missing)}=..."
            ) from None
        if isinstance(error, MissingMandatoryValue):
            raise ConfigError(f"{key}=??? has no value: set {key}=... (a value is required).") from None
        broken = broken_reference(cfg, refs, (full_key,) if full_key else ())
        if broken is not None and broken[0] == "cycle":
            cycle = broken[1]
            shown = " -> ".join(config_key(k) for k in cycle)
            what = (
                "back to itself" if cycle[0] == full_key else f"to {config_key(cycle[0])}, which refers back to itself"
            )
            raise ConfigError(f"{key}={raw} refers {what} ({shown}): set one of them to a value.") from None
        if isinstance(error, InterpolationKeyError) and broken is not None:
            *via, absent = broken[1][1:] if full_key else broken[1]
            parent, _, leaf = absent.rpartition(".")
            node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else None
            near = difflib.get_close_matches(leaf, list(node) if isinstance(node, DictConfig) else [], 1)
            if near:
                fix = f"did you mean {config_key(f'{parent}.{near[0]}')}?"
            elif isinstance(node, DictConfig):  # e.g. a loss YAML of one's own without `weights:`
                fix = f"add {leaf}: to the YAML that builds {config_key(parent)}, or set {key} directly."
            else:
                fix = f"restore it, or set {key} directly."
            through = "".join(f" (through {config_key(v)}={raw_value(cfg, v)})" for v in via)
            raise ConfigError(
                f"{key}={raw} refers{through} to {config_key(absent)}, which this config does not have: {fix}"
            ) from None
        if isinstance(error, InterpolationKeyError):
            raise ConfigError(f"{key} refers to a key that does not exist ({raw}): restore it, or set {key}.") from None
        unknown = [name for name in RESOLVER.findall(str(raw)) if not OmegaConf.has_resolver(name)]
        if unknown:
            raise ConfigError(
                f"{key}={raw} uses ${{{unknown[0]}:...}}, and no resolver is named {unknown[0]}: distillab's are "
                "one_minus (1 - x), and OmegaConf's oc.env, oc.select and the other oc.* ones."
            ) from None
        raise ConfigError(f"{key} cannot be resolved ({raw}): fix the value or what it refers to.") from None
    check_finite(resolved)


def broken_reference(cfg: DictConfig, refs: list[str], through: tuple[str, ...] = ()) -> tuple[str, list[str]] | None:
    """Follow `refs` through keys that are themselves `${...}` to the first that breaks: ("absent", chain) for a key
    `cfg` does not have (`teacher.max_epochs=${trainer.max_epochs}` where `trainer.max_epochs=${trainer.epochs}`:
    [trainer.max_epochs, trainer.epochs]), ("cycle", chain) for one reached again (`a=${b}`, `b=${a}`: [a, b, a]).
    None when every key exists and none comes back."""
    for ref in refs:
        if ref in through:
            return "cycle", [*through[through.index(ref) :], ref]
        parent, _, leaf = ref.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            return "absent", [*through, ref]
        raw = raw_value(cfg, ref)
        if isinstance(raw, str) and (found := broken_reference(cfg, REFERENCE.findall(raw), (*through, ref))):
            return found
    return None


def check_finite(node: Any, path: str = "") -> None:
    """No number anywhere in a run's config is nan or inf: no key means anything by them."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_finite(value, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{config_key(path)}={node!r} is not valid: use a finite number.")


def check_alpha(cfg: DictConfig) -> None:
    """`loss.alpha` where the loss weighs (1 - alpha) * task + alpha * distillation: a number in [0, 1], named as
    the user set it (not as the task term's weight, which is made from it)."""
    if "one_minus:${loss.alpha}" not in str(raw_value(cfg, "loss.weights")):
        return
    alpha = OmegaConf.select(cfg, "loss.alpha", default=None, throw_on_resolution_failure=False)
    if alpha is not None and not (_number(alpha) and 0 <= alpha <= 1):
        raise ConfigError(
            f"{config_key('loss.alpha')}={alpha!r} is not valid: use a number >= 0 and <= 1 (the task term gets "
            "1 - alpha)."
        )


def validate(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Every check that needs only the composed config; `overrides`, the command line that composed it (the
    CLI passes Hydra's record), for the check of added keys."""
    check_alpha(cfg)  # before resolving: the task term's weight, 1 - alpha, would fail to resolve for alpha=abc
    check_resolves(cfg)
    check_experiment_for(cfg)
    check_added_keys(cfg, overrides)
    for key in _PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_creatable(key, value)
    for key in REQUIRED:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        if isinstance(node, DictConfig) and leaf not in list(node):
            raise ConfigError(f"{config_key(key)} is missing (removed with ~?): every run sets it; give it a value.")
    for key, ok, valid in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise ConfigError(f"{config_key(key)}={value!r}{interpolated_from(cfg, key)} is not valid: use {valid}.")
    warmup, epochs = OmegaConf.select(cfg, "optim.warmup_epochs"), OmegaConf.select(cfg, "trainer.max_epochs")
    if _number(warmup) and _integer(epochs) and warmup > epochs:
        raise ConfigError(
            f"{config_key('optim.warmup_epochs')}={warmup!r} is longer than the run "
            f"({config_key('trainer.max_epochs')}={epochs}): use at most "
            f"{epochs}."
        )
