"""Capture intermediate outputs of any `nn.Module` by dotted module path, with forward hooks.

No model class is changed or copied: `features.3` of the tutorial's DeepNN or `layer3.1` of a ResNet is
read off the module tree as it is. A tap is `<module path>` (its output), `<module path>:input` (its first
input), either followed by a transform of token models' (B, N, C) tensors: `:map` (the leading class and
register tokens dropped, the N - k^2 before a square grid of k x k patches, then a (B, C, k, k) map, which
feature terms read like a CNN's) or `:drop_cls` (the first token dropped). So a ViT's `blocks.3:map` is
FitNets-ready, and `head:input` is the pooled embedding that reaches the classifier.

A module may name tensors of its own for taps, in a `tap_aliases` attribute: {name: tap relative to the module}.
The CIFAR residual blocks say `{"preact": "relu_out:input"}`, so `layer1.0.preact` reads the residual sum before
the block's last ReLU (the input of `relu_out`) without a module added only to be tapped. A tap whose module path
is not a module is looked up there, by the module that owns its last part (`layer1.0` for `layer1.0.preact`; the
model itself for a top-level `preact`); the tap's own transform applies after, and `:input` on an alias reads the
same tensor (as the input and output of the identity modules aliases replaced). Features are keyed by the tap as
written.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from torch import Tensor, nn

from distillab.errors import ConfigError, InvalidArgument


def tokens_to_map(x: Tensor) -> Tensor:
    """(B, N, C) tokens -> (B, C, k, k): the last k^2 tokens (k = floor(sqrt(N))) laid out row by row, as a ViT's
    patch grid; the N - k^2 leading ones (class, distillation and register tokens) are dropped. Square grids
    only: a 14 x 16 grid plus a class token (225 = 15^2 tokens) would be read as 15 x 15."""
    if x.dim() != 3:
        raise ConfigError(f"a ':map' tap reads (batch, tokens, channels) tensors, not one of shape {tuple(x.shape)}.")
    side = math.isqrt(x.shape[1])
    return x[:, x.shape[1] - side * side :].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def drop_class_token(x: Tensor) -> Tensor:
    if x.dim() != 3:
        raise ConfigError(
            f"a ':drop_cls' tap reads (batch, tokens, channels) tensors, not one of shape {tuple(x.shape)}."
        )
    return x[:, 1:]


TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {"map": tokens_to_map, "drop_cls": drop_class_token}


class Tap(NamedTuple):
    """A parsed tap: the module's path, whether its input (else its output) is read, and a transform's name."""

    module: str
    input: bool
    transform: str | None

    @staticmethod
    def parse(spec: str, key: str) -> Tap:
        module, *parts = spec.split(":")
        transforms = [p for p in parts if p in TRANSFORMS]
        if any(p not in ("input", *TRANSFORMS) for p in parts) or len(transforms) > 1 or parts.count("input") > 1:
            raise ConfigError(
                f"{key}={spec!r} is not a tap: use a module path, then optionally ':input' (its input instead of its "
                f"output) and one of {', '.join(':' + t for t in TRANSFORMS)}, e.g. blocks.3:map or head:input."
            )
        return Tap(module, "input" in parts, transforms[0] if transforms else None)


def aliases(model: nn.Module) -> dict[str, str]:
    """Every tap alias of `model`'s modules by its full path, with the tap it stands for (full path too):
    `{"layer1.0.preact": "layer1.0.relu_out:input", ...}`; a module of that name, where there is one, wins."""
    modules = dict(model.named_modules())
    found = {}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for alias, target in getattr(module, "tap_aliases", {}).items():
            if prefix + alias not in modules:
                found[prefix + alias] = prefix + target
    return found


def near_paths(model: nn.Module, path: str, also: Iterable[str] = ()) -> str:
    """Module paths of `model` (and the names in `also`) near `path`, then its top-level layers (where one looks
    for a layer to tap), listed for a path it does not have."""
    also = list(also)
    valid = [name for name, _ in model.named_modules() if name] + also
    near = difflib.get_close_matches(path, valid, n=4, cutoff=0.6)
    top = [name for name, _ in model.named_children()] + [a for a in also if "." not in a]
    return ", ".join(list(dict.fromkeys([*near, *top]))[:12])


def submodule(model: nn.Module, path: str, argument: str, valid: str) -> nn.Module:
    """The module at `path` in `model` (a term's or weighting's module-path argument); a path it lacks is refused
    as `argument` (`valid`: what the path should name), with the paths near it."""
    modules = dict(model.named_modules())
    if not path or path not in modules:
        raise InvalidArgument(argument, path, f"{valid}, such as {near_paths(model, path)}")
    return modules[path]


def check_paths(model: nn.Module, paths: Iterable[str], key: str, also: Iterable[str] = ()) -> None:
    """Fail with one sentence listing nearby valid paths when a module path does not exist (`also`: other names
    that are valid, a model's tap aliases)."""
    also = list(also)
    valid = {name for name, _ in model.named_modules() if name} | set(also)
    for path in paths:
        module = path.split(":")[0]  # a tap's module (`Tap`), named as the user wrote the tap
        if module not in valid:
            raise ConfigError(
                f"{key}={path!r} is not a module of {type(model).__name__}: valid paths include "
                f"{near_paths(model, module, also)}."
            )


class FeatureTaps:
    """Forward hooks that keep the latest output (or input: `Tap`) of each named submodule until `pop()`.

    `paths`: module paths, or a mapping of each path to the config key that asked for it (named when
    the path does not exist: the one place module paths are checked)."""

    def __init__(self, model: nn.Module, paths: Mapping[str, str] | Iterable[str], key: str = "feature tap") -> None:
        keys = dict(paths) if isinstance(paths, Mapping) else dict.fromkeys(paths, key)
        named = aliases(model)
        taps = {path: Tap.parse(path, asked_by) for path, asked_by in keys.items()}
        for path, asked_by in keys.items():
            check_paths(model, [path], asked_by, named)
            if taps[path].module in named:  # an alias: the tap it stands for, then this tap's own transform
                where = f"{type(model).__name__}.tap_aliases"
                check_paths(model, [named[taps[path].module]], where)
                target = Tap.parse(named[taps[path].module], where)
                taps[path] = Tap(target.module, target.input, taps[path].transform)
        self.paths = list(keys)
        modules = dict(model.named_modules())
        self._features: dict[str, Tensor] = {}
        self._handles = [
            modules[tap.module].register_forward_pre_hook(self._input_keeper(path, tap))
            if tap.input
            else modules[tap.module].register_forward_hook(self._output_keeper(path, tap))
            for path, tap in taps.items()
        ]

    def _output_keeper(self, path: str, tap: Tap) -> Callable[[nn.Module, tuple, Tensor], None]:
        transform = TRANSFORMS[tap.transform] if tap.transform is not None else None  # looked up once, not per call

        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._features[path] = output if transform is None else transform(output)

        return hook

    def _input_keeper(self, path: str, tap: Tap) -> Callable[[nn.Module, tuple], None]:
        transform = TRANSFORMS[tap.transform] if tap.transform is not None else None

        def hook(module: nn.Module, inputs: tuple) -> None:
            self._features[path] = inputs[0] if transform is None else transform(inputs[0])

        return hook

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; the taps then hold nothing (no stale graph kept alive)."""
        features, self._features = self._features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
