"""Where the configs live, the resolvers they use, and the one helper every `_target_` goes through."""

from __future__ import annotations

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


def register_resolvers() -> None:
    """Resolvers the YAML files use; safe to call more than once."""
    if not OmegaConf.has_resolver("one_minus"):
        # `ce: ${one_minus:${loss.alpha}}`: the task term gets what distillation does not.
        OmegaConf.register_new_resolver("one_minus", lambda x: 1.0 - float(x))


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


def group_choices() -> dict[str, str]:
    """Which option of each config group the current run uses (`hydra.runtime.choices`), or {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
