"""Where the configs live, the resolvers they use, composing, the names users type for the model group, and
what a run's Hydra record says (swept keys, job directory names, group choices). No torch. Checking a command
line before Hydra runs is `command_line`'s."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf, open_dict


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
    return job_name(task_overrides, sweep_values(sweep_dir, sweeper_params), job_number)


def job_name(task_overrides: Sequence[str], swept: dict[str, list[str]], job_number: int = 0) -> str:
    """`job_dirname` with the sweep's varied keys and values (`sweep_values`) already read: for naming every job
    of a sweep at once (`sweep_end`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = OverridesParser.create().parse_overrides(list(task_overrides))
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
    not write it). A single value is not varied: in the file, or on the command line replacing the file's axis, as
    Hydra's basic sweeper runs it (Optuna writes no `multirun.yaml`: there the command line is not read)."""
    params = dict(sweeper_params or {})
    typed = [f"{k}={v}" for k, v in params.items()]
    recorded = recorded_sweep(sweep_dir) if sweep_dir else None
    if recorded is not None:
        typed += recorded.task
    return {key: list(values) for key, values in varied_values(tuple(typed)).items()}


class RecordedSweep(NamedTuple):
    """What a sweep's `multirun.yaml` (written by Hydra's basic sweeper) says of the sweep."""

    sweeper: str  # the sweeper's _target_
    params: dict[str, Any]  # its `params` (a sweep file)
    task: tuple[str, ...]  # the command line's overrides


def recorded_sweep(sweep_dir: str | Path) -> RecordedSweep | None:
    """The sweep's `multirun.yaml`, or None where there is none."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    written = path.stat()
    return _read_multirun(str(path), written.st_mtime_ns, written.st_size)


@functools.lru_cache(maxsize=16)
def _read_multirun(path: str, mtime_ns: int, size: int) -> RecordedSweep:
    """Read once per version of the file: every job of a sweep names itself from it, and parsing the whole
    recorded config each time cost a sweep seconds."""
    hydra = OmegaConf.load(path).hydra
    sweeper = hydra.get("sweeper") or {}
    return RecordedSweep(
        str(sweeper.get("_target_", "")), dict(sweeper.get("params") or {}), tuple(hydra.overrides.task)
    )


@functools.lru_cache(maxsize=16)
def varied_values(typed: tuple[str, ...]) -> dict[str, list[str]]:
    """`sweep_values` of the overrides `typed` (cached: `sweep_values` hands out copies)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(typed)):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            values[key] = listed(override)
        else:  # one value (in a sweep file, or on the command line replacing the file's axis): not varied
            values.pop(key, None)
    return values


def listed(override: Any) -> list[str]:
    """The values a sweep override lists (`a=1,2`, `choice(...)`, `range(...)`), as strings; [] when they are
    drawn (`interval()`)."""
    try:
        return [str(v) for v in override.sweep_string_iterator()]
    except Exception:  # interval() and other sweeps whose values are drawn, not listed
        return []


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
    chosen = [a.lstrip("+~").split("=")[0] for a in args]
    if "experiment" in chosen:
        return []
    if any(key.startswith("experiment/") for key in chosen):  # experiments added from a folder of them
        return ["~experiment"]  # (`+experiment/cifar100/<pair>=glob(*)`): the default one is not what is asked
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


def group_packages(choices: Mapping[str, Any]) -> dict[str, str]:
    """Where each config group's choice sits in the config (`model.student`, `optim.scheduler`) -> the group as a
    user types it (`model/student`, `optim/scheduler`), from a composition's `hydra.runtime.choices`."""
    return {
        (k.split("@", 1)[1] if "@" in k else k.replace("/", ".")): shown_key(k)
        for k in choices
        if not k.startswith("hydra/")
    }


def shown_override(override: str) -> str:
    """An override as the user writes it: `model@model.student=mlp` -> `model/student=mlp`, `~model@model.teacher`
    -> `~model/teacher`; the rest unchanged."""
    key, equals, value = override.partition("=")
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return f"{prefix}{shown_key(key[len(prefix) :])}{equals}{value}"


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

    cfg = compose_at(config_dir(), config_name, canonical_overrides(overrides))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def is_group(dirs: Sequence[Path], name: str) -> bool:
    """Whether `name` (an override's key or group) is a config group: a folder of choices in one of `dirs`, or
    one of Hydra's own (`hydra/launcher`, which plugins provide)."""
    return name.startswith("hydra/") or any((d / name).is_dir() for d in dirs)


def compose_at(primary: Path, name: str, overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition of config `name` from directory `primary`, with Hydra's own node (`hydra.*`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=True)


# Override keys that say where a run writes and whether it continues, not what it trains: never part of a run's
# label (HParams, the report's groups), so a sweep continued with `trainer.resume=true` groups as before.
NOT_A_SETTING = ("hydra", "paths.", "trainer.resume")


def swept_keys() -> list[str]:
    """Keys set on the command line (or by a sweeper) for this job, e.g. `loss.alpha`, `weighting`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [
        shown_key(o.split("=", 1)[0].lstrip("+")) for o in HydraConfig.get().overrides.task if not o.startswith("~")
    ]
    return [k for k in keys if not k.startswith(NOT_A_SETTING)]


def in_sweep() -> bool:
    """This run is a job of a `--multirun`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_varied_values() -> dict[str, list[str]]:
    """The keys this job's sweep gives more than one value (as `swept_keys` names them), with those values where
    they can be listed (`sweep_values`): the command line's sweeps and the sweeper's `params`, the keys
    `job_dirname` names the job by. Empty outside a multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not in_sweep():
        return {}
    hydra = HydraConfig.get()
    return {shown_key(k): v for k, v in sweep_values(hydra.sweep.dir, hydra.sweeper.get("params")).items()}


def group_choices() -> dict[str, str]:
    """Which option of each config group the current run uses (`hydra.runtime.choices`), or {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {shown_key(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
