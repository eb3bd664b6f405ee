"""Bad input as a user meets it on the command line: the user's own config directories, files that are
empty or not YAML, devices this machine lacks, typos in added keys; and what a run leaves behind for the
next one (temporary files of an interrupted write, the teacher's lock)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distillab.errors import ConfigError, TeacherInterrupted
from distillab.rundir import remove_partial_writes
from distillab.runner import run
from distillab.teacher import cache_entry, teacher_models
from tests.conftest import SHARED_CACHE, compose_in, interrupt_after_step

MY_LOSS = """\
# a user's own loss choice: cross-entropy under a name of their own
terms:
  mine:
    _target_: distillab.losses.CrossEntropy
weights:
  mine: 1.0
"""


def distillab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distillab", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def one_sentence(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distillab: error: "), done.stderr
    return lines[0].removeprefix("distillab: error: ")


@pytest.mark.slow
def test_a_choice_from_the_users_own_config_dir_trains(tmp_path: Path) -> None:
    (tmp_path / "my_conf" / "loss").mkdir(parents=True)
    (tmp_path / "my_conf" / "loss" / "my_loss.yaml").write_text(MY_LOSS)
    done = distillab(
        "--config-dir",
        "my_conf",
        "loss=my_loss",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and set(metrics["final_weights"]) == {"mine"}


USER_TERM = """\
import torch.nn.functional as F

from distillab.losses import LossTerm


class MyLoss(LossTerm):
    def forward(self, outputs):
        return F.cross_entropy(outputs.student.out, outputs.targets)
"""


def test_a_users_loss_class_python_cannot_find_is_said_once_with_the_pythonpath_hint(tmp_path: Path) -> None:
    """Hydra logs its own error when a class cannot be located; distillab imports the target itself, so the
    user reads one sentence, which says what --config-dir does not do and what PYTHONPATH does."""
    (tmp_path / "my_conf" / "loss").mkdir(parents=True)
    (tmp_path / "my_conf" / "loss" / "my_loss.yaml").write_text(
        MY_LOSS.replace("distillab.losses.CrossEntropy", "my_losses.MyLoss")
    )
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_losses.py").write_text(USER_TERM)  # not in the working directory: not on the path
    args = ("--config-dir", "my_conf", "loss=my_loss", "trainer.max_epochs=1", f"paths.cache_dir={SHARED_CACHE}")
    message = one_sentence(distillab(*args, f"hydra.run.dir={tmp_path / 'r1'}", cwd=tmp_path))
    assert message == (
        "loss.terms.mine._target_='my_losses.MyLoss' cannot be imported: Python finds no module 'my_losses' (a module "
        "of your own must be on Python's path: add the directory that holds it to PYTHONPATH, as in PYTHONPATH=DIR "
        "python -m distillab ...; --config-dir adds config files, not Python modules)."
    )
    path = os.pathsep.join([str(tmp_path / "code"), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(  # the hint, followed, trains
        [sys.executable, "-m", "distillab", *args, f"hydra.run.dir={tmp_path / 'r2'}"],
        **dict(cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": path}),
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("distillab.losses.CrossEntropi", "distillab.losses has no 'CrossEntropi' (did you mean CrossEntropy?)."),
        ("distillab.nope.Thing", "distillab has no 'nope'."),
        ("distillab.losses.CrossEntropy.nope", "distillab.losses.CrossEntropy has no attribute 'nope'."),
        ("broken_module.Thing", "importing broken_module raised RuntimeError: a bug in the user's module."),
        ("needs_missing.Thing", "importing needs_missing raised ModuleNotFoundError: No module named 'not_there'."),
    ],
)
def test_a_target_that_cannot_be_imported_says_why_in_one_sentence(
    target: str, expected: str, tmp_path: Path, monkeypatch
) -> None:
    from distillab.errors import ConfigError
    from distillab.instantiate import locate

    (tmp_path / "broken_module.py").write_text('raise RuntimeError("a bug in the user\'s module")\n')
    (tmp_path / "needs_missing.py").write_text("import not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("broken_module", "needs_missing"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ConfigError) as error:
        locate(target, "loss.terms.mine")
    assert str(error.value) == f"loss.terms.mine._target_={target!r} cannot be imported: {expected}"


def test_a_weighting_whose_solver_is_not_installed_names_the_extra_that_installs_it(
    tmp_path: Path, monkeypatch
) -> None:
    """`make run` installs torchjd without cvxpy (the `jd` extra has it): CAGrad's constructor then raises
    ImportError, which is a missing package to install, not keys to check. (None in sys.modules is what
    `importlib.util.find_spec`, torchjd's check, reads as not installed.)"""
    import torchjd.aggregation  # noqa: F401 (imported with cvxpy present, as later tests in this process need it)

    monkeypatch.setitem(sys.modules, "cvxpy", None)
    cfg = compose_in(tmp_path, "weighting=cagrad", "trainer.max_epochs=1")
    with pytest.raises(ConfigError) as error:
        run(cfg)
    said = str(error.value)
    assert said.startswith("weighting.aggregator could not be built (torchjd.aggregation.CAGrad raised ImportError: ")
    assert said.endswith(
        "a package it needs is missing or cannot be imported in this environment: pip install -e '.[jd]' in a "
        "checkout, else 'distillab[jd]'."
    )
    assert "\n" not in said and "check its keys" not in said


def test_a_model_from_an_optional_package_that_is_not_installed_names_its_extra(monkeypatch) -> None:
    from distillab.instantiate import locate

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError) as error:
        locate("timm.create_model", "model.student")
    assert str(error.value) == (
        "model.student._target_='timm.create_model' cannot be imported: timm is not installed in this environment: "
        "pip install -e '.[timm]' in a checkout, else 'distillab[timm]'."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "my_loss.yaml is empty: a config file holds at least one key (or delete it)."),
        (
            "terms:\n\tmine: 1\n",
            "my_loss.yaml line 2 is not valid YAML (found character '\\t' that cannot start any token)",
        ),
    ],
    ids=["empty", "unparsable"],
)
def test_an_empty_or_unparsable_file_in_the_users_dir_is_one_sentence_naming_it(
    text: str, expected: str, tmp_path: Path
) -> None:
    (tmp_path / "my_conf" / "loss").mkdir(parents=True)
    (tmp_path / "my_conf" / "loss" / "my_loss.yaml").write_text(text)
    message = one_sentence(distillab("--config-dir", "my_conf", "loss=my_loss", cwd=tmp_path))
    assert str(tmp_path / "my_conf" / "loss") in message and expected in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # (optim.weight_decay=-1, +loss.temprature=8 and trainer.device=cuda are examples in docs/errors.md,
        # compared word for word by tests/test_readme.py)
        ("+trainr.max_epochs=3", "+trainr adds a key that no part of the run reads: did you mean trainer?"),
        # Hydra's own errors before the run starts, said in one sentence
        ("trainr.max_epochs=3", "trainr.max_epochs is not a key of the config: did you mean trainer.max_epochs?"),
        (
            "loss=kd loss.temprature=8 trainer.max_epoch=3",  # two typos: the first is named, with its fix
            "loss.temprature is not a key of loss: did you mean loss.temperature?",
        ),
        (
            "optim.zzzz=1",
            "optim.zzzz is not a key of optim: optim has scheduler, lr, weight_decay, warmup_epochs, "
            "warmup_start_factor, grad_clip_norm.",
        ),
        ("loss.temperature.x=1", "loss.temperature.x is not a key: loss.temperature is a single value."),
        ("paths=defalt", "paths=defalt is not a choice of paths: did you mean paths=default?"),
        (
            "loss.temperature=1,2",
            "loss.temperature=1,2 is ambiguous: write loss.temperature=[1,2] for a list, loss.temperature='1,2' for "
            "a string, or add --multirun to sweep over the values.",
        ),
        ("loss.alpha=nan", "loss.alpha=nan is not valid: use a number >= 0 and <= 1 (the task term gets 1 - alpha)."),
        ("loss.alpha=abc", "loss.alpha='abc' is not valid: use a number >= 0 and <= 1 (the task term gets 1 - alpha)."),
        ("loss.alpha=", "loss.alpha='' is not valid: use a number >= 0 and <= 1 (the task term gets 1 - alpha)."),
        ("teacher.max_epochs=nan", "teacher.max_epochs=nan is not valid: use a finite number."),
        ("optim.lr=100", "optim.lr=100 is not valid: use a finite number > 0 and <= 10."),
        (
            "optim/scheduler=plateau optim.scheduler.monitor=val/psnr",
            "optim.scheduler.monitor='val/psnr' is not a metric of this task: use one of val/acc, val/loss.",
        ),
        (
            "teacher.optim.lr=0",
            "training the teacher deep_nn: teacher.optim.lr=0 is not valid: use a finite number > 0 and <= 10.",
        ),
        (
            "model.student.num_classes=3",
            "model.student gives outputs of shape (3,) per sample, but the data has 10 classes",
        ),
    ],
)
def test_values_are_checked_for_what_they_mean(override: str, expected: str, tmp_path: Path) -> None:
    args = [*override.split(), f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'r'}"]
    assert expected in one_sentence(distillab(*args, cwd=tmp_path))


def test_the_leftovers_of_an_interrupted_write_are_removed_and_never_read(tmp_path: Path) -> None:
    """A `.<name>.<pid>.tmp` file is what `save_atomic` leaves when killed before its rename."""
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / "checkpoints" / ".last.pt.4242.tmp", tmp_path / ".metrics.json.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    kept = tmp_path / "checkpoints" / "notes.txt"
    kept.write_text("mine")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and kept.read_text() == "mine"


def test_a_resume_asking_for_fewer_epochs_than_the_run_trained_is_refused(tmp_path: Path) -> None:
    from distillab.runner import resume_state

    cfg = compose_in(tmp_path, "~experiment", "loss=ce", "trainer.max_epochs=3", "data.train_subset=64")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(ConfigError) as refused:
        resume_state(run_dir, True, max_epochs=2)
    assert str(refused.value) == (
        "trainer.max_epochs=2 is fewer than the 3 epochs this run has begun (checkpoints/last.pt): resume with "
        "trainer.max_epochs=3 or more, or with the command printed when it stopped (which keeps its own)."
    )
    assert resume_state(run_dir, True, max_epochs=3)["epoch"] == 3  # as many: nothing left, and nothing refused
    # stopped partway through its third epoch: two done, the third begun
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["epoch"], state["progress"]["epoch"], state["progress"]["batch"] = 2, 2, 1
    torch.save(state, last)
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=2 is fewer than the 3 epochs this run has begun"):
        resume_state(run_dir, True, max_epochs=2)


def test_resuming_beside_a_leftover_tmp_file_continues_from_the_real_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    common = ["~experiment", "loss=ce", "trainer.progress=false", f"paths.cache_dir={SHARED_CACHE}"]
    first = distillab(*common, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    leftover = run_dir / "checkpoints" / ".last.pt.999.tmp"
    leftover.write_bytes(b"\x00" * 10)
    resumed = distillab(
        *common, "trainer.max_epochs=2", "trainer.resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not leftover.exists()
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    log = (run_dir / "distillab.log").read_text()
    assert f"removed {leftover}, left by an interrupted write" in log
    assert f"resuming {run_dir} from step " in log and "starting from the beginning" not in log  # not restarted


def test_a_signal_while_the_teacher_trains_names_its_cache_entry(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_in(tmp_path, shared_cache=False)
    entry = cache_entry(cfg, teacher_models(cfg)[0])
    interrupt_after_step(monkeypatch, 1)  # the teacher's first step: it trains before the student
    with pytest.raises(TeacherInterrupted) as stopped:
        run(cfg)
    message = str(stopped.value)
    assert message.startswith("Interrupted by SIGTERM while training the teacher deep_nn") and str(entry) in message
    assert not (entry / "teacher.pt").exists()  # nothing of an unfinished teacher is kept


def test_a_run_waiting_for_another_process_teacher_says_so(tmp_path: Path, caplog) -> None:
    from filelock import FileLock

    cfg = compose_in(tmp_path, shared_cache=False)
    entry = cache_entry(cfg, teacher_models(cfg)[0])
    entry.parent.mkdir(parents=True)
    held, waiting = threading.Event(), threading.Event()

    class SeesTheWait(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another process is training" in record.getMessage():
                waiting.set()

    def another_process() -> None:  # a separate open of the lock file conflicts as another process's would
        with FileLock(str(entry.parent / f"{entry.name}.lock")):
            held.set()
            waiting.wait(timeout=120)  # released once the run has said that it waits

    handler = SeesTheWait()
    logging.getLogger("distillab").addHandler(handler)
    holder = threading.Thread(target=another_process)
    holder.start()
    assert held.wait(timeout=60), "the other process never took the lock"
    try:
        with caplog.at_level(logging.INFO, logger="distillab"):
            run(cfg)
    finally:
        logging.getLogger("distillab").removeHandler(handler)
        waiting.set()
        holder.join()
    assert f"teacher: another process is training {entry}" in caplog.text
    assert (entry / "teacher.pt").is_file()


def test_adding_a_config_group_is_a_choice_and_adding_an_unread_key_is_a_typo() -> None:
    from distillab.config import compose
    from distillab.errors import ConfigError
    from distillab.validate import validate

    group = ["~experiment", "+experiment=quickstart"]
    validate(compose(group), group)  # Hydra checks the choice; nothing is refused here
    typo = ["+loss.temprature=8"]
    with pytest.raises(ConfigError, match=r"^\+loss\.temprature adds a key that no part of the run reads"):
        validate(compose(typo), typo)


def test_a_crash_while_training_the_teacher_reaches_the_user_as_itself(monkeypatch, tmp_path: Path) -> None:
    """The student's set-up turns what it raises into one sentence, but a teacher's training is not set-up:
    what it raises passes through unchanged (with its traceback and `status: failed`, as a student's would)."""
    from distillab import runner
    from distillab.errors import ConfigError, SetupFailed

    def crash(cfg, label: str = "student"):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "run", crash)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised, runner.setting_up("teaching", tmp_path):
        runner._train_teacher(OmegaConf.create({}))
    assert not isinstance(raised.value, ConfigError)
    with pytest.raises(SetupFailed, match="teaching failed before training"), runner.setting_up("teaching", tmp_path):
        raise RuntimeError("the cache entry is unreadable")


def test_a_key_the_config_lacks_is_named_with_what_would_be_valid() -> None:
    from distillab.command_line import check_keys

    cases = {
        ("trainr.foo.bar=1",): "did you mean trainer (which has no foo.bar either)?",
        ("loss.temperature.x=1",): "loss.temperature.x is not a key: loss.temperature is a single value.",
        ("hydra.job.chdirr=true",): "hydra.job.chdirr is not a key of hydra.job: did you mean hydra.job.chdir?",
        ("loss=multi_teacher", "teachers.0.x=1"): "teachers.0.x is not a key of teachers.0: teachers.0 has in_channels",
        ("loss=multi_teacher", "teachers.5.x=1"): "teachers.5.x is not a key: teachers is a list of 2 (index it",
        # the key exists for kd, which the sweep also runs; ce (the composition checked) lacks it
        ("-m", "loss=ce,kd", "loss.temperature=1"): "loss.temperature is not a key of loss (with loss=ce, one of",
        # a group's choice written as a key: with a dot, misspelt, or by its last part
        ("model.student=mlp",): "model.student=mlp would put the string 'mlp' where a config of the model/student "
        "group belongs: to choose one, write model/student=mlp.",
        ("optim.scheduler=cosine",): "write optim/scheduler=cosine.",
        ("model.student=1",): "model.student=1 would put 1 where a config of the model/student group belongs: to "
        "choose one, write model/student=NAME (conv_autoencoder, deep_nn, light_nn, mlp, mobilenetv2, resnet110,",
        ("optim.scheduler=true",): "write optim/scheduler=NAME (cosine, multistep, none, plateau, step).",
        ("teacher.optim=2.5",): "teacher.optim=2.5 would put 2.5 where a config of the optim@teacher.optim group",
        ("model.teacher=resnt8",): "the string 'resnt8' where a config of the model/teacher group belongs: to choose "
        "one, write model/teacher=NAME (conv_autoencoder,",
        ("model/studnt=mlp",): "model/studnt is not a config group: did you mean model/student?",
        ("optim/schedular=cosine",): "optim/schedular is not a config group: did you mean optim/scheduler?",
        ("student=mlp",): "student is not a key of the config: to choose a student config, write model/student=...",
        ("-m", "model.student=light_nn,mlp"): "model.student=light_nn would put the string 'light_nn' where",
        ("-m", "loss=ce,kd", "model.student=mlp"): "model.student=mlp would put the string 'mlp' where a config",
        ("teacher=resnet8",): "teacher=resnet8 would replace the node teacher with the string 'resnet8': set its keys "
        "(teacher.x=...); to choose a teacher config, write model/teacher=resnet8.",
    }
    for args, expected in cases.items():
        with pytest.raises(ConfigError) as raised:
            check_keys(list(args))
        assert expected in str(raised.value), args
    for fine in (
        ["loss=kd", "loss.temperature=2"],
        ["+trainr.x=1"],
        ["~teacher.checkpoint"],
        ["trainer.max_epochs=["],
        ["optim.scheduler=null"],  # no scheduler (a test below trains it)
        ["model.student.dropout=0.1"],
        ["teacher.optim=${optim}"],  # another key's config is a config
    ):
        check_keys(fine)  # keys it has; added and deleted keys (validate's); malformed overrides (Hydra's parser)


def test_the_key_check_reads_sweeps_experiments_and_flags_as_hydra_does(tmp_path: Path) -> None:
    from distillab.command_line import check_keys

    (tmp_path / "u=1" / "loss").mkdir(parents=True)
    (tmp_path / "u=1" / "loss" / "mine.yaml").write_text(MY_LOSS)
    fine = [
        ["experiment=sweep_kd", "loss.temperature=2,4"],  # the experiment makes it a multirun
        ["hydra.mode=MULTIRUN", "trainer.seed=0,1"],
        ["-m", "loss=glob(k*)", "loss.temperature=3"],  # the choices are Hydra's to list
        ["--config-dir", str(tmp_path / "u=1"), "loss=mine"],  # a flag's value is not an override
    ]
    for args in fine:
        check_keys(args)
    refused = {
        ("-m", "loss=kd,ce", "loss.temperature=2"): "loss.temperature is not a key of loss (with loss=ce, one of",
        ("loss=fitnet", "loss.terms.fitnet.projector.batch_norm=true"): (
            "loss.terms.fitnet.projector.batch_norm cannot be set: loss.terms.fitnet.projector is another key's "
            "value; set projector.batch_norm instead."
        ),
        ("trainer.seed=0,1",): "trainer.seed=0,1 is ambiguous: write trainer.seed=[0,1] for a list",
    }
    for args, expected in refused.items():
        with pytest.raises(ConfigError) as raised:
            check_keys(list(args))
        assert str(raised.value).startswith(expected), args


def test_a_key_removed_that_a_constructor_would_default_is_refused(tmp_path: Path) -> None:
    from distillab.validate import REQUIRED, validate

    for key in REQUIRED:
        cfg = compose_in(tmp_path, f"~{key}")
        with pytest.raises(ConfigError, match=rf"^{key} is missing \(removed with ~\?\)"):
            validate(cfg)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("loss.temperature=[", "no viable alternative at input '['"),
        ("trainer.max_epochs==3", "extraneous input '='"),
        ("loss.temperature='4", "LexerNoViableAltException"),
    ],
)
def test_an_unreadable_override_is_named_with_hydras_reason(override: str, reason: str, tmp_path: Path) -> None:
    done = distillab(override, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    first, *rest = done.stderr.strip().splitlines()
    assert first == f"distillab: error: {override} is not a valid override; Hydra's parser says:"
    assert any(reason in line for line in rest[:-1]) and "override_grammar" in rest[-1]
    assert not (tmp_path / "r").exists()


def test_a_constructors_complaint_is_quoted_as_one_sentence() -> None:
    """What a library's constructor raises is quoted as it said it (never reworded from its text), under the key."""
    from distillab.instantiate import as_config_error

    node = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "factor": 1.0})
    for said in ("Factor should be < 1.0.", "Factor should be < 1.0"):  # torch's own full stop, or none
        assert str(as_config_error(ValueError(said), node, "optim.scheduler")) == (
            "optim.scheduler could not be built (torch.optim.lr_scheduler.ReduceLROnPlateau raised ValueError: "
            "Factor should be < 1.0): check its keys against torch.optim.lr_scheduler.ReduceLROnPlateau."
        )


def test_a_download_that_fails_offline_is_not_blamed_on_the_keys(monkeypatch, tmp_path: Path) -> None:
    """torchvision's `weights=IMAGENET1K_V1` downloads through torch.hub; offline it raises urllib's URLError (an
    OSError). The sentence says a file could not be fetched and where torch.hub looks for it, not "check its keys"."""
    import urllib.error

    from distillab.instantiate import as_config_error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    node = OmegaConf.create({"_target_": "torchvision.models.resnet18", "weights": "IMAGENET1K_V1"})
    said = str(as_config_error(urllib.error.URLError("[Errno -2] Name or service not known"), node, "model.teacher"))
    assert said.startswith(
        "model.teacher could not be built (torchvision.models.resnet18 raised URLError: <urlopen error [Errno -2] "
        "Name or service not known>): a file it needs could not be read or downloaded;"
    )
    assert f"put pretrained weights fetched through torch.hub in {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in said
    assert "check its keys" not in said


def test_a_class_refuses_an_argument_by_its_own_name_and_whoever_builds_it_says_where_it_sits() -> None:
    """The cosine term refuses its `projector` in `setup` (the dry run's widths 10 and 128 cannot be pooled to each
    other) and its `student_layer` in its constructor, naming neither key: the build names them under
    loss.terms.cosine (the CLI's sentence is in test_reliability's BAD_INPUT and docs/errors.md), and the same class
    built under another key is named there."""
    import torch

    from distillab.build import naming, naming_term
    from distillab.errors import ConfigError, InvalidArgument
    from distillab.instantiate import instantiate
    from distillab.losses import Cosine
    from distillab.objective import ModelOutput, Outputs

    node = {"_target_": "distillab.losses.Cosine", "student_layer": "s", "teacher_layer": "t", "projector": None}
    student, teacher = ModelOutput(torch.zeros(2, 10), {"s": torch.zeros(2, 10)}), ModelOutput(torch.zeros(2, 10))
    teacher.features["t"] = torch.zeros(2, 128)
    outputs = Outputs(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), student, [teacher])
    said = "projector=None is not valid (the student's width 10 and the teacher's 128 are not multiples of each other"
    with pytest.raises(InvalidArgument) as refused:
        Cosine("s", "t").setup(outputs)
    assert str(refused.value).startswith(said)  # its own name, no key
    with pytest.raises(InvalidArgument) as refused, naming_term("cosine"):
        Cosine("s", "t").setup(outputs)
    assert str(refused.value).startswith(f"loss.terms.cosine.{said}")
    for key in ("loss.terms.cosine", "teacher.loss.terms.kd"):
        term = instantiate(node, key=key)
        with pytest.raises(InvalidArgument) as refused, naming(key):
            term.setup(outputs)
        assert str(refused.value).startswith(f"{key}.{said}")
        with pytest.raises(ConfigError) as refused:
            instantiate({**node, "student_layer": ""}, key=key)
        assert str(refused.value) == (
            f"{key}.student_layer='' is not valid: use a module path such as features.3, or a list of them."
        )


def test_keys_and_arguments_are_named_from_the_signature() -> None:
    from distillab.instantiate import instantiate

    with pytest.raises(ConfigError) as raised:
        instantiate(OmegaConf.create({"_target_": "distillab.losses.KD", "temprature": 4}), "loss.terms.kd")
    assert str(raised.value).startswith(
        "loss.terms.kd.temprature is not an argument of distillab.losses.KD (did you mean "
        "loss.terms.kd.temperature?): valid keys are temperature,"
    )
    node = OmegaConf.create({"_target_": "torch.optim.SGD"})  # SGD needs params, which the caller gives
    with pytest.raises(ConfigError) as raised:
        instantiate(node, "optim")
    assert str(raised.value) == "optim (torch.optim.SGD) needs optim.params: add it to the config."
    assert isinstance(instantiate(node, "optim", params=[torch.nn.Parameter(torch.zeros(1))]), torch.optim.SGD)


def test_a_teachers_run_names_the_keys_the_user_set() -> None:
    """A teacher's own run reads `optim` from `teacher.optim` (and so on): its messages name the user's keys, and
    the same class is named under the key it was built from (no message text is rewritten)."""
    from distillab.errors import InvalidArgument, building, config_choice, config_key, keys_read_from
    from distillab.instantiate import instantiate
    from distillab.teacher import FROM_TEACHER

    kd = {"_target_": "distillab.losses.KD", "temperature": "${loss.temperature}"}
    node = OmegaConf.create({"loss": {"temperature": 0, "terms": {"kd": kd}}})
    messages = []
    for sources in ({}, {**FROM_TEACHER, "model.student": "model.teacher"}):
        with keys_read_from(sources), building(node):  # (building: where an interpolation's source is read)
            with pytest.raises(ConfigError) as raised:
                instantiate(node.loss.terms.kd, "loss.terms.kd")
            messages.append(str(raised.value))
            messages.append(
                f"{config_key('optim.lr')} {config_key('model.student')} {config_choice('optim/scheduler')}"
            )
    assert messages == [
        "loss.terms.kd.temperature=0 (from loss.temperature=0) is not valid: use a finite number > 0 and <= 100.",
        "optim.lr model.student optim/scheduler",
        "teacher.loss.terms.kd.temperature=0 (from teacher.loss.temperature=0) is not valid: use a finite number > 0 "
        "and <= 100.",
        "teacher.optim.lr model.teacher optim/scheduler@teacher.optim.scheduler",
    ]
    assert config_key("optim.lr") == "optim.lr"  # the context ends with the teacher's run
    from distillab.build import check_monitor

    with keys_read_from(FROM_TEACHER), pytest.raises(ConfigError, match=r"^teacher\.optim\.scheduler\.monitor="):
        check_monitor("optim.scheduler.monitor", "val/psnr", ["val/acc"])
    with keys_read_from({**FROM_TEACHER, "model.student": "model.teacher"}):  # whole keys, not only prefixes
        refused = InvalidArgument("train_subset", -5, "an integer >= 1").named("data")
        assert str(refused).startswith("teacher.train_subset=-5 is not valid")
        assert config_key("trainer.max_epochs") == "teacher.max_epochs" and config_key("trainer.precision") == (
            "trainer.precision"
        )


def test_a_key_inside_another_keys_value_is_named_by_the_key_the_user_sets(tmp_path: Path) -> None:
    """`loss.terms.fitnet.projector` is `${projector}`: a projector's refused argument is named `projector.<arg>`
    while the run is built (the key a command line sets), a leaf interpolated from another key by its own path."""
    from distillab.build import naming_term
    from distillab.errors import InvalidArgument, building, config_key

    cfg = compose_in(tmp_path, "loss=fitnet", "projector=linear")
    with building(cfg):
        assert config_key("loss.terms.fitnet.projector.max_parameters") == "projector.max_parameters"
        assert config_key("loss.weights.fitnet") == "loss.weights.fitnet"  # a leaf from ${loss.alpha}: as it is
        with pytest.raises(InvalidArgument) as refused, naming_term("fitnet"):
            raise InvalidArgument("max_parameters", 10, "a limit of at least 8,320").named("projector")
        assert str(refused.value).startswith("projector.max_parameters=10 is not valid")
    assert config_key("loss.terms.fitnet.projector.max_parameters") == "loss.terms.fitnet.projector.max_parameters"


def test_a_loss_of_ones_own_without_weights_is_named_not_the_weighting(tmp_path: Path) -> None:
    """A loss YAML in one's own --config-dir with terms but no `weights:`: the weighting's `${loss.weights}` finds
    nothing. The sentence names the key that is absent and where it belongs, before anything is written."""
    (tmp_path / "conf" / "loss").mkdir(parents=True)
    (tmp_path / "conf" / "loss" / "noweights.yaml").write_text(
        "terms:\n  ce:\n    _target_: distillab.losses.CrossEntropy\n"
    )
    done = distillab(
        "--config-dir", str(tmp_path / "conf"), "loss=noweights", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert one_sentence(done) == (
        "weighting.weights=${loss.weights} refers to loss.weights, which this config does not have: add weights: to "
        "the YAML that builds loss, or set weighting.weights directly."
    )
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("values", "sentence"),
    [
        (  # a reference through a key that is itself a broken reference: the chain is named, not a traceback
            {"teacher": {"max_epochs": "${trainer.max_epochs}"}, "trainer": {"max_epochs": "${trainer.epochs}"}},
            "teacher.max_epochs=${trainer.max_epochs} refers (through trainer.max_epochs=${trainer.epochs}) to "
            "trainer.epochs, which this config does not have: did you mean trainer.max_epochs?",
        ),
        (  # a misspelt key beside the right one is a typo, not a key to add
            {"trainer": {"max_epochs": 3, "seed": "${trainer.sed}"}},
            "trainer.seed=${trainer.sed} refers to trainer.sed, which this config does not have: did you mean "
            "trainer.seed?",
        ),
        (  # a group that is not there at all
            {"trainer": {"seed": "${foo.bar}"}},
            "trainer.seed=${foo.bar} refers to foo.bar, which this config does not have: restore it, or set "
            "trainer.seed directly.",
        ),
        (  # two keys that refer to each other
            {"trainer": {"seed": "${teacher.seed}"}, "teacher": {"seed": "${trainer.seed}"}},
            "trainer.seed=${teacher.seed} refers back to itself (trainer.seed -> teacher.seed -> trainer.seed): set "
            "one of them to a value.",
        ),
        (  # a key read by another that refers to itself
            {"data": {"seed": "${trainer.seed}"}, "trainer": {"seed": "${trainer.seed}"}},
            "data.seed=${trainer.seed} refers to trainer.seed, which refers back to itself (trainer.seed -> "
            "trainer.seed): set one of them to a value.",
        ),
        (
            {"loss": {"alpha": "${oops:1}"}},
            "loss.alpha=${oops:1} uses ${oops:...}, and no resolver is named oops: distillab's are one_minus "
            "(1 - x), and OmegaConf's oc.env, oc.select and the other oc.* ones.",
        ),
    ],
    ids=["chained", "misspelt", "no-such-group", "cycle", "self-reference", "no-such-resolver"],
)
def test_a_broken_reference_is_named_in_one_sentence(values: dict, sentence: str) -> None:
    from distillab.validate import check_resolves

    with pytest.raises(ConfigError) as refused:
        check_resolves(OmegaConf.create(values))
    assert str(refused.value) == sentence
