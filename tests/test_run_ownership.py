"""A run owns its directory and its record; what the first step will meet is checked before training; the
operating system's errors are sentences; a sweep stops when told (issue 32)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from distillab.checkpoint import load_checkpoint
from distillab.cli import main
from distillab.config import job_dirname
from distillab.data import DataModule
from distillab.data.memory import TensorLoader
from distillab.errors import ConfigError
from distillab.losses import LossTerm
from distillab.rundir import RunLock, claim_fresh
from distillab.runner import run
from tests.conftest import SHARED_CACHE, compose_in, interrupt_after_step, lock_held_elsewhere
from tests.test_reliability import snapshot

QUICK = ["~experiment", "loss=ce", "trainer.max_epochs=1", "trainer.progress=false"]


def cli(monkeypatch, capfd, *args: str) -> tuple[int, str, str]:
    """`python -m distillab ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["distillab", *args])
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as stopped:
        code = int(stopped.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run made by the CLI: its record, log, checkpoints, events and metrics.json."""
    root = tmp_path_factory.mktemp("finished")
    done = subprocess.run(
        [sys.executable, "-m", "distillab", *QUICK, f"hydra.run.dir={root / 'run'}", f"paths.root={root}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


# -- 1. a run directory belongs to one run ------------------------------------------------------------


def test_a_taken_default_directory_gives_the_next_name(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "12-00-00"
    assert [claim_fresh(base) for _ in range(3)] == [base, base.with_name("12-00-00-2"), base.with_name("12-00-00-3")]


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path: Path) -> None:
    """Both runs' default directory is the same path (named by a clock format without fields, as two runs started
    in one second compute it): the second to claim it gets `-2`, and each directory holds one run's files."""
    experiment = tmp_path / "conf" / "experiment" / "same_second.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\nhydra:\n  run:\n    dir: ${paths.root}/runs/${now:same-second}\n")
    # (not ~experiment: this experiment replaces the default one; --config-dir after the overrides, as users type it)
    args = [*QUICK[1:], "experiment=same_second", f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    args += ["--config-dir", str(tmp_path / "conf")]
    jobs = [
        subprocess.Popen([sys.executable, "-m", "distillab", *args, f"trainer.seed={seed}"], stderr=subprocess.PIPE)
        for seed in (1, 2)
    ]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read() if job.stderr else ""
    dirs = sorted((tmp_path / "runs").glob("same-second*"))
    assert [d.name for d in dirs] == ["same-second", "same-second-2"]
    seeds = set()
    for run_dir in dirs:  # each record, log and metrics.json is its own run's
        record = (run_dir / ".hydra" / "overrides.yaml").read_text()
        seed = 1 if "trainer.seed=1" in record else 2
        seeds.add(seed)
        assert f"trainer.seed={3 - seed}" not in record
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert (run_dir / "distillab.log").read_text().count("student: best") == 1
    assert seeds == {1, 2}


@pytest.mark.slow
def test_a_sweep_whose_directory_is_taken_writes_every_job_into_the_one_it_claimed(tmp_path: Path) -> None:
    """Two sweeps started in the same second: the second claims `<time>-2` for itself, and its jobs (whose configs
    Hydra composes again, where `${now:...}` gives the unclaimed name) write there too, not into the first's."""
    experiment = tmp_path / "conf" / "experiment" / "same_second.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\nhydra:\n  sweep:\n    dir: ${paths.root}/multirun/${now:same-second}\n")
    root = tmp_path / "a,b"  # (a comma: the claimed name is passed on quoted)
    taken = root / "multirun" / "same-second"
    taken.mkdir(parents=True)
    args = ["--multirun", "experiment=same_second", "--config-dir", str(tmp_path / "conf"), "trainer.seed=1,4"]
    args += [*QUICK[1:], f"paths.root='{root}'", f"paths.cache_dir={SHARED_CACHE}"]
    done = subprocess.run([sys.executable, "-m", "distillab", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(taken.iterdir()) == []  # the first sweep's directory, untouched
    claimed = root / "multirun" / "same-second-2"
    assert sorted(p.name for p in claimed.iterdir()) == ["multirun.yaml", "seed=1", "seed=4"]
    assert all((claimed / job / "metrics.json").is_file() for job in ("seed=1", "seed=4"))


@pytest.mark.slow
def test_a_sweep_directory_fixed_by_a_config_file_is_used_as_set(tmp_path: Path) -> None:
    """`hydra.sweep.dir: .../fixed` in an experiment file (no `${now:...}`) is the user's choice, as if typed: the
    sweep run again with trainer.resume=true continues it there (its jobs completed: nothing to do), not in a
    `fixed-2` of its own."""
    experiment = tmp_path / "conf" / "experiment" / "fixed.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\nhydra:\n  sweep:\n    dir: ${paths.root}/multirun/fixed\n")
    args = ["--multirun", "experiment=fixed", "--config-dir", str(tmp_path / "conf"), "trainer.seed=1,4"]
    args += [*QUICK[1:], f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    for extra in ([], ["trainer.resume=true"]):
        done = subprocess.run(
            [sys.executable, "-m", "distillab", *args, *extra], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == ["fixed"]
    assert (done.stdout + done.stderr).count("already completed this run") == 2


def test_a_directory_held_by_a_running_run_is_refused_and_left_as_it_was(
    finished_run: Path, monkeypatch, capfd
) -> None:
    before = snapshot(finished_run)
    lock = RunLock.acquire(finished_run)  # as a run still going (a resume, say) holds it
    try:
        code, _, err = cli(
            monkeypatch,
            capfd,
            *QUICK,
            f"hydra.run.dir={finished_run}",
            f"paths.root={finished_run.parent}",
            "trainer.resume=true",
        )
    finally:
        lock.release()
    assert code == 2 and err.count("\n") == 1
    assert err.strip() == (  # a resume is told to wait and resume, not to take another directory
        f"distillab: error: {finished_run} is in use by another run that is still going: wait for it to end, then "
        "resume it with the same command (a run that has completed is left as it is)."
    )
    assert snapshot(finished_run) == before


def test_a_killed_run_leaves_no_stuck_lock(tmp_path: Path) -> None:
    refused = "in use by another run that is still going: wait for it to end, or give "
    with lock_held_elsewhere(tmp_path), pytest.raises(ConfigError, match=refused):
        RunLock.acquire(tmp_path)  # not a resume: told to take a directory of its own
    RunLock.acquire(tmp_path).release()  # the kernel released the killed process's lock


def test_sweep_values_whose_safe_names_collide_get_distinct_directories() -> None:
    params = {"paths.data_dir": "/a/d_1,/a/d/1,plain"}
    names = [job_dirname([f"paths.data_dir={v}"], i, None, params) for i, v in enumerate(["/a/d_1", "/a/d/1", "plain"])]
    assert len(set(names)) == 3
    assert names[0].startswith("data_dir=_a_d_1-") and names[1].startswith("data_dir=_a_d_1-")
    assert names[2] == "data_dir=plain"  # no hash where nothing collides


def test_a_sweep_that_lists_a_value_twice_is_refused_before_the_first_job(tmp_path: Path, monkeypatch, capfd) -> None:
    sweep_dir = tmp_path / "sweep"
    code, _, err = cli(monkeypatch, capfd, "--multirun", *QUICK, "trainer.seed=0,1,0", f"hydra.sweep.dir={sweep_dir}")
    assert code == 2
    assert err == "distillab: error: trainer.seed=0,1,0 lists 0 more than once: write each value once (every job " \
        "of a sweep has its own values and its own directory).\n"  # fmt: skip
    assert not sweep_dir.exists()


# -- 2. the record is written once, by the run it describes -------------------------------------------


def test_a_refused_resume_names_the_key_typed_not_the_keys_made_from_it(tmp_path: Path) -> None:
    """`loss.alpha=0.9` on a resume changes the terms' weights too (`${one_minus:${loss.alpha}}`); the sentence
    names loss.alpha, not weights that follow from it (0.09999999999999998)."""
    from omegaconf import OmegaConf

    from distillab.config import compose
    from distillab.rundir import RECORD, check_resume

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(compose(["loss=kd", "paths.output_dir=/r"]), tmp_path / RECORD)  # as write_record does
    with pytest.raises(ConfigError) as refused:
        check_resume(tmp_path, compose(["loss=kd", "loss.alpha=0.9", "paths.output_dir=/r"]), {})
    assert "(loss.alpha was 0.5, now 0.9):" in str(refused.value) and "weights" not in str(refused.value).split(":")[0]
    # a key made from one a resume may change (T_max from trainer.max_epochs) is refused, and named, itself
    OmegaConf.save(compose(["optim/scheduler=cosine", "paths.output_dir=/r"]), tmp_path / RECORD)
    with pytest.raises(ConfigError) as refused:
        check_resume(tmp_path, compose(["optim/scheduler=cosine", "trainer.max_epochs=300", "optim.lr=0.5"]), {})
    assert "optim.lr was 0.001, now 0.5" in str(refused.value) and "optim.scheduler.T_max was 200, now 300" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["trainer.resume=true", "optim.lr=0.5"], "(optim.lr was 0.001, now 0.5)"),
        (["trainer.resume=true", "loss=kd"], "(loss was ce, now kd"),
        (["trainer.resume=true", "weighting=learnable"], "(weighting was fixed, now learnable"),
        ([], "already holds a run (checkpoints/last.pt): continue it with trainer.resume=true"),
    ],
    ids=["changed-lr", "changed-loss", "changed-weighting", "rerun"],
)
def test_a_refused_resume_or_rerun_changes_no_byte_of_the_directory(
    args: list[str], said: str, finished_run: Path, monkeypatch, capfd
) -> None:
    before = snapshot(finished_run)
    plain = [a for a in QUICK if not a.startswith("loss=")] if any(a.startswith("loss=") for a in args) else QUICK
    code, _, err = cli(
        monkeypatch, capfd, *plain, *args, f"hydra.run.dir={finished_run}", f"paths.root={finished_run.parent}"
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("distillab: error: "), err
    assert said in err
    assert snapshot(finished_run) == before  # every file's bytes, and no file added or removed


def test_a_rerun_into_a_run_whose_checkpoints_were_deleted_is_refused(
    finished_run: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    shutil.rmtree(copy / "checkpoints")
    before = snapshot(copy)
    code, _, err = cli(monkeypatch, capfd, *QUICK, f"hydra.run.dir={copy}", f"paths.root={tmp_path}")
    assert code == 2 and "already holds a run (.hydra/config.yaml)" in err
    assert snapshot(copy) == before  # metrics.json and the events not rewritten or mixed


def test_a_resume_may_extend_the_epochs_and_says_so_and_a_finished_resume_does_nothing(
    finished_run: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    before = snapshot(copy)
    common = [*QUICK, f"hydra.run.dir={copy}", f"paths.root={tmp_path}", "trainer.resume=true"]
    code, out, err = cli(monkeypatch, capfd, *common)  # nothing left to do: nothing written
    assert code == 0 and "already completed this run" in out, err
    assert snapshot(copy) == before
    code, out, _ = cli(monkeypatch, capfd, *common, "trainer.max_epochs=2")
    assert code == 0, out
    assert "resume changes trainer.max_epochs from 1 to 2" in (copy / "distillab.log").read_text()
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert "max_epochs: 2" in (copy / ".hydra" / "config.yaml").read_text()  # the record says how long it trained
    assert "trainer.max_epochs=2" in (copy / ".hydra" / "overrides.yaml").read_text()  # and the report's label
    trained = snapshot(copy)
    code, out, err = cli(monkeypatch, capfd, *common)  # 1 epoch asked, 2 done: nothing to do, nothing written
    assert code == 0 and "already completed this run (metrics.json: 2 epochs, trainer.max_epochs=1)" in out, err
    assert snapshot(copy) == trained


def test_a_resume_refused_after_its_checks_began_keeps_the_record_and_says_why_in_the_log(
    finished_run: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    """A resume that may change `trainer.max_epochs` but whose checkpoint cannot be read: the record keeps the
    epochs it was trained with (it is rewritten only when the resume is about to train)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    last = copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    before = snapshot(copy)
    common = [*QUICK, f"hydra.run.dir={copy}", f"paths.root={tmp_path}", "trainer.resume=true"]
    code, _, err = cli(monkeypatch, capfd, *common, "trainer.max_epochs=5")
    assert code == 2 and "is not a readable torch checkpoint" in err, err
    after = snapshot(copy)
    assert after.pop("distillab.log") != before.pop("distillab.log")  # the run's journal says what was refused
    assert after == before


# -- 3. the dry run checks what the first step will meet ----------------------------------------------


class Returns(LossTerm):
    """A user's loss term that returns something a loss term must not: `kind` says what."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, outputs):  # type: ignore[no-untyped-def]
        logits = outputs.student.out
        return {
            "vector": lambda: logits.pow(2).mean(1),
            "detached": lambda: logits.pow(2).mean().detach(),
            "float": lambda: 0.5,
            "int": lambda: logits.argmax(1).sum(),
            "notfinite": lambda: logits.mean() * float("nan"),
            "teacher": lambda: (logits - outputs.teacher.out).pow(2).mean(),  # without needs_teacher = True
        }[self.kind]()


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("vector", "returns a tensor of shape (64,), not a scalar (reduce it, e.g. with .mean())"),
        ("detached", "returns a tensor without a gradient (detached, or computed under no_grad)"),
        ("float", "returns a float, not a tensor"),
        ("int", "returns a torch.int64 tensor, not a floating-point one"),
        ("notfinite", "gives nan on the first batch"),
    ],
)
def test_a_loss_term_that_returns_no_finite_scalar_is_refused_before_training(
    kind: str, said: str, tmp_path: Path, monkeypatch
) -> None:
    cfg = compose_in(tmp_path, "loss=ce", f"+loss.terms.mine={{_target_:{__name__}.Returns,kind:{kind}}}",
                     "+loss.weights.mine=1.0")  # fmt: skip
    trained = []
    monkeypatch.setattr("distillab.training.Trainer.fit", lambda *a, **k: trained.append(1))
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert str(refused.value).startswith(f"loss.terms.mine {said}: a loss term returns a finite scalar tensor")
    assert not trained


def test_a_term_that_reads_the_teacher_without_declaring_it_is_told_to(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_in(tmp_path, "loss=ce", f"+loss.terms.mine={{_target_:{__name__}.Returns,kind:teacher}}",
                     "+loss.weights.mine=1.0")  # fmt: skip
    monkeypatch.setattr("distillab.training.Trainer.fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert (
        "loss.terms.mine fails on the first batch (RuntimeError: it reads outputs.teacher, but no term of this "
        in str(refused.value)
    )
    assert "set needs_teacher = True on the term's class" in str(refused.value)


def labelled(batch_size: int, label: int, **_: object) -> DataModule:
    """A user's data whose sample 5 has the label `label` (10 classes)."""
    x, y = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(128) % 10
    y[5] = label
    return DataModule(TensorLoader(x, y, batch_size, shuffle=True), TensorLoader(x, y % 10, batch_size), 1, 8, 10)


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["loss=ce", f"data._target_={__name__}.labelled", "+data.label=12"],
            "the training data has the label 12, outside 0 to 9 (data.num_classes=10): fix the labels",
        ),
        (
            ["loss=ce", f"data._target_={__name__}.labelled", "+data.label=-1"],
            "the training data has the label -1, outside 0 to 9",
        ),
        (
            ["loss=kd", "weighting=gradnorm", "weighting.shared_layer=features.1"],
            "weighting.shared_layer='features.1' is not valid (it has no trainable weights, so GradNorm has no "
            "gradient norms to balance): use a layer with weights",
        ),
        (
            ["loss=kd", "weighting=gradnorm", "weighting.shared_layer=featurs.0"],
            "weighting.shared_layer='featurs.0' is not valid: use a module path of LightNN, such as features.0",
        ),
    ],
    ids=["label-above", "label-negative", "gradnorm-on-a-relu", "gradnorm-on-no-layer"],
)
def test_labels_and_weightings_that_cannot_work_are_refused_before_training(
    overrides: list[str], said: str, tmp_path: Path, monkeypatch
) -> None:
    cfg = compose_in(tmp_path, *overrides)
    monkeypatch.setattr("distillab.training.Trainer.fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert said in str(refused.value)


def test_float_and_negative_labels_are_refused() -> None:
    from distillab.build import check_labels

    with pytest.raises(ConfigError, match=r"has labels of dtype torch.float32: .* from 0 to 9"):
        check_labels(torch.tensor([0.0, 1.0]), 10, "the training data")
    with pytest.raises(ConfigError, match="has the label -1, outside 0 to 9"):
        check_labels(torch.tensor([3, -1]), 10, "the training data")
    check_labels(torch.tensor([0, 9]), 10, "the training data")  # the ends of the range are labels


def test_nash_mtl_with_one_weighted_term_is_refused() -> None:
    pytest.importorskip("cvxpy")
    from distillab.weighting import JacobianAggregation

    nash = {"_target_": "torchjd.aggregation.NashMTL", "_partial_": True}
    with pytest.raises(ConfigError, match="NashMTL bargains between the loss terms and this loss has 1"):
        JacobianAggregation({"ce": 1.0, "kd": 0.0}, nash)


# -- 4. the operating system's errors are sentences, and the status survives them --------------------


def _disk_full_at_second_last_pt(monkeypatch) -> None:
    """The second write of checkpoints/last.pt finds the disk full after its first blocks (the OS refusing
    Python's write, as a full file system does)."""
    import builtins

    import distillab.files

    calls: list[str] = []

    class FillsUp:
        def __init__(self, handle) -> None:  # type: ignore[no-untyped-def]
            self.handle = handle

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            self.handle.write(bytes(data)[:4096])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opened(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        calls.append(Path(path).name)
        full = ".last.pt." in Path(path).name and sum(".last.pt." in c for c in calls) >= 2
        return FillsUp(handle) if full else handle

    monkeypatch.setattr(distillab.files, "open", opened, raising=False)


def test_disk_full_during_a_checkpoint_is_one_sentence_and_keeps_the_status(tmp_path: Path, monkeypatch, capfd) -> None:
    run_dir = tmp_path / "run"
    _disk_full_at_second_last_pt(monkeypatch)
    code, _, err = cli(
        monkeypatch, capfd, *QUICK, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", f"paths.root={tmp_path}",
        f"paths.cache_dir={SHARED_CACHE}",
    )  # fmt: skip
    monkeypatch.undo()
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("distillab: writing ") and "(No space left on device)" in err
    assert not list(run_dir.rglob("*.tmp"))  # the partial file went
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1  # the previous one stays
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]


def test_where_the_status_cannot_be_written_the_log_says_so(tmp_path: Path, caplog) -> None:
    from distillab.errors import WriteFailed
    from distillab.run_logger import record_failure

    (tmp_path / "metrics.json").mkdir()  # replacing it fails, as a full or read-only disk would
    record_failure(tmp_path, "failed", WriteFailed("x", OSError(errno.ENOSPC, "full")))
    assert "the run's status (failed) could not be recorded: writing" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_run_directory_that_is_not_utf8_is_refused_before_training(tmp_path: Path) -> None:
    bad = os.fsencode(str(tmp_path)) + b"/run\xff"
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"distillab", *map(str.encode, QUICK), b"hydra.run.dir='" + bad + b"'",
         f"paths.root={tmp_path}".encode()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distillab: error: the run directory ") and "is not UTF-8" in done.stderr
    assert done.stderr.count("\n") == 1


# -- 5. a sweep stops when told ----------------------------------------------------------------------


def test_sigterm_in_a_sweep_starts_no_further_job_and_the_printed_command_continues_it(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["--multirun", *QUICK, "trainer.max_epochs=2", "trainer.seed=0,1", f"paths.root={tmp_path}",
            f"paths.cache_dir={SHARED_CACHE}", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    interrupt_after_step(monkeypatch, 30)  # epoch 2 of the first job (23 steps an epoch)
    code, out, _ = cli(monkeypatch, capfd, *args)
    monkeypatch.undo()
    assert code == 128 + signal.SIGTERM
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["seed=0"]  # job 1 never started
    assert json.loads((sweep_dir / "seed=0" / "metrics.json").read_text())["status"] == "interrupted"
    command = out.strip().splitlines()[-1].split("to continue it (finished jobs are kept): ", 1)[1]
    assert command.endswith(f"hydra.sweep.dir={sweep_dir} trainer.resume=true")

    import shlex

    code, out, _ = cli(monkeypatch, capfd, *shlex.split(command)[3:])
    assert code == 0
    assert "seed=1 had not begun: it starts from the beginning" in out and "does not exist" not in out  # expected
    for seed in (0, 1):
        metrics = json.loads((sweep_dir / f"seed={seed}" / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 2


# -- also weak: one line each --------------------------------------------------------------------------


class TupleNet(nn.Module):
    """A user's student that returns (logits, features)."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.fc(x.flatten(1)), x


class NoParameters(nn.Module):
    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["loss=ce", "model.student"], "model.student returns a tuple, not a tensor: a network returns its logits"),
        (["loss=kd", "model.teacher"], "model.teacher returns a tuple, not a tensor: a network returns its logits"),
        (["loss=ce", "model.student", "NoParameters"], "model.student (NoParameters) has no parameters"),
    ],
    ids=["student-tuple", "teacher-tuple", "student-without-parameters"],
)
def test_a_network_that_returns_a_tuple_or_has_no_parameters_is_one_sentence(
    overrides: list[str], said: str, tmp_path: Path
) -> None:
    """A teacher returning (logits, features) was an AttributeError from deep inside the build; now it is the
    student's sentence, naming the teacher (refused before the teacher would be trained)."""
    loss, key, *model = overrides
    target = f"{key}._target_={__name__}.{model[0] if model else 'TupleNet'}"
    cfg = compose_in(tmp_path, loss, target, "teacher.train_if_missing=false", shared_cache=False)
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert str(refused.value).startswith(said)


def test_a_checkpoint_path_that_is_a_directory_or_a_device_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory: give the path of a .pt file"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="/dev/null is not a regular file"):
        load_checkpoint("/dev/null")
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_flags_after_the_overrides_and_keys_set_twice() -> None:
    from distillab.command_line import flags_first, set_twice

    typed = ["loss=kd", "--config-dir", "/c", "loss.alpha=0.5", "-cn=other", "loss.alpha=0.9"]
    assert flags_first(typed) == ["--config-dir", "/c", "-cn=other", "loss=kd", "loss.alpha=0.5", "loss.alpha=0.9"]
    assert set_twice(typed) == {"loss.alpha": ["0.5", "0.9"]}


def test_a_train_subset_larger_than_the_split_says_it_is_capped(caplog) -> None:
    import numpy as np

    from distillab.data.subset import stratified_indices

    assert stratified_indices(np.arange(50) % 5, 100_000, seed=0) is None
    assert "data.train_subset=100000 is more than the 50 training samples: all of them are used" in caplog.text


def test_a_corrupt_teacher_cache_entry_says_which_to_delete(tmp_path: Path) -> None:
    from tests.conftest import run_in

    run_in(tmp_path / "first", "loss=kd", "trainer.max_epochs=1", "teacher.max_epochs=1", shared_cache=False)
    (entry,) = (tmp_path / "first" / "cache" / "teachers").glob("*/teacher.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated (a full disk, a killed copy)
    cfg = compose_in(tmp_path / "first", "loss=kd", "trainer.max_epochs=1", "teacher.max_epochs=1", shared_cache=False)
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert str(refused.value) == (
        f"the teacher cache entry {entry.parent} is corrupt (teacher.pt cannot be read): delete {entry.parent} and run "
        "again to retrain it."
    )


@pytest.mark.parametrize("typed_dir", [False, True], ids=["default-dir", "typed-dir"])
def test_a_read_only_root_is_one_sentence(typed_dir: bool, tmp_path: Path, monkeypatch, capfd) -> None:
    read_only = tmp_path / "ro"
    original = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if str(self).startswith(str(read_only)):  # (root may write anywhere: the file system says no instead)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    typed = [f"hydra.run.dir={read_only / 'run'}"] if typed_dir else []
    code, _, err = cli(monkeypatch, capfd, *QUICK, f"paths.root={read_only}", *typed)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"distillab: error: cannot create {read_only}")
    assert err.endswith(
        ": Read-only file system: give the run a writable place (paths.root=... or hydra.run.dir=...).\n"
    )


def test_a_sweep_rerun_into_a_finished_one_refuses_each_job_in_one_line(tmp_path: Path, monkeypatch, capfd) -> None:
    """Each job's refusal is its sentence, naming the sweep's directory key; the sweep's end (Hydra raising the
    first failed job) is that line again, not a traceback."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", *QUICK, "trainer.seed=0,1", f"paths.root={tmp_path}", f"hydra.sweep.dir={sweep}"]
    args += [f"paths.cache_dir={SHARED_CACHE}"]
    code, _, err = cli(monkeypatch, capfd, *args)
    assert code == 0, err
    before = snapshot(sweep)
    code, out, err = cli(monkeypatch, capfd, *args)
    assert code == 1 and "Traceback" not in err
    refusal = f"distillab: error: {sweep / 'seed=0'} already holds a run (checkpoints/last.pt): continue it with "
    assert (out + err).count(refusal) == 2  # logged by the job, and Hydra's last line
    assert "(leave hydra.sweep.dir at its default)" in err and "hydra.run.dir" not in err
    assert snapshot(sweep) == before


def test_a_writer_that_fails_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    """torch's own zip writer reports a full disk as a RuntimeError: whatever the writer raises, the partial file
    goes and the old one stays. (Checkpoints are serialised in memory first, so the OS's refusal reaches
    `write_atomic` as the OSError that names it: the test above.)"""
    from distillab.files import write_atomic

    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")

    def fails(handle) -> None:  # type: ignore[no-untyped-def]
        handle.write(b"PK\x03\x04 the first blocks")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 180032 vs 179920")

    with pytest.raises(RuntimeError, match="unexpected pos"):
        write_atomic(target, fails)
    assert target.read_bytes() == b"the previous checkpoint" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("module", "function"),
    [("distillab.runner", "build_data"), ("distillab.cli", "validate")],
    ids=["while-building", "while-checking-the-command-line"],
)
def test_a_signal_before_training_is_one_line_with_the_command_that_continues(
    module: str, function: str, tmp_path: Path, monkeypatch, capfd
) -> None:
    """SIGTERM while the run is being built, or earlier, while its command line is checked (before its first step),
    is not a silent exit: one line with the resume command, `interrupted` in metrics.json (said as the user sees it,
    not as a private class); the printed command then trains the run."""
    import importlib
    import shlex

    where = importlib.import_module(module)
    original, handler = getattr(where, function), signal.getsignal(signal.SIGTERM)

    def signal_then_go_on(*args):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode, inside the run's set-up
        return original(*args)

    monkeypatch.setattr(where, function, signal_then_go_on)
    run_dir = tmp_path / "run"
    typed = [*QUICK, f"hydra.run.dir={run_dir}", f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    code, _, err = cli(monkeypatch, capfd, *typed)
    assert code == 128 + signal.SIGTERM and err.count("\n") == 1, err
    assert err.startswith("distillab: Interrupted by SIGTERM while the run was not training (before its first step")
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert recorded["status"] == "interrupted"
    assert recorded["error"].startswith("Interrupted: Interrupted by SIGTERM while the run was not training")
    monkeypatch.setattr(where, function, original)
    command = shlex.split(err.split("; to continue: ")[1])
    assert command[:3] == ["python", "-m", "distillab"]
    code, _, err = cli(monkeypatch, capfd, *command[3:])
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is put back


def test_a_run_from_python_into_a_used_directory_names_the_key_it_set(tmp_path: Path) -> None:
    """In a notebook the directory is `paths.output_dir` (no hydra.run.dir was typed): the refusal names it."""
    cfg = compose_in(tmp_path, "loss=ce", "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'nb'}")
    run(cfg)
    with pytest.raises(
        ConfigError,
        match=r"already holds a run \(checkpoints/last.pt\): .*\(set paths.output_dir to a new directory\)\.$",
    ):
        run(compose_in(tmp_path, "loss=ce", "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'nb'}"))


def test_a_run_refused_before_training_leaves_its_directory_to_the_corrected_command(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """metrics.json says `refused` (nothing trained), and the same directory takes the corrected run: it was held
    for good (`already holds a run`, then a resume refused for the very value that was corrected)."""
    run_dir = tmp_path / "r"
    typed = [*QUICK, f"hydra.run.dir={run_dir}", f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    code, _, err = cli(monkeypatch, capfd, *typed, "optim.lr=-1")
    assert code == 2 and json.loads((run_dir / "metrics.json").read_text())["status"] == "refused", err
    code, _, err = cli(monkeypatch, capfd, *typed, "optim.lr=0.002")
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert "optim.lr=0.002" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # its record, not the refused one


def test_a_signal_outside_training_records_interrupted_but_leaves_a_finished_record_and_keeps_progress(
    tmp_path: Path,
) -> None:
    """A continued sweep stopped while it looks at a finished job, or a group stopped after one member completed or
    failed: those records stay. A run stopped again before its resumed training got anywhere keeps the progress
    its first stop recorded."""
    from distillab.errors import Interrupted
    from distillab.run_logger import record_failure

    stop = Interrupted("Interrupted by SIGTERM while the run was not training", signal.SIGTERM)
    for status in ("completed", "failed"):
        record = {"status": status, "best_val_acc": 90.0}
        (tmp_path / "metrics.json").write_text(json.dumps(record))
        record_failure(tmp_path, "interrupted", stop)
        assert json.loads((tmp_path / "metrics.json").read_text()) == record
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "old", "epochs": 7}))
    record_failure(tmp_path, "interrupted", stop)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "status": "interrupted",
        "error": "Interrupted: Interrupted by SIGTERM while the run was not training",
        "epochs": 7,
    }
