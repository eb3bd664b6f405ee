"""Teachers are frozen, cached once, loaded safely; gradients reach the student and projectors only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distillab.build import build_experiment, needs_teacher
from distillab.checkpoint import seed_everything
from distillab.distributed import resolve_device
from distillab.errors import ConfigError
from distillab.models import DeepNN, LightNN
from distillab.teacher import build_teachers, load_teacher_weights, load_weights
from tests.conftest import compose_in, run_in

SYNTHETIC = ["data=synthetic", "data.image_size=16", "data.num_train=64", "data.num_val=32", "data.batch_size=16"]


def build(tmp_path: Path, *overrides: str):
    cfg = compose_in(tmp_path, *overrides)
    seed_everything(0)
    device = resolve_device("cpu")
    teachers = build_teachers(cfg, device) if needs_teacher(cfg) else []
    return build_experiment(cfg, device, teachers)


def train_steps(exp, steps: int) -> None:
    for i, (x, y, _) in enumerate(exp.data.train):
        if i == steps:
            break
        outputs = exp.forward(x, y)
        total, _ = exp.weighting(torch.stack([exp.objective[n](outputs) for n in exp.weighting.names]))
        exp.optim.optimizer.zero_grad()
        total.backward()
        exp.optim.optimizer.step()


def test_a_batchnorm_teacher_stays_bit_identical_and_never_gets_a_gradient(tmp_path: Path) -> None:
    # resnet18 has BatchNorm: a teacher left in train mode would move its running statistics.
    exp = build(
        tmp_path, *SYNTHETIC, "model/teacher=resnet18", "loss=fitnet", "loss.teacher_layer=layer1", "projector=conv1x1"
    )
    (teacher,) = exp.teachers
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)
    train_steps(exp, 3)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optimized = {id(p) for g in exp.optim.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}


@pytest.mark.parametrize("loss", ["fitnet", "feature_mse", "self_distill"])
def test_projectors_are_optimized_once_receive_gradients_and_change(loss: str, tmp_path: Path) -> None:
    exp = build(tmp_path, f"loss={loss}", "data.batch_size=32")
    projector_params = [p for n, p in exp.objective.named_parameters() if "projectors" in n]
    assert projector_params
    in_optimizer = [p for g in exp.optim.optimizer.param_groups for p in g["params"]]
    for p in projector_params:
        assert sum(q is p for q in in_optimizer) == 1  # exactly once
    student_params = list(exp.student.parameters())
    assert all(sum(q is p for q in in_optimizer) == 1 for p in student_params)
    before = [p.detach().clone() for p in projector_params]
    train_steps(exp, 2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector_params)
    assert all(not torch.equal(b, p) for b, p in zip(before, projector_params))
    assert all(p.grad is not None for p in student_params if p.requires_grad)


def test_the_cached_teacher_is_reused_by_the_next_run(tmp_path: Path) -> None:
    first, _ = run_in(tmp_path, "loss=kd", shared_cache=False)
    (teacher_file,) = (tmp_path / "cache" / "teachers").glob("deep_nn-*/teacher.pt")
    stamp = teacher_file.stat().st_mtime_ns
    second, _ = run_in(tmp_path, "loss=kd", shared_cache=False)
    assert teacher_file.stat().st_mtime_ns == stamp  # not retrained
    assert len(list((tmp_path / "cache" / "teachers").glob("deep_nn-*/teacher.pt"))) == 1
    assert first["teacher_val_acc"] == second["teacher_val_acc"] > 50
    assert first["best_val_acc"] == second["best_val_acc"]  # the student does not notice the cache
    # a setting that changes the teacher (its seed) gives another cache entry
    run_in(tmp_path, "loss=kd", "teacher.seed=1", shared_cache=False)
    assert len(list((tmp_path / "cache" / "teachers").glob("deep_nn-*/teacher.pt"))) == 2


def test_a_given_teacher_checkpoint_is_used_without_training(tmp_path: Path) -> None:
    trained = DeepNN(num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "deep.pt"
    torch.save(trained.state_dict(), path)
    metrics, _ = run_in(
        tmp_path, "loss=kd", f"teacher.checkpoint={path}", "teacher.train_if_missing=false", shared_cache=False
    )
    assert not (tmp_path / "cache" / "teachers").exists()
    assert 0 <= metrics["teacher_val_acc"] <= 30  # an untrained network is near chance


def test_a_checkpoint_of_another_architecture_names_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "light.pt"
    torch.save(LightNN(num_classes=10, in_channels=1, image_size=8).state_dict(), path)
    with pytest.raises(
        ConfigError,
        match=r"does not fit the teacher DeepNN: missing keys .*features\.2\.weight.*shapes differ: "
        r"features\.0\.weight \(16, 1, 3, 3\) in the file, \(128, 1, 3, 3\) in the model.*; give teacher\.checkpoint",
    ):
        load_weights(DeepNN(num_classes=10, in_channels=1, image_size=8), path)


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(
        ConfigError, match=r"holds pickled Python objects \(.*system.*\), which distillab refuses to load"
    ):
        load_weights(DeepNN(num_classes=10, in_channels=1, image_size=8), path)
    assert not marker.exists()


def test_no_teacher_and_no_training_allowed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher.train_if_missing is false: set teacher.checkpoint"):
        run_in(tmp_path, "loss=kd", "teacher.train_if_missing=false", shared_cache=False)


@pytest.mark.slow
def test_concurrent_jobs_train_a_shared_teacher_once(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "distillab", f"paths.root={tmp_path}", "trainer.max_epochs=3", "teacher.max_epochs=3"]
    jobs = [
        subprocess.Popen(
            [*args, f"hydra.run.dir={tmp_path / f'job{i}'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), logs
    text = "\n".join(logs)
    assert text.count("teacher stage: training") == 1 and text.count("teacher: deep_nn from cache entry") == 2
    accs = [json.loads((tmp_path / f"job{i}" / "metrics.json").read_text())["teacher_val_acc"] for i in range(2)]
    assert accs[0] == accs[1]


def test_the_students_epochs_do_not_change_its_teacher(tmp_path: Path) -> None:
    """teacher.max_epochs has its own default: a sweep over trainer.max_epochs distils from one cached teacher."""
    a, _ = run_in(tmp_path, "loss=kd", "trainer.max_epochs=1", shared_cache=False)
    b, _ = run_in(tmp_path, "loss=kd", "trainer.max_epochs=2", shared_cache=False)
    assert len(list((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))) == 1
    assert a["teacher"]["source"] == b["teacher"]["source"] and a["teacher_val_acc"] == b["teacher_val_acc"]
    assert a["teacher"]["epochs"] == 2  # conftest's teacher.max_epochs, not the student's 1 or 2
    # and without conftest's setting: the default is the teacher's own, so the cache entry is one
    from distillab.config import compose
    from distillab.teacher import cache_entry, teacher_models

    plain = [compose(["~experiment", f"trainer.max_epochs={n}"]) for n in (1, 2)]
    assert [cfg.teacher.max_epochs for cfg in plain] == [20, 20]
    assert len({cache_entry(cfg, teacher_models(cfg)[0]) for cfg in plain}) == 1


@pytest.mark.parametrize("select", ["best", "last"])
def test_teacher_select_loads_that_epochs_weights_and_says_which(
    select: str, tmp_path: Path, caplog, monkeypatch
) -> None:
    from distillab.checkpoint import load_checkpoint
    from distillab.tasks import Task

    # Which epoch is best depends on the CPU's float kernels (on one box the seeded teacher peaked in its
    # last epoch): here the first epoch is the best on any machine, so best and last are different weights.
    # A cache of the test's own: no other test may load this teacher.
    monkeypatch.setattr(Task, "is_better", lambda self, value, best: best is None)
    with caplog.at_level(logging.INFO, logger="distillab"):
        metrics, _ = run_in(tmp_path, "loss=kd", "teacher.max_epochs=4", f"teacher.select={select}", shared_cache=False)
    teacher = metrics["teacher"]
    entry = load_checkpoint(Path(teacher["source"]) / "teacher.pt")
    trained = entry["metrics"]
    assert teacher["kind"] == "cache" and teacher["select"] == select and teacher["epochs"] == 4
    assert teacher["epoch"] == (trained["best_epoch"] if select == "best" else trained["epochs"])
    recorded = trained["best_val_acc"] if select == "best" else trained["final_val_acc"]
    assert teacher["val"]["val/acc"] == pytest.approx(recorded)
    assert metrics["teacher_val_acc"] == pytest.approx(recorded)  # measured again on this run's (same) validation split
    cfg = compose_in(tmp_path, "loss=kd", "teacher.max_epochs=4", f"teacher.select={select}", shared_cache=False)
    teachers = build_teachers(cfg, torch.device("cpu"))
    load_teacher_weights(cfg, teachers, train=lambda _: pytest.fail("the cached teacher must not be trained again"))
    assert all(torch.equal(v, entry["models"][select][k]) for k, v in teachers[0].state_dict().items())  # those weights
    other = "last" if select == "best" else "best"
    assert trained["best_epoch"] == 1 and trained["epochs"] == 4  # best and last are different weights
    assert any(not torch.equal(entry["models"][select][k], entry["models"][other][k]) for k in entry["models"][select])
    assert (
        f"teacher: deep_nn from cache entry {teacher['source']} ({select} epoch {teacher['epoch']} of 4" in caplog.text
    )
    # the cache entry's teacher.pt given as teacher.checkpoint: the same selected weights, and their epoch
    given = f"teacher.checkpoint={Path(teacher['source']) / 'teacher.pt'}"
    cfg = compose_in(tmp_path / "file", "loss=kd", given, f"teacher.select={select}", shared_cache=False)
    teachers = build_teachers(cfg, torch.device("cpu"))
    (info,) = load_teacher_weights(cfg, teachers, train=lambda _: pytest.fail("a given checkpoint is not trained"))
    assert info.kind == "file" and info.epoch == teacher["epoch"]
    assert all(torch.equal(v, entry["models"][select][k]) for k, v in teachers[0].state_dict().items())


def test_a_teacher_checkpoint_says_what_it_loaded_and_its_accuracy_here(tmp_path: Path, caplog) -> None:
    path = tmp_path / "deep.pt"
    torch.save(DeepNN(num_classes=10, in_channels=1, image_size=8).state_dict(), path)
    with caplog.at_level(logging.INFO, logger="distillab"):
        metrics, _ = run_in(tmp_path, "loss=kd", f"teacher.checkpoint={path}", shared_cache=False)
    acc = metrics["teacher_val_acc"]
    assert metrics["teacher"]["kind"] == "file" and metrics["teacher"]["source"] == str(path)
    assert f"teacher: loaded {path} into deep_nn: val/acc={acc:.4g}" in caplog.text


def test_a_multi_teacher_runs_closing_lines_name_every_teacher(tmp_path: Path, caplog) -> None:
    from distillab.runner import summarize
    from distillab.tasks import Classification

    def teacher(name: str, epoch: int, acc: float) -> dict:
        return {
            "name": name,
            "kind": "cache",
            "select": "best",
            "epoch": epoch,
            "epochs": 20,
            "val_here": {"val/acc": acc},
        }

    first, second = teacher("deep_nn", 18, 97.5), teacher("LightNN", 20, 91.25)
    metrics = {"best_val_acc": 95.0, "final_val_acc": 94.0, "best_epoch": 7, "epochs": 10, "teacher": first}
    with caplog.at_level(logging.INFO, logger="distillab"):
        summarize(tmp_path, {**metrics, "teachers": [first, second]}, Classification())
        multi = caplog.text
        caplog.clear()
        summarize(tmp_path, metrics, Classification())
    assert "teacher 1 of 2: deep_nn (best epoch 18 of 20), val/acc=97.5 on this validation set" in multi
    assert "teacher 2 of 2: LightNN (best epoch 20 of 20), val/acc=91.25 on this validation set" in multi
    assert (
        "teacher: deep_nn (best epoch 18 of 20), val/acc=97.5 on this validation set" in caplog.text
    )  # one: as before
    assert "note: the final epoch" not in caplog.text  # 1 point below the best: not more
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distillab"):
        summarize(tmp_path, {**metrics, "final_val_acc": 93.61}, Classification())
    assert "note: the final epoch is 1.39 points below the best: its last epochs overfit or are noisy" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distillab"):  # a member of a fused group: its lines named
        summarize(tmp_path, {**metrics, "final_val_acc": 93.61}, Classification(), name="kd,seed=1")
        summarize(tmp_path, {**metrics, "final_val_acc": 90.0, "epochs": 9}, Classification())  # still learning
    assert "kd,seed=1 student: best val/acc=95 (epoch 7 of 10), final 93.61" in caplog.text
    assert caplog.text.count("note: the final epoch") == 1 and "kd,seed=1 note: the final epoch is 1.39" in caplog.text


def test_the_same_teacher_listed_twice_is_trained_and_cached_once(tmp_path: Path) -> None:
    """The run's first teacher is named by its config choice (deep_nn-<key>), the others by class (DeepNN-<key>):
    an entry is found by its key, so a second copy of the same teacher reuses the first's instead of training."""
    metrics, _ = run_in(
        tmp_path, "loss=multi_teacher", "teachers=[${model.teacher},${model.teacher}]", shared_cache=False
    )
    assert [p.parent.name.split("-")[0] for p in (tmp_path / "cache" / "teachers").glob("*/teacher.pt")] == ["deep_nn"]
    first, second = metrics["teachers"]
    assert first["source"] == second["source"] and first["val_here"] == second["val_here"]


def test_several_teachers_need_a_term_that_reads_them_all(tmp_path: Path) -> None:
    """loss=kd reads the first teacher only: listing two would train and evaluate the second for nothing."""
    from distillab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^teachers lists 2 teachers, but no term of this loss reads more than the"):
        run_in(tmp_path, "loss=kd", "teachers=[${model.teacher},${model.teacher}]", shared_cache=False)
    assert not (tmp_path / "cache" / "teachers").exists()  # refused before any teacher trained


def test_where_the_files_are_does_not_decide_which_teacher_is_cached(tmp_path: Path, monkeypatch) -> None:
    """A CIFAR run's data root is `${paths.data_dir}`: started with `paths.root=outputs` and resumed with the printed
    command (paths.root absolute), or from another directory, it finds the same cached teacher; other data does not."""
    from distillab.config import compose
    from distillab.teacher import cache_key, training_config

    def key(*overrides: str) -> str:
        cfg = compose(["data=cifar10", "paths.output_dir=/r", *overrides])
        return cache_key(training_config(cfg, cfg.model.teacher, tmp_path))

    monkeypatch.chdir(tmp_path)
    relative = key()
    assert key(f"paths.root={tmp_path / 'outputs'}") == relative
    monkeypatch.chdir("/")
    assert key(f"paths.root={tmp_path / 'outputs'}") == relative
    assert key("data=cifar100") != relative and key("teacher.max_epochs=3") != relative
