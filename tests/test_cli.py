"""The command line as a user meets it: the console script, `python -m distillab`, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_CACHE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def distillab(*args: str, cwd: Path, env: dict | None = None, module: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "distillab"] if module else [str(BIN / "distillab")]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_console_script_runs_one_epoch_into_hydras_run_dir(tmp_path: Path) -> None:
    done = distillab(
        "trainer.max_epochs=1",
        "teacher.max_epochs=2",
        f"paths.cache_dir={SHARED_CACHE}",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        module=False,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and (tmp_path / "r" / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not valid: use an integer >= 1."),
        ("optim.lr=-1", "optim.lr=-1 is not valid: use a finite number > 0 and <= 10."),
        ("data.batch_size=abc", "data.batch_size='abc' is not valid: use an integer >= 1."),
        ("loss.weights.ce=-2", "loss.weights.ce=-2 is not valid: use a number >= 0 and <= 1e6."),
    ],
)
def test_bad_input_is_one_sentence_without_traceback_and_touches_nothing(
    override: str, message: str, tmp_path: Path
) -> None:
    earlier = tmp_path / "earlier.txt"
    earlier.write_text("keep me")
    done = distillab(override, f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"distillab: error: {message}"
    assert "Traceback" not in done.stdout + done.stderr
    assert earlier.read_text() == "keep me"
    assert not (tmp_path / "r" / "checkpoints").exists() and not list((tmp_path / "r").glob("events.*"))
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "refused"


@pytest.mark.slow
def test_a_regular_wheel_install_runs_from_any_directory(tmp_path: Path) -> None:
    """Build the wheel offline, install it (not editable) into its own directory, run it from `/`.

    The configs must travel inside the wheel: nothing may be read from this checkout.
    """
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(REPO),
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("distillab-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    assert (target / "distillab" / "conf" / "config.yaml").is_file()
    assert (target / "hydra_plugins" / "distillab_launcher" / "fused_launcher.py").is_file()  # hydra/launcher=fused

    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install of this checkout
    where = subprocess.run(
        [sys.executable, "-c", "import distillab; print(distillab.__file__)"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(target))
    done = distillab("loss=ce", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'r'}", cwd=Path("/"), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "completed"


def test_the_printed_resume_command_keeps_where_the_configs_came_from() -> None:
    """A run of a loss from one's own `--config-dir`, interrupted (or its teacher stage): the command printed to
    continue it names the same config directory, or it would refuse `loss=...` as not a choice."""
    import distillab.cli
    from distillab import command_line
    from distillab.config import compose

    cfg = compose(["loss=ce", "trainer.max_epochs=3", "paths.output_dir=/runs/my run"])
    command_line.record_typed(["--config-dir", "/my conf", "--config-name=config", "loss=ce"])  # (cleared after)
    import shlex

    assert shlex.split(distillab.cli.resume_command(cfg)) == [
        "python", "-m", "distillab", "--config-dir", "/my conf", "--config-name=config", "loss=ce",
        "trainer.max_epochs=3", "paths.output_dir=/runs/my run", f"paths.root={Path('outputs').absolute()}",
        "hydra.run.dir='/runs/my run'", "trainer.resume=true",
    ]  # fmt: skip


def test_the_printed_resume_command_finds_the_same_files_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    """Relative places (`paths.root` by default, a `paths.cache_dir` typed relative) are relative to where the
    command ran: the printed command gives them absolute, so pasted in another directory it resumes with the same
    teacher cache and data instead of training a teacher into a new cache there. Absolute ones stay as typed."""
    import shlex

    import distillab.cli
    from distillab import command_line
    from distillab.config import compose

    monkeypatch.chdir(tmp_path)
    typed = ["trainer.max_epochs=3", "paths.cache_dir=my cache", "paths.data_dir=/data", "paths.output_dir=/runs/r",
             "trainer.max_epochs=5"]  # fmt: skip
    cfg = compose(typed)
    command_line.record_typed(typed)
    printed = shlex.split(distillab.cli.resume_command(cfg))[3:]
    assert printed == [  # (a key typed twice: once, at the value that counted)
        "paths.data_dir=/data", "paths.output_dir=/runs/r", "trainer.max_epochs=5",
        f"paths.root={tmp_path / 'outputs'}", f"paths.cache_dir='{tmp_path / 'my cache'}'", "hydra.run.dir=/runs/r",
        "trainer.resume=true",
    ]  # fmt: skip
    monkeypatch.chdir("/")
    again = compose([o for o in printed if not o.startswith("hydra.")])
    assert (again.paths.cache_dir, again.paths.data_dir) == (str(tmp_path / "my cache"), "/data")


def test_printed_commands_keep_each_override_that_counts_and_leave_a_swept_place_as_typed(
    tmp_path, monkeypatch
) -> None:
    """A key set twice the same way is printed once (the last); `+foo=1 foo=2` (add, then set) keeps both; a sweep
    over places (each job its own) stays as typed while `paths.root` is pinned."""
    from distillab.cli import _from_anywhere
    from distillab.command_line import last_of_each
    from distillab.config import compose

    assert last_of_each(["a=1", "+foo=1", "--multirun", "foo=2", "a=1", "~b", "a=3"]) == [
        "+foo=1", "--multirun", "foo=2", "~b", "a=3",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    cfg = compose(["paths.data_dir=d0", "paths.output_dir=/r"])
    assert _from_anywhere(cfg, ["paths.data_dir=d0,d1", "loss=kd"]) == [
        "paths.data_dir=d0,d1", "loss=kd", f"paths.root={tmp_path / 'outputs'}",
    ]  # fmt: skip
    assert _from_anywhere(cfg, ["++paths.data_dir=d0"]) == [
        f"paths.root={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'd0'}",
    ]  # fmt: skip


def test_a_layer_is_named_by_the_argument_of_the_side_that_lacks_it() -> None:
    """FitNets reads `features` of both networks: a teacher that lacks it is told about loss.teacher_layer."""
    from distillab.build import layer_key
    from distillab.config import compose

    cfg = compose(["loss=fitnet", "paths.output_dir=/r"])
    assert cfg.loss.terms.fitnet.student_layers == cfg.loss.terms.fitnet.teacher_layers == "features"
    assert layer_key(cfg, "fitnet", "features", "teacher") == "loss.teacher_layer"
    assert layer_key(cfg, "fitnet", "features", "student") == "loss.student_layer"
    assert layer_key(cfg, "fitnet", "nope", "student") == "loss.terms.fitnet student layer"  # not an argument's
