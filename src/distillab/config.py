"""Where the configs live, the resolvers they use, and the one helper every `_target_` goes through."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from distillab.errors import ConfigError


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
    """A sweep job's directory name from its overrides: only the swept keys, readable, filesystem-safe.

    `--multirun loss=kd loss.temperature=2,4 weighting=fixed,learnable` names its jobs
    `loss.temperature=4,weighting=learnable`: keys that are the same in every job (`loss=kd`) are left
    out. Swept keys are the sweeps on the command line (read from the sweep's `multirun.yaml`) and the
    sweeper's `params` (a sweep file, or Optuna's search space). `model/student=deep_nn` becomes `model.student=deep_nn`
    (no nested folders); characters other than letters, digits and `._=,+-` become `_`; very long names
    are cut and suffixed with a short hash.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = OverridesParser.create().parse_overrides(list(task_overrides))
    swept = set(sweeper_params or {}) | (command_line_sweeps(Path(sweep_dir)) if sweep_dir else set())
    items = sorted(
        f"{o.key_or_group.replace('/', '.')}={o.get_value_element_as_str()}"
        for o in job
        if not swept or o.key_or_group in swept
    )
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(items))
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name or f"job{job_number}"


def command_line_sweeps(sweep_dir: Path) -> set[str]:
    """Keys swept on the command line (`loss.alpha=0.5,0.9`, `range(...)`) of the sweep in `sweep_dir`.

    Read from the `multirun.yaml` Hydra's basic sweeper writes before it launches the jobs; empty when
    the file is not there (other sweepers).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    recorded = sweep_dir / "multirun.yaml"
    if not recorded.is_file():
        return set()
    overrides = OverridesParser.create().parse_overrides(list(OmegaConf.load(recorded).hydra.overrides.task))
    return {o.key_or_group for o in overrides if o.is_sweep_override()}


def group_options(loader: Any, group: str) -> list[str]:
    """A group's choices; for `experiment`, those in its sub-folders too (`experiment=cifar100/resnet32x4_resnet8x4/kd`).
    (Other groups' sub-folders are groups of their own, such as `optim/scheduler`.)"""
    options = list(loader.get_group_options(group))
    for sub in loader.list_groups(group) if group.split("/")[0] == "experiment" else []:
        options += [f"{sub}/{option}" for option in group_options(loader, f"{group}/{sub}")]
    return options


def check_choices(args: Sequence[str]) -> None:
    """Refuse an unknown config-group choice on the command line (`loss=nope`) with one sentence
    that lists the valid ones. Hydra reports it too, but over several lines; this runs first."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # malformed override: Hydra's own message says where
        return
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for override in overrides:
            group = override.key_or_group
            if override.is_delete() or not loader.repository.group_exists(group):
                continue
            try:
                values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
            except Exception:  # range()/interval() sweeps are not choices of a group
                continue
            options = group_options(loader, group)
            for value in values:
                if value == "null":
                    raise ConfigError(f"{group}=null cannot remove a config group: write ~{group} instead.")
                if value not in options:
                    hint = ' (Hydra\'s launcher and sweeper plugins come with pip install -e ".[launchers,optuna]")' if group.startswith("hydra/") else ""
                    raise ConfigError(f"{group}={value} is not a choice of {group}: use one of {', '.join(options)}{hint}.")


def register_resolvers() -> None:
    """Resolvers the YAML files use; safe to call more than once."""
    if not OmegaConf.has_resolver("one_minus"):
        # `ce: ${one_minus:${loss.alpha}}`: the task term gets what distillation does not.
        OmegaConf.register_new_resolver("one_minus", lambda x: 1.0 - float(x))
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def instantiate(node: Any, **kwargs: Any) -> Any:
    """Build an object from a config node with `_target_`.

    Every construction from config goes through here, so a future allow-list of targets (Hydra 1.4
    warns without one) is added in one place.
    """
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):  # our own one-sentence message, not Hydra's wrapping
            raise error.__cause__ from None
        raise


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config as the CLI would, without running anything (tests, notebooks, benchmarks).

    Like `@hydra.main`, it records the composition in `HydraConfig` (so `hydra.runtime.choices` says
    which option of each group was used). Hydra's run directory is not set outside `@hydra.main`:
    pass `paths.output_dir=...`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def swept_keys() -> list[str]:
    """Keys set on the command line (or by a sweeper) for this job, e.g. `loss.alpha`, `weighting`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return [k for k in keys if not k.startswith(("hydra", "paths."))]


def group_choices() -> dict[str, str]:
    """Which option of each config group the current run uses (`hydra.runtime.choices`), or {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
