"""A command line, checked before Hydra runs and before torch loads: its flags and overrides, the config
directories it composes from, and each override's syntax, group choice and key. Read from structure (Hydra's
own parser, the config folders, the config composed with the typed choices), never from Hydra's messages.

`cli.main` calls `check_syntax`, `check_choices`, `check_keys` and `duplicate_sweep_values` in that order; each
refuses with one `ConfigError` sentence and leaves what it cannot decide to Hydra, which reports it in its own
words."""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distillab.config import (
    ALIASES,
    canonical_overrides,
    compose_at,
    config_dir,
    group_packages,
    is_group,
    listed,
    shown_key,
    shown_override,
)
from distillab.errors import ConfigError, referred_key

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override


def parsed(overrides: Sequence[str]) -> list[Override] | None:
    """Hydra's reading of `overrides` (`key=value`, sweeps, `+`, `~`), or None when one is malformed
    (`check_syntax` names it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return None


# Hydra's flags that take a value (the next argument, or `--flag=value`); its argparse parser reads them only
# before the overrides.
VALUED_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def flags_first(args: list[str]) -> list[str]:
    """`loss=kd --config-dir DIR` as `--config-dir DIR loss=kd`: the order users type is the order Hydra reads."""
    flags, rest = config_flags(args)
    return [*flags, *rest]


_TYPED: list[str] = []  # this process's command line as typed, flags first (`cli.main` records it)


def record_typed(args: Sequence[str]) -> None:
    _TYPED[:] = args


def typed() -> list[str]:
    """This process's command line as typed (flags first): what "run the same command again" starts from."""
    return list(_TYPED)


def distillab_command(args: Sequence[str], launcher: Sequence[str] = ("python", "-m", "distillab")) -> str:
    """A command line to print for the user (resume, continue a sweep, try next), quoted for a POSIX shell: the
    `launcher`, the flags that said where this process's configs came from (`--config-dir` for a loss of one's
    own: without it the printed command would refuse `loss=...` as not a choice), then `args`."""
    return shlex.join([*launcher, *config_flags(_TYPED)[0], *args])


def config_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The flags that say where the configs are (`--config-dir DIR`, `--config-name=NAME`, ...) with their values,
    and the rest of `args`, each in the order typed."""
    flags: list[str] = []
    rest: list[str] = []
    pending = False
    for arg in args:
        if pending:
            flags.append(arg)
            pending = False
        elif arg in VALUED_FLAGS:
            flags.append(arg)
            pending = True
        elif arg.startswith(tuple(f"{f}=" for f in VALUED_FLAGS)):
            flags.append(arg)
        else:
            rest.append(arg)
    return flags, rest


def overrides_of(args: Sequence[str]) -> list[str]:
    """The overrides of a command line (`key=value`, `+key=...`, `~key`): not its flags, nor a flag's value
    (`--config-dir runs/alpha=0.9`)."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUED_FLAGS:
            skip = True
        elif not arg.startswith("-") and ("=" in arg or arg.startswith("~")):
            found.append(arg)
    return found


def flag_value(args: Sequence[str], names: tuple[str, ...]) -> str | None:
    """The value of a flag such as `--config-name NAME` (or `--config-name=NAME`; the last one, as argparse
    reads it), or None."""
    found = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(tuple(f"{flag}=" for flag in names)):
            found = arg.partition("=")[2]
    return found


def set_twice(args: list[str]) -> dict[str, list[str]]:
    """Keys the command line sets more than once (Hydra keeps the last value without a word)."""
    values: dict[str, list[str]] = {}
    for arg in overrides_of(args):
        if "=" in arg:
            key, _, value = arg.lstrip("+").partition("=")
            values.setdefault(key, []).append(value)
    return {key: typed for key, typed in values.items() if len(typed) > 1}


def last_of_each(overrides: Sequence[str]) -> list[str]:
    """`overrides` with a key set more than once in the same way given once, at its last value (the one Hydra
    kept): for the commands printed to the user. `+key=1 key=2` (add, then set) keeps both."""
    last = {o.partition("=")[0]: i for i, o in enumerate(overrides) if "=" in o}
    return [o for i, o in enumerate(overrides) if "=" not in o or last[o.partition("=")[0]] == i]


def search_dirs(args: Sequence[str]) -> list[Path]:
    """The config directories a command line composes from: distillab's `conf/`, then `--config-dir` /
    `-cd` and `hydra.searchpath=[...]` entries (`file://`, `pkg://` or plain paths)."""
    dirs = [config_dir()]
    typed = flag_value(args, ("--config-dir", "-cd"))
    if typed is not None:
        dirs.append(Path(typed))
    for arg in overrides_of(args):
        if arg.lstrip("+").startswith("hydra.searchpath="):
            for entry in re.findall(r"[^\[\],\s'\"]+", arg.split("=", 1)[1]):
                dirs.append(_search_path_dir(entry))
    return [d.expanduser().resolve() for d in dirs]


def _search_path_dir(entry: str) -> Path:
    if entry.startswith("pkg://"):
        import importlib.util

        package, _, rest = entry[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        base = (
            Path(next(iter(spec.submodule_search_locations)))
            if spec and spec.submodule_search_locations
            else Path(package)
        )
        return base / rest
    return Path(entry.removeprefix("file://"))


def group_options(dirs: Sequence[Path], group: str) -> list[str]:
    """A group's choices in any of `dirs`; for `experiment`, those in its sub-folders too
    (`experiment=cifar100/resnet32x4_resnet8x4/kd`). (Other groups' sub-folders are groups of their own,
    such as `optim/scheduler`.)"""
    options: set[str] = set()
    for folder in (d / group for d in dirs):
        if not folder.is_dir():
            continue
        pattern = "**/*.yaml" if group.split("/")[0] == "experiment" else "*.yaml"
        options |= {p.relative_to(folder).with_suffix("").as_posix() for p in folder.glob(pattern)}
    return sorted(options)


def check_yaml(path: Path) -> None:
    """An empty or unparsable YAML file is one sentence naming the file (and the line of a syntax error)."""
    import yaml

    try:
        text = path.read_text()
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where} is not valid YAML ({problem}): fix the file.") from None
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror}).") from None
    if loaded is None and not re.search(r"^\s*#\s*@package", text, re.M):
        raise ConfigError(f"{path} is empty: a config file holds at least one key (or delete it).")


_MAX_LISTED = 40  # choices a refusal lists; a group with more (the experiments) lists those of the typed folder


def _listable(options: list[str], value: str) -> list[str]:
    """The choices a refusal of `value` lists: all of them; or, where there are more than `_MAX_LISTED` (the
    experiments), those in the folder `value` names (`cifar100/resnet32x4_shufflenetv2/ab`: that pair's methods) and
    a count of the rest, or for a name without a folder the top-level choices and the folders (`cifar100/...`)."""
    if len(options) <= _MAX_LISTED:
        return options
    folder = value.rpartition("/")[0]
    if not folder:
        return [o for o in options if "/" not in o] + sorted({f"{o.split('/')[0]}/..." for o in options if "/" in o})
    inside = [o for o in options if o.rpartition("/")[0] == folder][:_MAX_LISTED]
    if not inside:  # a folder that does not exist (a mistyped pair): the folders beside it
        top = folder.split("/")[0]
        return sorted({f"{o.rpartition('/')[0]}/..." for o in options if o.startswith(f"{top}/")}) or options
    return [*inside, f"... ({len(options) - len(inside)} more in other folders)"]


def check_syntax(args: Sequence[str]) -> None:
    """Refuse an override Hydra's grammar cannot read, naming it (Hydra's parser says why, but not which
    override; its reason follows as Hydra words it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in overrides_of(args):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as error:
            raise ConfigError(f"{arg} is not a valid override; Hydra's parser says:\n{error.message}") from None


def check_choices(args: Sequence[str]) -> None:
    """Refuse an unknown config-group choice on the command line (`loss=nope`) with one sentence that lists
    the valid ones, from distillab's configs and the user's (`--config-dir`, `hydra.searchpath`); every YAML
    file of the user's directories and every chosen file must parse. Hydra reports it too, but over several
    lines and after more work; this runs first, on the file system alone (hydra/* groups, which plugins
    provide, are left to Hydra)."""
    dirs = search_dirs(args)
    for extra in dirs[1:]:
        if not extra.is_dir():
            raise ConfigError(
                f"config directory {extra} does not exist: give --config-dir (or hydra.searchpath) an existing "
                "directory."
            )
        for path in sorted(extra.rglob("*.yaml")):
            check_yaml(path)
    for override in parsed(canonical_overrides(overrides_of(args))) or []:  # (malformed: check_syntax names it)
        group = override.key_or_group
        shown = shown_key(override.get_key_element().lstrip("+~"))
        if override.is_delete() or group.startswith("hydra/") or not is_group(dirs, group):
            continue
        values = listed(override) if override.is_sweep_override() else [override.get_value_element_as_str()]
        options = group_options(dirs, group)
        for value in values:
            if value == "null":
                raise ConfigError(f"{shown}=null cannot remove a config group: write ~{shown} instead.")
            if value not in options:
                near = difflib.get_close_matches(value, options, n=1)
                others = ", ".join(o for o in _listable(options, value) if o not in near)
                hint = (
                    f"use one of {others}."
                    if not near
                    else f"did you mean {shown}={near[0]}, or one of {others}?"
                    if others
                    else f"did you mean {shown}={near[0]}?"
                )
                raise ConfigError(f"{shown}={value} is not a choice of {shown}: {hint}")
            for d in dirs:
                if (d / group / f"{value}.yaml").is_file():
                    check_yaml(d / group / f"{value}.yaml")


_MAX_COMPOSED = 16  # the combinations of a sweep's group choices check_keys composes (each about 0.1 s)


def check_keys(args: Sequence[str]) -> None:
    """Refuse a command line that sets a key the config does not have (`loss.temprature=8`) with one sentence
    naming the nearest existing key, or the keys that level has (Hydra would say "Could not override" and
    where, without a suggestion); and a sweep (`a=1,2`) in a run that is not a multirun (`--multirun`, or an
    experiment that sets `hydra.mode: MULTIRUN`). Read from structure, not from Hydra's message: the config is
    composed with the command line's group choices (each combination a sweep's group choices make, up to 16)
    and every key it sets is looked up in it, Hydra's own `hydra.*` keys included. Overrides that add (`+`),
    force (`++`) or delete (`~`) keys are left to Hydra and to `validate`; so is anything this composition
    cannot decide (a sweep over `glob()` choices, `--config-path`, a config that does not compose): Hydra
    reports those in its own words."""
    import itertools

    from hydra.types import RunMode

    if flag_value(args, ("--config-path", "-cp")) is not None:
        return
    typed = canonical_overrides(overrides_of(args))
    overrides = parsed(typed)
    if overrides is None:  # malformed: check_syntax names it
        return
    dirs = search_dirs(args)
    fixed: list[str] = []
    swept: list[list[str]] = []  # each swept group's choices, as overrides
    keys, sweeps = [], []
    set_to: dict[str, list[Any]] = {}  # what each key is set to (a sweep: each value)
    for override, text in zip(overrides, typed):
        group = override.key_or_group
        if override.is_delete() or override.is_add() or override.is_force_add():
            fixed.append(text)  # composed as typed: what it adds is there when the others are looked up
        elif is_group(dirs, group):
            if not override.is_sweep_override():
                fixed.append(text)
                continue
            sweeps.append(text)
            values = listed(override)
            if not values:
                return  # glob(), interval(): which choices the jobs get is Hydra's to say
            swept.append([f"{override.get_key_element()}={v}" for v in values])
        else:
            keys.append(override.get_key_element())
            set_to[keys[-1]] = listed(override) if override.is_sweep_override() else [override.value()]
            if override.is_sweep_override():
                sweeps.append(text)
    typed_multirun = any(a in ("-m", "--multirun") for a in args) or "hydra.mode=MULTIRUN" in typed
    if not keys and (not sweeps or typed_multirun):
        return
    # one composition tells whether an experiment makes it a multirun; the keys are looked up in every one
    combinations = list(itertools.islice(itertools.product(*swept), _MAX_COMPOSED if keys else 1))
    for n, choices in enumerate(combinations):
        cfg = _composed(args, dirs, [*fixed, *choices])
        if cfg is None:
            return  # Hydra says why it does not compose
        multirun = typed_multirun or cfg.hydra.mode == RunMode.MULTIRUN  # (an experiment's `hydra.mode: MULTIRUN`)
        if n == 0 and sweeps and not multirun:
            key, _, value = sweeps[0].partition("=")
            raise ConfigError(
                f"{sweeps[0]} is ambiguous: write {key}=[{value}] for a list, {key}='{value}' for a string, or add "
                "--multirun to sweep over the values."
            )
        for key in keys:
            meant = _group_meant(cfg, key, set_to[key], dirs)
            if meant is not None:  # (whatever the sweep's job: the key is not one to set to a name)
                raise ConfigError(meant)
            sentence = _missing_key(cfg, key)
            if sentence is not None:
                chosen = [shown_override(c) for c in choices]
                when = f" (with {', '.join(chosen)}, one of the sweep's jobs)" if chosen else ""
                raise ConfigError(sentence.replace(": ", f"{when}: ", 1) if when else sentence)


def _composed(args: Sequence[str], dirs: Sequence[Path], overrides: Sequence[str]) -> DictConfig | None:
    """The config these overrides compose, with Hydra's own node (`hydra.*`), or None when it does not compose.
    The primary config is `--config-name` (default `config`) from the first config directory that holds it;
    the other directories are on Hydra's search path, as `--config-dir` puts them."""
    name = flag_value(args, ("--config-name", "-cn")) or "config"
    primary = next((d for d in reversed(dirs) if (d / f"{name}.yaml").is_file()), config_dir())
    others = [f"file://{d}" for d in dirs if d != primary]
    overrides = list(overrides)
    if others and not any(o.startswith("hydra.searchpath=") for o in overrides):
        overrides.append(f"hydra.searchpath=[{','.join(others)}]")
    try:
        return compose_at(primary, name, overrides)
    except Exception:  # Hydra reports why it does not compose when it composes the run
        return None


def _group_meant(cfg: DictConfig, key: str, values: Sequence[Any], dirs: Sequence[Path]) -> str | None:
    """The sentence for a key set to `values` (one, or a sweep's) that was meant as a config group's choice:
    `model.student=mlp` (a dot where the group takes a slash: it would put the value where the student's config
    belongs; `model.student=1` too), `model/studnt=mlp` (a group misspelt), `student=mlp` (a group's last part), or a
    name where a node of keys is (`teacher=resnet8`); None otherwise. An interpolation (`${optim}`: another key's
    config) is a config, and null is none (`optim.scheduler=null`: no scheduler)."""
    packages = group_packages(cfg.hydra.runtime.choices)
    groups = sorted(set(packages.values()))
    typed = [v for v in values if v is not None and not isinstance(v, (dict, list)) and "${" not in str(v)]
    value = typed[0] if typed else None  # a name (or a number) typed where a config belongs
    as_typed = str(value).lower() if isinstance(value, bool) else str(value)  # (true, as Hydra's grammar reads it)
    shown = f"the string {value!r}" if isinstance(value, str) else as_typed
    if key in packages:
        if value is None:
            return None
        group = packages[key]
        options = group_options(dirs, ALIASES.get(group, group).split("@")[0])  # (model/student: the model folder)
        name = as_typed if as_typed in options or not options else f"NAME ({', '.join(options)})"
        return (
            f"{key}={as_typed} would put {shown} where a config of the {group} group belongs: to choose one, write "
            f"{group}={name}."
        )
    if "/" in key or "@" in key:
        near = difflib.get_close_matches(key, groups, n=1)
        listing = f"did you mean {near[0]}?" if near else f"the groups are {', '.join(groups)}."
        return f"{key} is not a config group: {listing}"
    named = [g for g in groups if "/" in g and g.rsplit("/", 1)[1] == key]
    if named and key not in cfg:
        return f"{key} is not a key of the config: to choose a {key} config, write {named[0]}=..."
    node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
    if isinstance(node, DictConfig) and isinstance(value, str):  # `teacher=resnet8`: a whole node made a string
        choose = f"; to choose a {key} config, write {named[0]}={value}" if named else ""
        return f"{key}={value} would replace the node {key} with {shown}: set its keys ({key}.x=...){choose}."
    return None


def _missing_key(cfg: DictConfig, key: str) -> str | None:
    """The sentence for `key`, which `cfg` lacks (the nearest key, or the keys its deepest existing level has);
    None when `cfg` has it."""
    node: Any = cfg
    parts, known_path = key.split("."), list[str]()
    while parts:
        held = isinstance(node, DictConfig) and parts[0] in list(node)  # (`in node` says no to a `???` value)
        if held and len(parts) > 1 and OmegaConf.is_interpolation(node, parts[0]):
            where, rest = ".".join([*known_path, parts[0]]), ".".join(parts[1:])
            referred = referred_key(node, parts[0])  # `${projector}`: another key's value, as it is
            fix = f"set {referred}.{rest} instead" if referred else "set the keys its value is made from"
            return f"{key} cannot be set: {where} is another key's value; {fix}."
        if held or (isinstance(node, ListConfig) and parts[0].isdigit() and int(parts[0]) < len(node)):
            node = OmegaConf.select(node, parts[0], throw_on_missing=False, throw_on_resolution_failure=False)
        else:
            break
        known_path.append(parts.pop(0))
    if not parts:
        return None
    where = ".".join(known_path) or "the config"
    if isinstance(node, ListConfig):
        return f"{key} is not a key: {where} is a list of {len(node)} (index it from 0)."
    if not isinstance(node, DictConfig):
        return f"{key} is not a key: {where} is a single value."
    if not OmegaConf.is_struct(node):
        return None  # an open mapping takes new keys
    keys = [
        str(k) for k in node if not str(k).startswith("_") and (known_path or k != "hydra" or key.startswith("hydra"))
    ]
    if not keys:
        return f"{key} is not a key: {where} has none (add one with +{key}=...)."
    near = difflib.get_close_matches(parts[0], keys, n=1)
    if not near:
        return f"{key} is not a key of {where}: {where} has {', '.join(keys)}."
    fixed = ".".join([*known_path, near[0], *parts[1:]])
    if _missing_key(node, ".".join([near[0], *parts[1:]])) is None:
        return f"{key} is not a key of {where}: did you mean {fixed}?"
    nearest = ".".join([*known_path, near[0]])
    return f"{key} is not a key of {where}: did you mean {nearest} (which has no {'.'.join(parts[1:])} either)?"


def duplicate_sweep_values(args: Sequence[str]) -> str | None:
    """A command-line sweep that lists a value twice (`trainer.seed=0,0`) would run one job twice into one
    directory: the sentence that refuses it, or None."""
    for override in parsed(overrides_of(args)) or []:  # (malformed: check_syntax names it)
        values = listed(override) if override.is_sweep_override() else []
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            key = shown_key(override.get_key_element().lstrip("+~"))
            return (
                f"{key}={','.join(values)} lists {', '.join(repeated)} more than once: write each "
                "value once (every job of a sweep has its own values and its own directory)."
            )
    return None
