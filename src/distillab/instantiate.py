"""The one helper every `_target_` goes through, and the one place a constructor's complaint becomes one
sentence that names the config key."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
from omegaconf import DictConfig

from distillab import checks
from distillab.errors import ConfigError, InvalidArgument, config_being_built, config_key, first_line
from distillab.validate import interpolated_from

# The optional dependencies (pyproject.toml's extras) a target's package needs beyond `make run`'s install.
OPTIONAL = {"torchjd": "jd", "timm": "timm"}


def install_extra(extra: str) -> str:
    """How to install one of `OPTIONAL`'s extras, in a checkout and as a package."""
    return f"pip install -e '.[{extra}]' in a checkout, else 'distillab[{extra}]'"


def instantiate(node: Any, key: str | None = None, **kwargs: Any) -> Any:
    """Build an object from a config node with `_target_`; `key` is where the node sits (`loss.terms.kd`).

    Every construction from config goes through here, so a future allow-list of targets (Hydra 1.4
    warns without one) is added in one place, and so is naming the config key in what goes wrong: a target
    that cannot be imported, a key its signature does not take or a required one the node lacks (read from
    the signature before anything is built), and an `InvalidArgument` the constructor raises (`as_config_error`).
    """
    from hydra.errors import InstantiationException

    target = node.get("_target_") if isinstance(node, (DictConfig, Mapping)) else None
    if isinstance(target, str):
        check_arguments(locate(target, key or "the config"), node, key, kwargs)
        if node.get("_recursive_", True):  # a node inside (`data.augment`) is built first, under its own key
            for name in _arguments(node):
                inner = node[name]
                if name not in kwargs and isinstance(inner, (DictConfig, Mapping)) and "_target_" in inner:
                    kwargs[name] = instantiate(inner, f"{key}.{name}" if key else name)
    try:
        built = hydra.utils.instantiate(node, _convert_="all", **kwargs)
        checks.partial_keys(built)  # a `_partial_` node is called later: its keys are checked now
        return built
    except InstantiationException as error:
        raise as_config_error(error.__cause__ or error, node, key) from error
    except (TypeError, ValueError) as error:  # a node without _target_ among the arguments, say
        raise as_config_error(error, node, key) from error


def check_arguments(obj: Any, node: Any, key: str | None, given: Mapping[str, Any]) -> None:
    """A key of `node` that `obj`'s signature does not take (the nearest one it takes, and all of them), or a
    required argument neither `node` nor `given` supplies: one sentence. Nothing is said of a signature that
    takes `**kwargs` or cannot be read."""
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return
    where = config_key(key) if key else "the config"
    target = str(node.get("_target_"))
    typed = _arguments(node)

    def full(name: str) -> str:
        return config_key(f"{key}.{name}") if key else name

    named = [p.name for p in parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        for name in typed:
            if name not in named:
                # a `_partial_` node's required arguments are given when it is called (a projector's shapes)
                later = [p.name for p in parameters.values() if p.default is p.empty] if node.get("_partial_") else []
                valid = [n for n in named if n not in given and n not in later]
                near = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {full(near[0])}?)" if near else ""
                listed = f": valid keys are {', '.join(valid)}" if valid else ""
                raise ConfigError(f"{full(name)} is not an argument of {target}{hint}{listed}.")
    if node.get("_partial_") or "_args_" in node:
        return  # called later with the rest, or given positionally
    required = [
        p.name
        for p in parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    missing = [n for n in required if n not in typed and n not in given]
    if missing:
        raise ConfigError(
            f"{where} ({target}) needs {', '.join(full(n) for n in missing)}: add "
            f"{'them' if len(missing) > 1 else 'it'} to the config."
        )


def locate(target: str, key: str) -> Any:
    """The object a `_target_` names (`key`: where it sits, `loss.terms.mine`), imported as Hydra would but
    without Hydra's own error log: what cannot be imported is one `ConfigError`, said once. The reason comes
    from the exception's type and fields (`ModuleNotFoundError.name`), never from another library's message;
    a module Python cannot find gets the hint a class of one's own needs (its directory on PYTHONPATH, which
    --config-dir does not add)."""
    from importlib import import_module

    said = f"{config_key(f'{key}._target_')}={target!r}"  # (through `${projector}`: projector._target_)
    parts = target.split(".")
    if not all(parts):
        raise ConfigError(f"{said} is not a dotted path to a class or function: write module.Name.")
    obj: Any = None
    for i, part in enumerate(parts):
        name = ".".join(parts[: i + 1])
        if i and hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if i and not isinstance(obj, ModuleType):
            raise ConfigError(f"{said} cannot be imported: {'.'.join(parts[:i])} has no attribute {part!r}.")
        try:
            obj = import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a module it imports is missing: its own import failed
                raise ConfigError(f"{said} cannot be imported: importing {name} raised {_said(error)}.") from error
            if i == 0 and name in OPTIONAL:
                raise ConfigError(
                    f"{said} cannot be imported: {name} is not installed in this environment: "
                    f"{install_extra(OPTIONAL[name])}."
                ) from error
            if i == 0:
                raise ConfigError(
                    f"{said} cannot be imported: Python finds no module {name!r} (a module of your own must be on "
                    "Python's path: add the directory that holds it to PYTHONPATH, as in PYTHONPATH=DIR python -m "
                    "distillab ...; --config-dir adds config files, not Python modules)."
                ) from error
            near = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=1)
            raise ConfigError(
                f"{said} cannot be imported: {'.'.join(parts[:i])} has no {part!r}"
                f"{f' (did you mean {near[0]}?)' if near else ''}."
            ) from error
        except Exception as error:  # the module's own code raised while it was imported
            raise ConfigError(f"{said} cannot be imported: importing {name} raised {_said(error)}.") from error
    return obj


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


def _arguments(node: Any) -> list[str]:
    if isinstance(node, (DictConfig, Mapping)):
        return [str(k) for k in node if not str(k).startswith("_")]
    return []


def as_config_error(error: BaseException, node: Any, key: str | None) -> ConfigError:
    """One sentence naming `key` for what a constructor raised while a config built it: an `InvalidArgument`
    named under `key` (with the key it was interpolated from); anything else quoted as the constructor said it."""
    where = config_key(key) if key else "the config"
    target = str(node.get("_target_", "")) if isinstance(node, (DictConfig, Mapping)) else ""
    if isinstance(error, InvalidArgument):
        if not key:
            return error
        why = f" ({error.why})" if error.why else ""
        root = config_being_built()  # the source of an interpolated argument, looked up in the whole config
        source = interpolated_from(root, f"{key}.{error.argument}") if root is not None else ""
        full = config_key(f"{key}.{error.argument}")
        return ConfigError(f"{full}={error.value!r}{source} is not valid{why}: use {error.valid}.")
    if isinstance(error, ConfigError):
        return error
    said = f"{where} could not be built ({target or 'its constructor'} raised {type(error).__name__}: "
    if isinstance(error, OSError):  # a file it reads or downloads (urllib's URLError is an OSError): not its keys
        import torch.hub

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        return ConfigError(
            f"{said}{first_line(error).rstrip('.')}): a file it needs could not be read or downloaded; without "
            f"internet, put pretrained weights fetched through torch.hub in {hub} (TORCH_HOME moves it) or build "
            "it without them (weights=null, pretrained=false)."
        )
    if isinstance(error, ImportError):  # a package it imports when built (torchjd's solvers): not its keys
        extra = OPTIONAL.get(target.partition(".")[0])
        install = install_extra(extra) if extra else "install it"
        return ConfigError(
            f"{said}{first_line(error).rstrip('.')}): a package it needs is missing or cannot be imported in this "
            f"environment: {install}."
        )
    return ConfigError(f"{said}{first_line(error).rstrip('.')}): check its keys against {target or 'the class'}.")
