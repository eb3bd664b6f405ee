"""Where the configs live, the resolvers they use, composing, the choices a command line may name, and
what a run's Hydra record says (swept keys, group choices). No torch: config errors are reported before it loads."""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from distillab.errors import ConfigError, referred_key


def config_dir() -> Path:
    """The `conf/` directory: inside the installed wheel, or at the root of a source checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def job_dirname(
    task_overrides: Sequence[str],
    job_number: int = 0,
    sweep_dir: str | None = None,
    sweeper_params: Any = None,
) -> str:
    """A sweep job's directory name from its overrides: only the swept keys, short, the choices first.

    `--multirun loss=kd loss.temperature=2,4 loss.alpha=0.5,0.9 weighting=fixed,learnable` names its jobs
    `learnable,alpha=0.9,temperature=4`: keys that are the same in every job (`loss=kd`) are left out (swept
    keys are the sweeps on the command line, read from the sweep's `multirun.yaml`, and the sweeper's
    `params`: a sweep file, or Optuna's search space). TensorBoard's run list shows about 35 characters of a
    name, so what tells the runs apart comes first and is short:
    - group choices first (`weighting=fixed,learnable`, `model/student=...`: keys without a dot), by their
      value alone where no other swept choice shares a value (`learnable`; else `weighting=learnable`);
    - then the other keys, each by its last part (`loss.temperature` -> `temperature`) unless two swept keys
      share it (`loss.alpha` and `weighting.alpha` keep their full names); each part sorted by name.
    Characters other than letters, digits and `._=,+-` become `_`; very long names are cut and suffixed with
    a short hash.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = OverridesParser.create().parse_overrides(list(task_overrides))
    swept = sweep_values(sweep_dir, sweeper_params)
    named: dict[str, tuple[str, list[str]]] = {}  # key -> (value, every value the sweep gives it)
    for o in job:
        key = o.get_key_element().lstrip("+~")
        values = swept.get(key, swept.get(o.key_or_group))
        if swept and values is None:
            continue  # the same in every job of the sweep
        named[shown_key(key)] = (o.get_value_element_as_str(), values or [])
    choices = [k for k in named if "." not in k]
    taken = [v for k in choices for v in {named[k][0], *named[k][1]}]
    bare = len(taken) == len(set(taken))
    last = [re.split(r"[./]", k)[-1] for k in named]
    items: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for key, (value, values) in named.items():
        short = re.split(r"[./]", key)[-1]
        shown = short if last.count(short) == 1 else key.replace("/", ".")
        item = _safe(value) if key in choices and bare else f"{shown}={_safe(value)}"
        if any(other != value and _safe(other) == _safe(value) for other in values):
            item += f"-{hashlib.sha256(value.encode()).hexdigest()[:6]}"  # /a/d_1 and /a/d/1 both read _a_d_1
        (items if key in choices else rest).append((shown, item))
    name = ",".join(item for _, item in [*sorted(items), *sorted(rest)])
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name or f"job{job_number}"


def _safe(text: str) -> str:
    """Letters, digits and `._=,+-` as they are; anything else (a path's `/`, brackets, spaces) becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def sweep_values(sweep_dir: str | None, sweeper_params: Any) -> dict[str, list[str]]:
    """The keys a sweep varies, as typed, with the values they take where those can be listed (`[]` for
    `interval()`): the sweeper's `params` (a sweep file, Optuna's search space) and the command line's sweeps,
    read from the `multirun.yaml` Hydra's basic sweeper writes before it launches the jobs (other sweepers may
    not write it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = dict(sweeper_params or {})
    typed = [f"{k}={v}" for k, v in params.items()]
    recorded = Path(sweep_dir) / "multirun.yaml" if sweep_dir else None
    if recorded is not None and recorded.is_file():
        typed += list(OmegaConf.load(recorded).hydra.overrides.task)
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(typed):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            values[key] = _listed(override)
        elif key in params:
            values.setdefault(key, [])
    return values


def _listed(override: Any) -> list[str]:
    try:
        return [str(v) for v in override.sweep_string_iterator()]
    except Exception:  # interval() and other sweeps whose values are drawn, not listed
        return []


def duplicate_sweep_values(args: Sequence[str]) -> str | None:
    """A command-line sweep that lists a value twice (`trainer.seed=0,0`) would run one job twice into one
    directory: the sentence that refuses it, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in overrides_of(args) if "=" in a])
    except Exception:  # Hydra reports a malformed override itself
        return None
    for override in overrides:
        values = _listed(override) if override.is_sweep_override() else []
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            key = shown_key(override.get_key_element().lstrip("+~"))
            return (
                f"{key}={','.join(values)} lists {', '.join(repeated)} more than once: write each "
                "value once (every job of a sweep has its own values and its own directory)."
            )
    return None


# One `model` group serves both networks; these are the names users type (and see) for its two uses.
ALIASES = {"model/student": "model@model.student", "model/teacher": "model@model.teacher"}
_SHOWN = {v: k for k, v in ALIASES.items()}


def canonical_overrides(args: Sequence[str]) -> list[str]:
    """`model/student=resnet8x4` -> `model@model.student=resnet8x4` (also with `+`, `~` and sweeps); the rest as is.
    And `~experiment` (before the first override) when another choice leaves the default experiment out
    (`default_experiment_off`)."""
    out = []
    for arg in args:
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        key, sep, value = arg[len(prefix) :].partition("=")
        out.append(f"{prefix}{ALIASES.get(key, key)}{sep}{value}")
    off = default_experiment_off(out)
    if not off:
        return out
    # next to the other overrides (before the first), not before a flag: Hydra's parser wants them together
    first = next(i for i, a in enumerate(out) if "=" in a or a.startswith(("+", "~")))
    return [*out[:first], *off, *out[first:]]


def default_experiment_off(args: Sequence[str]) -> list[str]:
    """`["~experiment"]` when the command line chooses no experiment but another option of a group the default
    experiment is made for (its `experiment_for`: quickstart's is `{data: digits}`): `python -m distillab
    data=cifar10` runs the plain defaults on CIFAR-10 instead of being refused. Else `[]`."""
    if any(a.lstrip("+~").startswith("experiment") for a in args):
        return []
    made_for = _default_experiment_made_for()
    for arg in args:
        group, _, value = arg.lstrip("+").partition("=")
        if group in made_for and value != made_for[group]:
            return ["~experiment"]
    return []


def default_experiment_left_out(typed: Sequence[str]) -> str | None:
    """What the log says when `default_experiment_off` leaves the default experiment out of a command line."""
    if not default_experiment_off(typed):
        return None
    made_for = ", ".join(f"{k}={v}" for k, v in _default_experiment_made_for().items())
    return f"the default experiment is left out, as ~experiment would: it is made for {made_for}"


@functools.cache
def _default_experiment_made_for() -> dict[str, str]:
    """The `experiment_for` of the experiment config.yaml's defaults list chooses (read once per process)."""
    import yaml

    defaults = (yaml.safe_load((config_dir() / "config.yaml").read_text()) or {}).get("defaults", [])
    chosen = next((d["experiment"] for d in defaults if isinstance(d, dict) and "experiment" in d), None)
    path = config_dir() / "experiment" / f"{chosen}.yaml"
    if not chosen or not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("experiment_for") or {})


def shown_key(key: str) -> str:
    """`model@model.student` -> `model/student`: the name a user typed."""
    return _SHOWN.get(key, key)


def search_dirs(args: Sequence[str]) -> list[Path]:
    """The config directories a command line composes from: distillab's `conf/`, then `--config-dir` /
    `-cd` and `hydra.searchpath=[...]` entries (`file://`, `pkg://` or plain paths)."""
    dirs = [config_dir()]
    typed = _typed_flag(args, ("--config-dir", "-cd"))
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


def check_choices(args: Sequence[str]) -> None:
    """Refuse an unknown config-group choice on the command line (`loss=nope`) with one sentence that lists
    the valid ones, from distillab's configs and the user's (`--config-dir`, `hydra.searchpath`); every YAML
    file of the user's directories and every chosen file must parse. Hydra reports it too, but over several
    lines and after more work; this runs first, on the file system alone (hydra/* groups, which plugins
    provide, are left to Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs = search_dirs(args)
    for extra in dirs[1:]:
        if not extra.is_dir():
            raise ConfigError(
                f"config directory {extra} does not exist: give --config-dir (or hydra.searchpath) an existing "
                "directory."
            )
        for path in sorted(extra.rglob("*.yaml")):
            check_yaml(path)
    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in canonical_overrides(overrides_of(args)) if "=" in a]
        )
    except Exception:  # malformed override: Hydra's own message says where
        return
    for override in overrides:
        group = override.key_or_group
        shown = shown_key(override.get_key_element().lstrip("+~"))
        if override.is_delete() or group.startswith("hydra/") or not any((d / group).is_dir() for d in dirs):
            continue
        values = _listed(override) if override.is_sweep_override() else [override.get_value_element_as_str()]
        options = group_options(dirs, group)
        for value in values:
            if value == "null":
                raise ConfigError(f"{shown}=null cannot remove a config group: write ~{shown} instead.")
            if value not in options:
                near = difflib.get_close_matches(value, options, n=1)
                others = ", ".join(o for o in options if o not in near)
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


def register_resolvers() -> None:
    """Resolvers the YAML files use; safe to call more than once."""
    if not OmegaConf.has_resolver("one_minus"):
        # `ce: ${one_minus:${loss.alpha}}`: the task term gets what distillation does not.
        OmegaConf.register_new_resolver("one_minus", lambda x: 1.0 - float(x))
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config as the CLI would, without running anything (tests, notebooks, benchmarks).

    Like `@hydra.main`, it records the composition in `HydraConfig` (so `hydra.runtime.choices` says
    which option of each group was used). Hydra's run directory is not set outside `@hydra.main`:
    pass `paths.output_dir=...`.
    """
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose_at(config_dir(), config_name, canonical_overrides(overrides))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# Hydra's flags that take a value (the next argument, or `--flag=value`); its argparse parser reads them only
# before the overrides.
VALUED_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


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

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if _typed_flag(args, ("--config-path", "-cp")) is not None:
        return
    typed = canonical_overrides(overrides_of(args))
    try:
        overrides = OverridesParser.create().parse_overrides(typed)
    except Exception:  # malformed: check_syntax names it
        return
    dirs = search_dirs(args)
    fixed: list[str] = []
    swept: list[list[str]] = []  # each swept group's choices, as overrides
    keys, sweeps = [], []
    for override, text in zip(overrides, typed):
        group = override.key_or_group
        if override.is_delete() or override.is_add() or override.is_force_add():
            fixed.append(text)  # composed as typed: what it adds is there when the others are looked up
        elif group.startswith("hydra/") or any((d / group).is_dir() for d in dirs):
            if not override.is_sweep_override():
                fixed.append(text)
                continue
            sweeps.append(text)
            values = _listed(override)
            if not values:
                return  # glob(), interval(): which choices the jobs get is Hydra's to say
            swept.append([f"{override.get_key_element()}={v}" for v in values])
        else:
            keys.append(override.get_key_element())
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
            sentence = _missing_key(cfg, key)
            if sentence is not None:
                chosen = [shown_key(c.split("=")[0]) + "=" + c.split("=", 1)[1] for c in choices]
                when = f" (with {', '.join(chosen)}, one of the sweep's jobs)" if chosen else ""
                raise ConfigError(sentence.replace(": ", f"{when}: ", 1) if when else sentence)


def _composed(args: Sequence[str], dirs: Sequence[Path], overrides: Sequence[str]) -> DictConfig | None:
    """The config these overrides compose, with Hydra's own node (`hydra.*`), or None when it does not compose.
    The primary config is `--config-name` (default `config`) from the first config directory that holds it;
    the other directories are on Hydra's search path, as `--config-dir` puts them."""
    name = _typed_flag(args, ("--config-name", "-cn")) or "config"
    primary = next((d for d in reversed(dirs) if (d / f"{name}.yaml").is_file()), config_dir())
    others = [f"file://{d}" for d in dirs if d != primary]
    overrides = list(overrides)
    if others and not any(o.startswith("hydra.searchpath=") for o in overrides):
        overrides.append(f"hydra.searchpath=[{','.join(others)}]")
    try:
        return _compose_at(primary, name, overrides)
    except Exception:  # Hydra reports why it does not compose when it composes the run
        return None


def _compose_at(primary: Path, name: str, overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition of config `name` from directory `primary`, with Hydra's own node (`hydra.*`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=True)


def _typed_flag(args: Sequence[str], names: tuple[str, ...]) -> str | None:
    """The value of a flag such as `--config-name NAME` (or `--config-name=NAME`; the last one, as argparse
    reads it), or None."""
    found = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(tuple(f"{flag}=" for flag in names)):
            found = arg.partition("=")[2]
    return found


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


def swept_keys() -> list[str]:
    """Keys set on the command line (or by a sweeper) for this job, e.g. `loss.alpha`, `weighting`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [
        shown_key(o.split("=", 1)[0].lstrip("+")) for o in HydraConfig.get().overrides.task if not o.startswith("~")
    ]
    return [k for k in keys if not k.startswith(("hydra", "paths."))]


def sweep_varied_values() -> dict[str, list[str]]:
    """The keys this job's sweep gives more than one value (as `swept_keys` names them), with those values where
    they can be listed (`sweep_values`): the command line's sweeps and the sweeper's `params`, the keys
    `job_dirname` names the job by. Empty outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    return {shown_key(k): v for k, v in sweep_values(hydra.sweep.dir, hydra.sweeper.get("params")).items()}


def group_choices() -> dict[str, str]:
    """Which option of each config group the current run uses (`hydra.runtime.choices`), or {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {shown_key(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
