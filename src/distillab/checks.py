"""Argument checks for constructors that config reaches: each raises `InvalidArgument` with what would be
valid, and `distillab.instantiate.instantiate` names the config key. No torch here (validation imports it early)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distillab.errors import InvalidArgument


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """A finite number within the given bounds (exclusive `above`/`below`, inclusive `at_least`/`at_most`)."""
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        bounds = [
            f"> {above:g}" if above is not None else "",
            f">= {at_least:g}" if at_least is not None else "",
            f"< {below:g}" if below is not None else "",
            f"<= {at_most:g}" if at_most is not None else "",
        ]
        shown = " and ".join(b for b in bounds if b)
        raise InvalidArgument(name, value, f"a finite number {shown}".rstrip())
    return float(value)


def integer(name: str, value: Any, *, at_least: int | None = None, at_most: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    if not ok:
        bounds = " and ".join(
            b
            for b in (f">= {at_least}" if at_least is not None else "", f"<= {at_most}" if at_most is not None else "")
            if b
        )
        raise InvalidArgument(name, value, f"an integer {bounds}".rstrip())
    return int(value)


def choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise InvalidArgument(
            name,
            value,
            " or ".join(map(str, choices))
            if len(choices) < 3
            else ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}",
        )
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(name, value, "true or false")
    return value


def sizes(**values: Any) -> None:
    """Sizes of a network (`num_classes`, `in_channels`, `image_size`, widths): integers >= 1."""
    for name, value in values.items():
        integer(name, value, at_least=1)


def factory(name: str, value: Any, valid: str) -> Any:
    """Something to call later (a `_partial_: true` config such as a projector), whose keys are checked now."""
    if not callable(value):
        raise InvalidArgument(name, value, valid)
    partial_keys(value, f"{name}.")
    return value


def augment(value: Any) -> Any:
    """A data module's `augment`: None or a batch transform (`+data.augment.padding=2` alone makes a dict)."""
    if value is not None:
        factory(
            "augment",
            value,
            "null or a choice of the data/augment group, whose keys are then set: "
            "data/augment=crop_flip data.augment.padding=2",
        )
    return value


def partial_keys(value: Any, prefix: str = "") -> None:
    """A `functools.partial` from a `_partial_: true` node is called later (projectors with the shapes of a
    dry run, Nash-MTL with the number of terms): a key its target does not take is refused now."""
    import functools
    import inspect

    if not isinstance(value, functools.partial):
        return
    parameters = inspect.signature(value.func).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for key in value.keywords:
        if key not in parameters and not takes_any:
            named = [p for p in parameters if p not in ("self", "in_shape", "out_shape")]
            raise InvalidArgument(
                f"{prefix}{key}", value.keywords[key], f"one of the keys of {value.func.__name__}: {', '.join(named)}"
            )


def seed(name: str, value: Any) -> int:
    """A random seed: numpy's and scikit-learn's range, [0, 2**32)."""
    return integer(name, value, at_least=0, at_most=2**32 - 1)


def optional_path(name: str, value: Any) -> str | None:
    """null, or a non-empty path string."""
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise InvalidArgument(name, value, "a directory path, or null")
    return value


def temperature(name: str, value: Any) -> float:
    """A softmax temperature: > 0 and at most 100. Above that, the KL of the softened distributions is a
    difference of nearly equal float32 numbers times T^2: rounding noise of ~1e-7 becomes ~1e-3 or more,
    and the value can come out negative."""
    return number(name, value, above=0, at_most=100)
