"""Whole runs, in-process, on the bundled digits data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillab.checkpoint import load_checkpoint
from distillab.models import LightNN
from tests.conftest import scalars

CONTRACT_KEYS = {
    "best_val_acc",
    "final_val_acc",
    "teacher_val_acc",
    "final_weights",
    "epochs",
    "train_time_s",
    "samples_per_s",
}


def test_ce_run_writes_metrics_events_and_checkpoints(tiny_run) -> None:
    metrics, run_dir = tiny_run("loss=ce", "trainer.max_epochs=3")
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["status"] == "completed" and metrics["epochs"] == 3
    assert 50 < metrics["best_val_acc"] <= 100 and 0 < metrics["final_val_acc"] <= 100
    assert metrics["best_val_acc"] >= metrics["final_val_acc"]
    assert metrics["teacher_val_acc"] is None and metrics["final_weights"] == {"ce": 1.0}
    assert metrics["train_time_s"] > 0 and metrics["samples_per_s"] > 0

    tags = scalars(run_dir)
    for tag in ["loss/ce", "loss_weight/ce", "loss/total", "lr", "val/acc", "val/loss", "train/acc"]:
        assert tag in tags, tag
    assert len(tags["val/acc"]) == 3
    assert abs(tags["val/acc"][-1] - metrics["final_val_acc"]) < 1e-4  # event files store float32
    assert all(w == 1.0 for w in tags["loss_weight/ce"])
    assert tags["loss/ce"] == tags["loss/total"]
    # 1437 train images / 64 per batch = 23 steps per epoch; logged every 2 steps (mean of those steps)
    assert len(tags["loss/total"]) == (3 * 23 + 1) // 2
    assert tags["loss/total"][-1] < tags["loss/total"][0]  # it learned

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["epoch"] == 3 and best["epoch"] == metrics["best_epoch"]
    student = LightNN(num_classes=10, in_channels=1, image_size=8)
    student.load_state_dict(last["student"])  # the saved student is a complete, loadable LightNN
    assert {"optim", "weighting", "objective", "rng", "step"} <= set(last)


def test_hparams_are_in_the_runs_own_event_file(tiny_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics_json, run_dir = tiny_run("loss=kd", "loss.temperature=2", "trainer.max_epochs=3")
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == ["checkpoints"]  # no stray sub-run
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    # a single run: the keys its command line sets (conftest's TINY and the test's own), then the numbers its
    # loss reads (KD: temperature and alpha), not other losses' (beta, gamma, ...) nor the untouched defaults
    tiny = {"trainer.max_epochs", "teacher.max_epochs", "trainer.log_every", "trainer.progress"}
    assert set(start.hparams) == {*tiny, "loss", "loss.temperature", "loss.alpha"}
    assert start.hparams["loss"].string_value == "kd" and start.hparams["loss.temperature"].number_value == 2
    assert start.hparams["loss.alpha"].number_value == 0.5
    metrics = [
        m.name.tag
        for m in plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment.metric_infos
    ]
    assert metrics[:2] == ["val/acc", "val_best/acc"] and "teacher/val/acc" in metrics
    tags = set(acc.Tags()["scalars"])
    assert set(metrics) <= tags and not any(t.startswith("hparam") for t in tags)  # curves, not one-point cards
    best = [e.value for e in acc.Scalars("val_best/acc")]
    assert len(best) == 3 and best == sorted(best) and best[-1] == pytest.approx(metrics_json["best_val_acc"])


def test_the_same_config_twice_gives_identical_results(tmp_path: Path) -> None:
    from tests.conftest import run_in

    first, _ = run_in(tmp_path / "a", "trainer.max_epochs=2")
    second, _ = run_in(tmp_path / "b", "trainer.max_epochs=2")
    ignore = {"train_time_s", "samples_per_s"}
    assert {k: v for k, v in first.items() if k not in ignore} == {k: v for k, v in second.items() if k not in ignore}


def test_denoise_experiment_learns_to_reconstruct(tiny_run) -> None:
    metrics, run_dir = tiny_run("experiment=denoise", "trainer.max_epochs=3")
    assert metrics["monitor"] == "val/psnr" and metrics["mode"] == "max" and metrics["best_val_acc"] is None
    tags = scalars(run_dir)
    for tag in [
        "loss/l1",
        "loss/mse",
        "loss/ssim",
        "loss_weight/ssim",
        "val/psnr",
        "val/ssim",
        "val/loss",
        "train/psnr",
    ]:
        assert tag in tags, tag
    assert tags["val/psnr"][-1] > tags["val/psnr"][0]
    assert metrics["final_weights"] == {"l1": 1.0, "mse": 1.0, "ssim": 0.5}


def test_sgd_with_plateau_reduces_the_logged_learning_rate(tiny_run) -> None:
    # threshold 10 (+1000%): no epoch after the first counts as an improvement, so with patience 0
    # the rate halves after epoch 2 (and after epoch 3, past the last logged training step).
    metrics, run_dir = tiny_run(
        "optim=sgd",
        "optim/scheduler=plateau",
        "optim.scheduler.patience=0",
        "optim.scheduler.threshold=10",
        "trainer.max_epochs=3",
    )
    assert metrics["status"] == "completed"
    lrs = [round(lr, 6) for lr in scalars(run_dir)["lr"]]
    assert sorted(set(lrs), reverse=True)[:2] == [0.05, 0.025]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_mlp_student_and_a_torchvision_model_run(tiny_run) -> None:
    metrics, _ = tiny_run("model/student=mlp", "trainer.max_epochs=1")
    assert metrics["epochs"] == 1
    metrics, _ = tiny_run(
        "model/student=resnet18",
        "data=synthetic",
        "data.image_size=16",
        "data.num_train=32",
        "data.num_val=16",
        "trainer.max_epochs=1",
    )
    assert metrics["epochs"] == 1 and torch.isfinite(torch.tensor(metrics["final_val_loss"]))


@pytest.mark.parametrize("loss", ["kd", "fitnet", "cosine", "at", "feature_mse", "multi_teacher", "self_distill"])
def test_every_distillation_loss_runs_and_reports_its_terms(loss: str, tiny_run) -> None:
    metrics, run_dir = tiny_run(f"loss={loss}")
    tags = scalars(run_dir)
    assert metrics["status"] == "completed" and metrics["best_val_acc"] > 20
    for term in metrics["final_weights"]:
        assert f"loss/{term}" in tags and f"loss_weight/{term}" in tags
    if loss == "self_distill":
        assert metrics["teacher_val_acc"] is None
    else:
        assert metrics["teacher_val_acc"] > 50 and "teacher/val/acc" in tags
    if loss == "multi_teacher":
        assert len(metrics["teachers_val"]) == 2 and "teacher1/val/acc" in tags


@pytest.mark.parametrize("loss", ["ce", "kd", "cosine", "fitnet"])
def test_tutorial_experiment_composes_with_the_tutorials_recipe_and_runs_on_cifar_shaped_data(
    loss: str, tiny_run, tmp_path
) -> None:
    from distillab.config import compose

    cfg = compose(["experiment=tutorial_cifar10", f"loss={loss}", f"paths.output_dir={tmp_path}"])
    assert (
        cfg.data.train._target_ == "torchvision.datasets.CIFAR10"
        and cfg.data.batch_size == 128
        and cfg.data.get("augment") is None
    )
    assert list(cfg.data.normalize.mean) == [0.485, 0.456, 0.406]
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3 and cfg.teacher.optim.lr == 1e-3
    assert (
        cfg.trainer.max_epochs == 10
        and cfg.trainer.seed == 42
        and cfg.teacher.seed == 42
        and cfg.teacher.max_epochs == 10
    )
    assert cfg.model.teacher._target_.endswith("DeepNN") and cfg.model.student._target_.endswith("LightNN")
    weights = {k: float(v) for k, v in cfg.loss.weights.items()}
    assert weights == ({"ce": 1.0} if loss == "ce" else {"ce": 0.75, next(k for k in weights if k != "ce"): 0.25})
    if loss == "kd":
        assert cfg.loss.temperature == 2.0

    metrics, _ = tiny_run(
        "experiment=tutorial_cifar10",
        f"loss={loss}",
        "data=synthetic",
        "data.num_train=128",
        "data.num_val=64",
        "trainer.max_epochs=1",
        "teacher.max_epochs=1",
    )
    assert metrics["status"] == "completed"


def test_the_closing_lines_suggest_commands_built_on_the_runs_own_command_line(tmp_path: Path) -> None:
    """After a distillation: the student alone with the same overrides (and the figure the default experiment
    records); after the student alone: distillation. A chosen experiment (whose loss is its method) and a sweep's
    jobs (its table closes it) suggest nothing. Each keeps where the configs came from (`--config-dir`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from distillab import command_line
    from distillab.config import compose
    from distillab.runner import next_commands

    cfg = compose(["loss=fitnet", "trainer.max_epochs=5", "optim.lr=0.002"])
    distilled = next_commands(cfg, distilled=True, classification=True)
    # the recorded figure is for the experiment's own 200 epochs: not given after a 5-epoch run
    assert (
        distilled[0]
        == "python -m distillab trainer.max_epochs=5 optim.lr=0.002 loss=ce (the student alone, to compare)"
    )
    assert distilled[1].startswith("python -m distillab --multirun trainer.max_epochs=5 optim.lr=0.002 loss=kd ")
    alone = next_commands(compose(["loss=ce"]), distilled=False, classification=True)
    assert alone[0] == "python -m distillab loss=kd (the same student distilled from the teacher)"
    kept = next_commands(compose(["loss=kd", "paths.cache_dir=/tmp/c"]), distilled=True, classification=True)
    assert kept[0] == (  # its teacher cache, reused, and the figure of the experiment as it ran
        f"python -m distillab paths.cache_dir=/tmp/c loss=ce (the student alone, to compare: {cfg.student_alone})"
    )
    mlp = next_commands(compose(["model/student=mlp"]), distilled=True, classification=True)
    assert mlp[0] == "python -m distillab model/student=mlp loss=ce (the student alone, to compare)"  # as typed
    removed = next_commands(compose(["~student_alone", "~model/teacher"]), distilled=False, classification=True)
    assert (
        removed[0]
        == "python -m distillab '~student_alone' '~model/teacher' loss=kd (the same student distilled from the teacher)"
    )
    synthetic = next_commands(compose(["data=synthetic"]), distilled=True, classification=True)  # ~experiment added
    assert synthetic[0] == "python -m distillab '~experiment' data=synthetic loss=ce (the student alone, to compare)"
    command_line.record_typed(["--config-dir", "/my conf", "loss=ce"])  # a loss of one's own (cleared after)
    for suggested in next_commands(compose(["loss=ce"]), distilled=False, classification=True):
        assert suggested.startswith("python -m distillab --config-dir '/my conf' "), suggested
    for typed in (["experiment=denoise"], ["experiment=cifar100/resnet32x4_resnet8x4/fitnet", "data=synthetic"]):
        assert next_commands(compose(typed), distilled=True, classification=True) == []  # the folder's own ce
    hydra = HydraConfig.get()
    with read_write(hydra), open_dict(hydra):
        hydra.mode = RunMode.MULTIRUN
    assert next_commands(cfg, distilled=True, classification=True) == []
