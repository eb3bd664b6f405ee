"""The one helper every `_target_` goes through, and the one place a constructor's complaint becomes one
sentence that names the config key."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import hydra
from omegaconf import DictConfig

from distillab import checks
from distillab.errors import ConfigError, InvalidArgument, first_line
from distillab.validate import interpolated_from


def instantiate(node: Any, key: str | None = None, **kwargs: Any) -> Any:
    """Build an object from a config node with `_target_`; `key` is where the node sits (`loss.terms.kd`).

    Every construction from config goes through here, so a future allow-list of targets (Hydra 1.4
    warns without one) is added in one place, and so is turning a constructor's complaint into one
    sentence that names the config key (`as_config_error`).
    """
    from hydra.errors import InstantiationException

    target = node.get("_target_") if isinstance(node, (DictConfig, Mapping)) else None
    if isinstance(target, str):
        locate(target, key or "the config")  # one sentence if it cannot be imported, before Hydra tries
    try:
        built = hydra.utils.instantiate(node, _convert_="all", **kwargs)
        checks.partial_keys(built)  # a `_partial_` node is called later: its keys are checked now
        return built
    except InstantiationException as error:
        cause = error.__cause__ or error
        nested = _nested_key(error, node)
        if isinstance(cause, InvalidArgument) and nested:  # refused by a node inside this one (data.augment)
            cause = cause.named(nested)
        raise as_config_error(cause, node, key) from error
    except (TypeError, ValueError) as error:  # a node without _target_ among the arguments, say
        raise as_config_error(error, node, key) from error


def locate(target: str, key: str) -> Any:
    """The object a `_target_` names (`key`: where it sits, `loss.terms.mine`), imported as Hydra would but
    without Hydra's own error log: what cannot be imported is one `ConfigError`, said once. The reason comes
    from the exception's type and fields (`ModuleNotFoundError.name`), never from another library's message;
    a module Python cannot find gets the hint a class of one's own needs (its directory on PYTHONPATH, which
    --config-dir does not add)."""
    from importlib import import_module

    said = f"{key}._target_={target!r}"
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


def _nested_key(error: BaseException, node: Any) -> str:
    """Where, inside `node`, the object Hydra failed to build sits (`augment` when `data.augment` refused an
    argument while `data` was built; empty for `node` itself), from Hydra's `full_key: ...` line."""
    found = re.search(r"^full_key: (\S+)$", str(error), re.MULTILINE)
    if not found:
        return ""
    own = node._get_full_key(None) if isinstance(node, DictConfig) else ""
    full = found.group(1)
    if not own:
        return full
    return full[len(own) + 1 :] if full.startswith(f"{own}.") else ""


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


# How constructors (torch's among them) name an argument in their messages, beyond the argument's own name.
_SPELLED_OUT = {"lr": ("learning rate",), "betas": ("beta",), "eps": ("epsilon",)}


def _arguments(node: Any) -> list[str]:
    if isinstance(node, (DictConfig, Mapping)):
        return [str(k) for k in node if not str(k).startswith("_")]
    return []


def as_config_error(error: BaseException, node: Any, key: str | None) -> ConfigError:
    """One sentence naming `key` (and the argument) for what a constructor raised while a config built it."""
    where = key or "the config"
    target = str(node.get("_target_", "")) if isinstance(node, (DictConfig, Mapping)) else ""
    if isinstance(error, InvalidArgument):
        full = f"{key}.{error.argument}" if key else error.argument
        source = interpolated_from(_root(node), full) if key and isinstance(node, DictConfig) else ""
        why = f" ({error.why})" if error.why else ""
        return ConfigError(f"{full}={error.value!r}{source} is not valid{why}: use {error.valid}.")
    if isinstance(error, ConfigError):
        return error
    message = first_line(error)
    arguments = _arguments(node)
    if isinstance(error, TypeError):
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
        if unexpected:
            name = unexpected.group(1)
            near = difflib.get_close_matches(name, _signature_arguments(target) or arguments, n=1)
            hint = (
                f" (did you mean {key}.{near[0]}?)" if near and key else f" (did you mean {near[0]}?)" if near else ""
            )
            valid = _signature_arguments(target)
            listed = f": valid keys are {', '.join(valid)}" if valid else ""
            return ConfigError(f"{key}.{name} is not an argument of {target or 'this object'}{hint}{listed}.")
        missing = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", message)
        if missing:
            names = re.findall(r"'(\w+)'", missing.group(1))
            return ConfigError(
                f"{where} ({target}) needs {', '.join(f'{where}.{n}' for n in names)}: add "
                f"{'them' if len(names) > 1 else 'it'} to the config."
            )
    if isinstance(error, (ImportError, AttributeError)) or "Error locating target" in message:
        return ConfigError(
            f"{where}._target_={target!r} cannot be imported ({message}): give an importable class or function."
        )
    lowered = message.lower()
    for name in arguments:
        spellings = (name, name.replace("_", " "), *_SPELLED_OUT.get(name, ()))
        if any(re.search(rf"\b{re.escape(s.lower())}\b", lowered) for s in spellings):
            value = node[name] if isinstance(node, (DictConfig, Mapping)) else None
            full = f"{key}.{name}" if key else name
            said = message.rstrip(".")  # the sentence's own full stop follows
            return ConfigError(f"{full}={value!r} is not valid: {target or 'the constructor'} says: {said}.")
    return ConfigError(
        f"{where} could not be built ({target}: {type(error).__name__}: {message}): check its keys against "
        f"{target or 'the class'}."
    )


def _signature_arguments(target: str) -> list[str]:
    """The keyword arguments `target` takes (empty when it cannot be imported or inspected)."""
    if not target:
        return []
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        parameters = inspect.signature(obj).parameters.values()
    except Exception:
        return []
    return [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in ("self", "params", "optimizer", "in_shape", "out_shape")
    ]


def _root(node: Any) -> Any:
    """The root config of `node` (for interpolation sources), or the node itself."""
    while isinstance(node, DictConfig) and node._get_parent() is not None:
        node = node._get_parent()
    return node
