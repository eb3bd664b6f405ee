"""Every choice of every config group composes and builds: a new YAML file is tested with no new test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distillab.config import compose, config_dir
from distillab.errors import ConfigError
from distillab.instantiate import instantiate
from distillab.optim import build_optimization

CONF = config_dir()


def all_choices() -> list[tuple[str, str]]:
    """(group, option) for every YAML file under conf/ except the primary config; experiments may sit in
    folders of their own (`experiment=cifar100/resnet32x4_resnet8x4/kd`)."""
    choices = []
    for path in CONF.rglob("*.yaml"):
        relative = path.relative_to(CONF).with_suffix("")
        if len(relative.parts) < 2:
            continue
        if relative.parts[0] == "experiment":
            choices.append(("experiment", "/".join(relative.parts[1:])))
        elif relative.parts[0] == "hydra" and relative.parts[1] == "job_logging":
            continue  # Hydra's logging config, not a group a user picks
        else:
            choices.append((str(relative.parent), relative.name))
    return sorted(choices)


def _student(cfg):
    return instantiate(cfg.model.student)


def build_choice(group: str, cfg):
    """Instantiate what the group's node describes, the way the trainer would use it."""
    if group == "data":
        if cfg.data._target_.endswith("dataset_data") and str(cfg.data.train._target_).startswith("torchvision."):
            # No dataset files and no internet here: the real download code must fail with one clear sentence.
            cfg.data.download = False
            missing = (
                r"was not found under .* and data.download is false: put torchvision's"
                if "download" in cfg.data.train  # ImageNet cannot be downloaded: what torchvision expects in data.root
                else r"was not found under data.root=.*: torchvision's \w+ expects .*; set data.root to the folder"
            )
            with pytest.raises(ConfigError, match=missing):
                instantiate(cfg.data, key="data")
            return None
        return instantiate(cfg.data, key="data")
    if group == "model":  # one architecture file, chosen as model/student=... or model/teacher=...
        return instantiate(cfg.model.student)
    if group == "loss":
        return {name: instantiate(node) for name, node in cfg.loss.terms.items()}
    if group in ("weighting", "task", "trainer"):
        return instantiate(cfg[group])
    if group in ("optim", "optim/scheduler"):
        params = [torch.nn.Parameter(torch.zeros(2))]
        return build_optimization(cfg.optim, [{"params": params}], steps_per_epoch=3)
    if group == "projector":
        factory = instantiate(cfg.projector)  # a partial: the loss term supplies the two feature shapes
        projector = factory((8, 4, 4), (8, 4, 4))
        assert projector(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)
        return projector
    if group == "data/augment":  # a batch transform: (inputs, generator) -> inputs, as many or a multiple
        transform = instantiate(cfg.data.augment, key="data.augment")
        x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
        out = transform(x, torch.Generator().manual_seed(0))
        assert out.shape == (2 * getattr(transform, "copies", 1), 1, 8, 8)
        return transform
    if group in ("paths", "experiment") or group.split("/")[0] == "recipe":
        return OmegaConf.to_container(cfg, resolve=False)
    if group.startswith("hydra/"):  # e.g. hydra/launcher=slurm: the plugin class it names must import
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_class

        node = HydraConfig.get()[group.split("/", 1)[1]]
        return get_class(node._target_)
    raise AssertionError(f"no build rule for config group {group!r}: add one to this test")


@pytest.mark.parametrize(("group", "option"), all_choices(), ids=lambda x: x)
def test_every_choice_composes_and_builds(group: str, option: str, tmp_path: Path) -> None:
    prefix = (
        "+" if group.split("/")[0] == "recipe" else ""
    )  # recipes are used by experiments, not in the primary defaults list
    key = "model/student" if group == "model" else f"{prefix}{group}"
    extra = (
        ["weighting.schedules={kd: {kind: linear, epochs: 5}}"] if (group, option) == ("weighting", "schedule") else []
    )  # it needs a term
    cfg = compose([f"{key}={option}", f"paths.root={tmp_path}", f"paths.output_dir={tmp_path}", *extra])
    built = build_choice(group, cfg)
    if group.startswith("model/"):
        assert isinstance(built, torch.nn.Module) and sum(p.numel() for p in built.parameters()) > 0


def test_each_architecture_is_written_once_and_serves_student_and_teacher() -> None:
    assert not (CONF / "model" / "student").exists() and not (CONF / "model" / "teacher").exists()
    cfg = compose(["model/student=resnet8x4", "model/teacher=resnet32x4"])
    assert cfg.model.student.depth == 8 and cfg.model.teacher.depth == 32
    swept = compose(["model@model.student=mlp"])  # Hydra's own spelling works too
    assert swept.model.student._target_.endswith("MLP")
    from hydra.core.hydra_config import HydraConfig

    from distillab.config import group_choices

    compose(["model/teacher=resnet8"])
    assert group_choices()["model/teacher"] == "resnet8" and "model@model.teacher" in HydraConfig.get().runtime.choices


def test_experiments_in_sub_folders_are_choices_and_unknown_ones_are_refused_listing_them() -> None:
    from distillab.command_line import check_choices

    check_choices(["experiment=cifar100/resnet32x4_resnet8x4/dkd", "optim/scheduler=multistep"])  # no error
    # over 200 experiments: a refusal lists the typed folder's, or the folders beside a folder that is not there
    with pytest.raises(ConfigError) as refused:
        check_choices(["experiment=cifar100/nope"])
    assert str(refused.value).startswith("experiment=cifar100/nope is not a choice of experiment: use one of ")
    assert "cifar100/resnet32x4_resnet8x4/..., " in str(refused.value) and len(str(refused.value)) < 600
    with pytest.raises(ConfigError) as refused:  # (no AB for ShuffleNetV2: the pair's own methods are listed)
        check_choices(["experiment=cifar100/resnet32x4_shufflenetv2/ab"])
    said = str(refused.value)
    assert ", cifar100/resnet32x4_shufflenetv2/dkd, " in said and "resnet8x4" not in said
    assert said.endswith("more in other folders)?")
    with pytest.raises(ConfigError) as refused:
        check_choices(["experiment=nope"])
    assert str(refused.value).startswith("experiment=nope is not a choice of experiment: use one of denoise, ")
    assert str(refused.value).endswith(", cifar100/..., imagenet/....")
    with pytest.raises(ConfigError) as refused:
        check_choices(["optim=nope"])
    assert (
        str(refused.value) == "optim=nope is not a choice of optim: use one of adam, adamw, sgd."
    )  # sub-groups are not choices
    with pytest.raises(ConfigError) as refused:
        check_choices(["optim=adamm"])  # a near miss is named first
    assert str(refused.value) == "optim=adamm is not a choice of optim: did you mean optim=adam, or one of adamw, sgd?"


def test_another_data_choice_leaves_the_default_experiment_out_and_the_log_says_so(tmp_path: Path) -> None:
    from distillab.config import canonical_overrides, default_experiment_left_out

    assert canonical_overrides(["data=synthetic"]) == ["~experiment", "data=synthetic"]
    # after a flag, before the overrides (Hydra's parser wants them together)
    assert canonical_overrides(["--multirun", "data=synthetic"]) == ["--multirun", "~experiment", "data=synthetic"]
    assert default_experiment_left_out(["data=synthetic"]) == (
        "the default experiment is left out, as ~experiment would: it is made for data=digits"
    )
    for kept in (["loss=ce"], ["data=digits"], ["experiment=denoise", "data=synthetic"], ["~experiment"]):
        assert default_experiment_left_out(kept) is None, kept
    # experiments added from a folder of them (docs/cifar100.md's sweep of a pair's methods), on their own data
    folder = ["--multirun", "+experiment/cifar100/resnet32x4_resnet8x4=glob(*)"]
    assert canonical_overrides(folder) == ["--multirun", "~experiment", folder[1]]
    assert compose(["~experiment", "+experiment/cifar100/resnet32x4_resnet8x4=kd"]).data.num_classes == 100
    # the run's log (a refused value stops it after the log line, before training)
    for data, said in (("data=synthetic", 1), ("data=digits", 0)):
        run_dir = tmp_path / data.replace("=", "_")
        done = subprocess.run(
            [sys.executable, "-m", "distillab", data, "optim.lr=0", f"hydra.run.dir={run_dir}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "optim.lr=0 is not valid" in done.stderr, done.stderr
        assert (run_dir / "distillab.log").read_text().count("the default experiment is left out") == said, data
