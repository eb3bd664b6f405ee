"""Capture intermediate outputs of any `nn.Module` by dotted module path, with forward hooks.

No model class is changed or copied: `features.3` of the tutorial's DeepNN or `layer3.1` of a ResNet is
read off the module tree as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from distillab.errors import ConfigError


def check_paths(model: nn.Module, paths: Iterable[str], key: str) -> None:
    """Fail with one sentence listing nearby valid paths when a module path does not exist."""
    valid = [name for name, _ in model.named_modules() if name]
    for path in paths:
        if path not in valid:
            near = difflib.get_close_matches(path, valid, n=8, cutoff=0.3) or valid[:12]
            raise ConfigError(
                f"{key}={path!r} is not a module of {type(model).__name__}: valid paths include {', '.join(near)}."
            )


class FeatureTaps:
    """Forward hooks that keep the latest output of each named submodule until `pop()`.

    `paths`: module paths, or a mapping of each path to the config key that asked for it (named when
    the path does not exist: the one place module paths are checked)."""

    def __init__(self, model: nn.Module, paths: Mapping[str, str] | Iterable[str], key: str = "feature tap") -> None:
        keys = dict(paths) if isinstance(paths, Mapping) else dict.fromkeys(paths, key)
        for path, asked_by in keys.items():
            check_paths(model, [path], asked_by)
        self.paths = list(keys)
        modules = dict(model.named_modules())
        self._features: dict[str, Tensor] = {}
        self._handles = [modules[p].register_forward_hook(self._keeper(p)) for p in self.paths]

    def _keeper(self, path: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._features[path] = output

        return hook

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; the taps then hold nothing (no stale graph kept alive)."""
        features, self._features = self._features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
