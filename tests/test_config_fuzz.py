"""A config fuzzer: every scalar key of representative runs, given each of a fixed list of bad values,
removed, or misspelt, either starts training or is refused before training with one sentence.

Each attempt composes nothing new: it edits a copy of the composed config (as an override would) and
builds the run in-process up to the end of its first training step (the teacher's, where a changed
teacher key means a new teacher). The outcomes allowed are docs/errors.md's promise: training starts
(the step completes, or the NaN policy stops it with its own sentence), or a `ConfigError` whose
message is one line. Anything else (a traceback from a constructor, a library, the loop) fails the
test, naming the key and the value.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from distillab.errors import ConfigError, NonFiniteLoss
from distillab.runner import run
from distillab.training import Trainer
from distillab.validate import validate
from tests.conftest import compose_in, unused_dir

# The bad values, whatever the key's type (for a string key, 0 is the wrong type; "???" is OmegaConf's
# missing value). Removing the key (~key) and misspelling it (+key_typo) are tried as well.
BAD_VALUES: list[Any] = [0, -1, math.nan, math.inf, 1e30, "abc", "", "???"]
# Set by Hydra at run time, not by users.
NOT_FUZZED = ("paths.output_dir", "experiment_for")

# Representative runs: what to compose, and which keys to fuzz (None: every scalar key; else the keys
# under these prefixes, those the run adds to the default's).
RUNS: dict[str, tuple[list[str], tuple[str, ...] | None]] = {
    "kd (default)": ([], None),
    "fitnet": (["loss=fitnet"], ("loss.", "projector.")),
    "denoise": (["experiment=denoise"], ("data.", "task.", "loss.", "model.", "optim.")),
    **{
        f"weighting={w}": ([f"weighting={w}"], ("weighting.",))
        for w in (
            "learnable",
            "uncertainty",
            "gradnorm",
            "dwa",
            "staged",
            "schedule",
            "upgrad",
            "pcgrad",
            "mgda",
            "cagrad",
            "imtl_g",
            "dualproj",
            "graddrop",
            "aligned_mtl",
        )
    },
}
# CIFAR-100's resnet32x4 -> resnet8x4 on synthetic data of its shape, the teacher from a file (a teacher
# trained per attempt would dominate the time); the recipe's own keys, with the values of each kind.
CIFAR = [
    "experiment=cifar100/resnet32x4_resnet8x4/kd",
    "model/teacher=resnet8",  # the recipe's keys are under test, not the networks' size
    "model/student=resnet8",
    "data=synthetic",
    "data.num_classes=100",
    "data.num_train=64",
    "data.num_val=64",
    "data.batch_size=32",
]
CIFAR_KEYS = ("optim.", "data.augment", "data.normalize")  # SGD, its multistep schedule, device augmentation
CIFAR_VALUES: list[Any] = [0, -1, "abc"]


# What every attempt shares, to keep each one short: the student on 64 samples (one batch to its first step)
FAST = ["data.train_subset=64"]


class FirstStep(BaseException):
    """Raised after the first training step: the run started (not an `Exception`, so no set-up catches it)."""


def scalar_keys(cfg: DictConfig, prefixes: tuple[str, ...] | None) -> list[str]:
    raw = OmegaConf.to_container(cfg, resolve=False)
    keys: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif not isinstance(node, list):
            keys.append(path)

    walk(raw, "")
    return [
        k
        for k in keys
        if not k.startswith(NOT_FUZZED) and (prefixes is None or k.startswith(prefixes)) and "._" not in f".{k}"[1:]
    ]


def mutated(cfg: DictConfig, key: str, change: str, value: Any = None) -> tuple[DictConfig, list[str]]:
    """A copy of `cfg` with `key` set, removed or misspelt, and the override a user would have typed."""
    new = copy.deepcopy(cfg)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(new, parent) if parent else new
    with open_dict(new):
        if change == "remove":
            del node[leaf]
            return new, [f"~{key}"]
        if change == "typo":
            node[f"{leaf}_typo"] = 1
            return new, [f"+{key}_typo=1"]
        node[leaf] = value
    return new, [f"{key}={value}"]


def attempt(cfg: DictConfig, overrides: list[str], tmp_path: Path) -> str | None:
    """None when the run started; the one-line message when it was refused. Anything else propagates."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(unused_dir(tmp_path))
    try:
        validate(cfg, overrides)
        run(cfg)
    except FirstStep:
        return None
    except NonFiniteLoss:
        return None  # started; the NaN policy stopped it at its first step, with its own sentence
    except ConfigError as error:
        return str(error)
    raise AssertionError("the run ended without taking a step")


@pytest.fixture
def first_step_only(monkeypatch):
    original = Trainer.train_batch

    def one_step(self, members, stages, batches):
        original(self, members, stages, batches)
        raise FirstStep

    monkeypatch.setattr(Trainer, "train_batch", one_step)


# Nodes a run never builds: a misspelt key there changes nothing and is not refused (the projector of a
# run without feature terms, the teacher network of a run without a teacher).
UNBUILT = {"kd (default)": ("projector.",), "denoise": ("model.teacher.",)}


def fuzz(
    base: DictConfig,
    prefixes: tuple[str, ...] | None,
    tmp_path: Path,
    values: list[Any] = BAD_VALUES,
    unbuilt: tuple[str, ...] = (),
) -> dict[str, str | None]:
    """Every change of every key: the override a user would have typed -> the refusal (None: it trained).
    Fails on the first broken promise: a crash, a message of more than one line, a misspelt key that trains
    (outside the `unbuilt` nodes)."""
    changes = [("set", v) for v in values] + [("remove", None), ("typo", None)]
    outcomes: dict[str, str | None] = {}
    for key in scalar_keys(base, prefixes):
        for change, value in changes:
            cfg, overrides = mutated(base, key, change, value)
            try:
                message = attempt(cfg, overrides, tmp_path)
            except (Exception, FirstStep) as error:  # a broken promise, reported with its input
                raise AssertionError(f"{overrides[0]}: {type(error).__name__}: {error}") from error
            outcomes[overrides[0]] = message
            if message is not None:
                assert message.strip() and "\n" not in message, f"{overrides[0]}: not one line: {message!r}"
                assert "Traceback" not in message, f"{overrides[0]}: {message}"
            elif change == "typo" and not key.startswith(unbuilt):  # training without it would be silent
                raise AssertionError(f"{overrides[0]} was accepted: a misspelt key must be refused")
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_every_bad_value_of_every_key_starts_or_is_one_sentence(
    name: str, tmp_path: Path, first_step_only, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths a bad value makes (paths.root=abc) land here
    overrides, prefixes = RUNS[name]
    base = compose_in(tmp_path, *([] if name == "denoise" else FAST), *overrides)  # denoise has no subset
    keys = scalar_keys(base, prefixes)
    outcomes = fuzz(base, prefixes, tmp_path, unbuilt=UNBUILT.get(name, ()))
    assert len(keys) > 0 and len(outcomes) == len(keys) * (len(BAD_VALUES) + 2)  # no two attempts the same
    if name == "kd (default)":  # values that cannot mean anything are refused, not trained on
        for override in ("optim.lr=-1", "trainer.max_epochs=0", "loss.temperature=0", "data.batch_size=abc"):
            refusal = outcomes[override]
            assert refusal is not None and override.split("=")[0] in refusal, (override, refusal)


@pytest.mark.slow
def test_a_cifar100_experiment_on_synthetic_data(tmp_path: Path, first_step_only, monkeypatch) -> None:
    from distillab.models import resnet

    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "resnet8.pt"
    torch.save(resnet(depth=8, num_classes=100).state_dict(), teacher)
    base = compose_in(tmp_path, *CIFAR, f"teacher.checkpoint={teacher}")
    keys = scalar_keys(base, CIFAR_KEYS)
    outcomes = fuzz(base, CIFAR_KEYS, tmp_path, CIFAR_VALUES)
    assert len(keys) > 10 and len(outcomes) == len(keys) * (len(CIFAR_VALUES) + 2)
    refusal = outcomes["optim.lr=-1"]
    assert refusal is not None and "optim.lr" in refusal, refusal
