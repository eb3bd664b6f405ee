"""`python -m distillab.report` on what a sweep directory may really hold: a job whose metrics.json is cut
short or holds something else, a directory it cannot write into, one seed per group; its errors in one line."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillab.report import main
from tests.conftest import lock_held_elsewhere

NOT_WRITABLE = "give another folder with --out DIR."


def write_job(sweep: Path, overrides: dict[str, str], metrics: dict[str, Any] | str) -> Path:
    """A job directory as Hydra and the runner leave it: `.hydra/overrides.yaml` and `metrics.json`."""
    job = sweep / ",".join(f"{k}={v}" for k, v in overrides.items())
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    (job / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return job


def completed(best: Any, final: Any = 70.0) -> dict[str, Any]:
    return {"status": "completed", "monitor": "val/acc", "mode": "max", "best_val_acc": best, "final_val_acc": final}


def alpha_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    for alpha, best in (("0.1", 80.0), ("0.5", 85.0), ("0.9", 90.0)):
        write_job(sweep, {"loss.alpha": alpha}, completed(best))
    return sweep


def report(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str, str]:
    """`python -m distillab.report ARGV` in this process: exit status, stdout, stderr."""
    try:
        main(argv)
        status: int | str | None = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def csv_runs(path: Path) -> set[str]:
    with path.open() as handle:
        return {row["run"] for row in csv.DictReader(handle)}


@pytest.mark.parametrize(
    ("file", "content", "reason"),
    [
        (
            "metrics.json",
            '{"status": "completed", "monitor": "val/acc", "best_val_acc": 8',
            "not valid JSON (truncated?)",
        ),
        ("metrics.json", "[85.0, 70.0]", "holds a list, not a JSON object"),
        ("metrics.json", json.dumps(completed(float("nan"))), "best_val_acc is NaN, not a finite number"),
        ("metrics.json", json.dumps(completed("abc")), 'best_val_acc is "abc", not a finite number'),
        ("metrics.json", json.dumps(completed(85.0, final=[1])), "final_val_acc is [1], not a finite number"),
        (  # a hand-edited record: values no run writes
            "metrics.json",
            json.dumps({**completed(85.0), "status": "banana"}),
            'status is "banana", not one a run writes (completed, failed, interrupted, refused)',
        ),
        ("metrics.json", json.dumps(completed(-5.0)), "best_val_acc is -5.0, not an accuracy in percent (0 to 100)"),
        (
            "metrics.json",
            json.dumps(completed(85.0, final=250)),
            "final_val_acc is 250, not an accuracy in percent (0 to 100)",
        ),
        (".hydra/overrides.yaml", "loss.alpha: [0.5", "not valid YAML"),
        (".hydra/overrides.yaml", "loss.alpha: 0.5", "not a YAML list of overrides"),
    ],
    ids=[
        "truncated",
        "list",
        "nan",
        "text",
        "list-value",
        "status",
        "negative-acc",
        "acc-over-100",
        "bad-yaml",
        "yaml-mapping",
    ],
)
def test_an_unreadable_job_is_named_and_skipped_and_the_others_are_reported(
    file: str, content: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = alpha_sweep(tmp_path)
    bad = sweep / "loss.alpha=0.5" / file
    bad.write_text(content)
    status, out, err = report([str(sweep)], capsys)
    assert status == 0, err
    assert err == f"distillab.report: warning: skipped {bad}: {reason}\n"
    assert csv_runs(sweep / "report" / "runs.csv") == {"loss.alpha=0.1", "loss.alpha=0.9"}
    text = (sweep / "report" / "report.md").read_text()
    assert "2 runs (1 skipped, see below)" in text
    assert "| loss.alpha=0.1 | completed | 80.00 |" in text and "| loss.alpha=0.9 | completed | 90.00 |" in text
    assert text.split("## Skipped runs\n\n")[1].startswith(f"- `{bad}`: {reason}\n")
    assert f"wrote {sweep / 'report' / 'report.md'}" in out


def test_a_sweep_with_no_readable_job_is_an_error_after_the_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    first, second = (write_job(sweep, {"loss.alpha": a}, "[]") / "metrics.json" for a in ("0.1", "0.9"))
    status, out, err = report([str(sweep)], capsys)
    assert status == 2 and out == ""
    assert err.splitlines() == [
        f"distillab.report: warning: skipped {first}: holds a list, not a JSON object",
        f"distillab.report: warning: skipped {second}: holds a list, not a JSON object",
        f"distillab.report: error: no runs under {sweep} (2 skipped, see the warnings above): give a sweep directory "
        "(outputs/multirun/DATE/TIME) or a run directory.",
    ]


def refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path, error: int, calls: tuple[str, ...]) -> None:
    """The file system under `folder` refuses to create directories (`mkdir`) and files (`open` for writing)."""
    mkdir, open_ = Path.mkdir, Path.open

    def refused(path: Path) -> OSError:
        return OSError(error, os.strerror(error), str(path))

    def guarded_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if "mkdir" in calls and self.is_relative_to(folder):
            raise refused(self)
        mkdir(self, *args, **kwargs)

    def guarded_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "open" in calls and self.is_relative_to(folder) and set(mode) & set("wax+"):
            raise refused(self)
        return open_(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", guarded_mkdir)
    monkeypatch.setattr(Path, "open", guarded_open)


def test_a_read_only_sweep_gives_one_sentence_and_out_writes_the_report_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = alpha_sweep(tmp_path)
    refuse_writes_under(monkeypatch, sweep, errno.EROFS, ("mkdir", "open"))
    status, out, err = report([str(sweep)], capsys)
    assert status == 2 and out == ""
    assert err == (
        f"distillab.report: error: cannot write the report into {sweep / 'report'} (Read-only file system): "
        f"{NOT_WRITABLE}\n"
    )
    elsewhere = tmp_path / "elsewhere" / "report"  # created, parents too
    status, out, err = report([str(sweep), "--out", str(elsewhere)], capsys)
    assert status == 0 and err == ""
    names = ["report.md", "runs.csv", "summary.csv"]
    assert out.splitlines() == [f"wrote {elsewhere / name}" for name in names]
    assert sorted(p.name for p in elsewhere.iterdir()) == names
    assert csv_runs(elsewhere / "runs.csv") == {"loss.alpha=0.1", "loss.alpha=0.5", "loss.alpha=0.9"}
    assert "| loss.alpha=0.5 | completed | 85.00 |" in (elsewhere / "report.md").read_text()
    assert not (sweep / "report").exists()


def test_a_file_the_report_cannot_write_is_named_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = alpha_sweep(tmp_path)
    (sweep / "report").mkdir()  # an earlier report's folder, whose files are not ours to overwrite
    refuse_writes_under(monkeypatch, sweep / "report", errno.EACCES, ("open",))
    status, out, err = report([str(sweep)], capsys)
    assert status == 2 and out == ""
    runs_csv = sweep / "report" / "runs.csv"
    assert err == f"distillab.report: error: cannot write {runs_csv} (Permission denied): {NOT_WRITABLE}\n"


def test_a_really_read_only_sweep_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = alpha_sweep(tmp_path)
    sweep.chmod(0o555)
    try:
        if os.access(sweep, os.W_OK):  # root (with CAP_DAC_OVERRIDE) writes into it anyway
            pytest.skip("this user can write into a 0o555 directory; the injected errors above still run")
        status, _, err = report([str(sweep)], capsys)
    finally:
        sweep.chmod(0o755)
    assert status == 2
    assert err == (
        f"distillab.report: error: cannot write the report into {sweep / 'report'} (Permission denied): "
        f"{NOT_WRITABLE}\n"
    )


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["{tmp}/missing"], "{tmp}/missing does not exist: give a sweep directory (outputs/multirun/DATE/TIME) or a "),
        (["{tmp}/sweep/loss.alpha=0.1/metrics.json"], "{tmp}/sweep/loss.alpha=0.1/metrics.json is not a directory: "),
        (["{tmp}/empty"], "no runs under {tmp}/empty: give a sweep directory (outputs/multirun/DATE/TIME) or a run"),
        (["{tmp}/sweep", "--bogus"], "unrecognized arguments: --bogus (see python -m distillab.report --help)."),
        ([], "the following arguments are required: directory (see python -m distillab.report --help)."),
        (
            ["{tmp}/sweep", "--baseline", "weighting=fixed"],
            "--baseline weighting=fixed: weighting is not a key this sweep varies (it varies loss.alpha).",
        ),
        (
            ["{tmp}/sweep", "--baseline", "trainer.seed=0"],
            "--baseline trainer.seed=0: runs are paired by trainer.seed (each run with the baseline run of its own "
            "seed), so the baseline is chosen by another key the sweep varies: loss.alpha.",
        ),
    ],
    ids=["missing", "a-file", "no-runs", "unknown-option", "no-directory", "bad-baseline", "seed-baseline"],
)
def test_report_errors_are_one_line_and_exit_status_2(
    argv: list[str], sentence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha_sweep(tmp_path)
    (tmp_path / "empty").mkdir()
    status, out, err = report([a.format(tmp=tmp_path) for a in argv], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"distillab.report: error: {sentence.format(tmp=tmp_path)}")
    assert err.endswith(".\n") and err.count("\n") == 1
    assert not (tmp_path / "sweep" / "report").exists()


def test_the_module_exits_with_status_2_and_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "distillab.report", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"distillab.report: error: {tmp_path / 'missing'} does not exist: give a sweep directory "
        "(outputs/multirun/DATE/TIME) or a run directory.\n"
    )


ONE_SEED = "std and CI: need at least 2 seeds per group; each group here has 1 (sweep trainer.seed=0,1,2 to get them)."


@pytest.mark.parametrize(
    ("seeds", "baseline", "note"),
    [
        ({"ce": [0], "kd": [0]}, ["--baseline", "loss=ce"], ONE_SEED),
        ({"ce": [0], "kd": [1]}, [], ONE_SEED.replace("std and CI: need", "std: needs")),
        (
            {"ce": [0, 2], "kd": [0, 1]},
            ["--baseline", "loss=ce"],
            "CI: needs at least 2 seeds per group run by both it and loss=ce (the same trainer.seed); loss=kd has 1.",
        ),
        ({"ce": [0, 1], "kd": [0, 1]}, ["--baseline", "loss=ce"], None),
        (  # a parent folder's report can have dozens of such groups: the first three, and how many more
            {"ce": [0, 1], "kd": [0], "at": [1], "dkd": [0], "fitnet": [2]},
            [],
            "std: needs at least 2 seeds per group; loss=at has 1, loss=dkd has 1, loss=fitnet has 1, and 1 more.",
        ),
    ],
    ids=["one-seed", "one-seed-no-baseline", "one-paired-seed", "two-seeds", "many-groups"],
)
def test_empty_std_and_ci_cells_are_explained_under_the_table(
    seeds: dict[str, list[int]],
    baseline: list[str],
    note: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sweep = tmp_path / "sweep"
    for loss, seed_list in seeds.items():
        for seed in seed_list:
            write_job(sweep, {"loss": loss, "trainer.seed": str(seed)}, completed(80.0 + seed + 5 * (loss == "kd")))
    status, out, err = report([str(sweep), *baseline], capsys)
    assert status == 0, err
    summary = (sweep / "report" / "report.md").read_text().split("## Summary over seeds\n")[1].split("## Runs")[0]
    table_end = summary.strip().split("\n\n")
    if note is None:
        assert "needs at least" not in summary and "need at least" not in summary
        assert table_end[-1].startswith("| loss |")  # the table is the summary's last part
    else:
        assert table_end[-2].startswith("| loss |") and table_end[-1] == note  # the note right under the table
    assert (f"note: {note}" in out.splitlines()) if note else "note:" not in out  # and on the terminal


def test_a_run_written_before_the_weights_moved_to_loss_weight_reads_the_same(tmp_path: Path) -> None:
    """Runs before December 2026 logged `weight/<term>`; the report reads them as `loss_weight/<term>`, so
    `weights.png` draws old and new sweeps alike."""
    from torch.utils.tensorboard import SummaryWriter

    from distillab.report.runs import read_curves

    for tag, run in (("weight/kd", "old"), ("loss_weight/kd", "new")):
        with SummaryWriter(str(tmp_path / run)) as writer:
            for step in (1, 2):
                writer.add_scalar(tag, 0.5 * step, step)
                writer.add_scalar("val/acc", 50.0 + step, step)
    old, new = read_curves(tmp_path / "old"), read_curves(tmp_path / "new")
    assert old == new == {"loss_weight/kd": [(1, 0.5), (2, 1.0)], "val/acc": [(1, 51.0), (2, 52.0)]}


def test_a_sweep_continued_with_trainer_resume_groups_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command that continues an interrupted sweep adds `trainer.resume=true` to the jobs that start after the
    interruption (and a `hydra.sweep.dir`): neither is a setting, so kd's two seeds stay one group, with a CI."""
    sweep = tmp_path / "sweep"
    for loss, seed, resumed in (("ce", 0, False), ("ce", 1, False), ("kd", 0, False), ("kd", 1, True)):
        extra = {"trainer.resume": "true", "hydra.sweep.dir": str(sweep)} if resumed else {}
        write_job(
            sweep, {"loss": loss, "trainer.seed": str(seed), **extra}, completed(80.0 + seed + 5 * (loss == "kd"))
        )
    status, out, err = report([str(sweep), "--baseline", "loss=ce"], capsys)
    assert status == 0, err
    summary = (sweep / "report" / "report.md").read_text().split("## Summary over seeds\n")[1].split("## Runs")[0]
    assert "resume" not in summary and "note:" not in out
    rows = [line for line in summary.splitlines() if line.startswith("| kd")]
    assert len(rows) == 1 and "| 2 |" in rows[0]  # one kd group of two seeds


def test_a_sweep_over_the_student_reads_as_typed_and_takes_it_as_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra records `model/student=mlp` as `model@model.student=mlp`: the report names it as the user typed it."""
    sweep = tmp_path / "sweep"
    for student in ("light_nn", "mlp"):
        for seed in (0, 1):
            overrides = {"model@model.student": student, "trainer.seed": str(seed)}
            write_job(sweep, overrides, completed(80.0 + seed + 5 * (student == "mlp")))
    status, _, err = report([str(sweep), "--baseline", "model/student=light_nn"], capsys)
    assert status == 0, err
    text = (sweep / "report" / "report.md").read_text()
    assert "model/student" in text and "model@model.student" not in text
    (sweep / "report" / "report.md").unlink()
    # the directory after the baseline's pairs (which take every word up to the next option) is still the directory
    status, _, err = report(["--baseline", "model/student=light_nn", str(sweep)], capsys)
    assert status == 0, err
    assert (sweep / "report" / "report.md").read_text() == text
    status, _, err = report(["--baseline", "model/student=light_nn", str(sweep), "other"], capsys)
    assert status == 2 and "--baseline takes KEY=VALUE pairs (loss=ce): " in err
    named = sweep.rename(tmp_path / "lr=0.1")  # a directory named with `=` (as a sweep's jobs are) after the pairs
    status, _, err = report(["--baseline", "model/student=light_nn", str(named)], capsys)
    assert status == 0 and (named / "report" / "report.md").is_file(), err


def test_a_run_killed_before_it_wrote_its_record_reads_as_died_not_running(tmp_path: Path) -> None:
    """A job without metrics.json is `running` while its process holds the run directory's lock; killed with
    SIGKILL (no chance to write anything), the kernel drops the lock and the report says `died`, and why. Either
    way its best and final so far come from its TensorBoard curve."""
    from distillab.report import load_run, write_report

    run_dir = tmp_path / "sweep" / "loss.alpha=0.5"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- loss.alpha=0.5\n")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run_dir) as events:  # three epochs' validation, as a run writes them
        for step, acc in ((10, 50.0), (20, 70.0), (30, 60.0)):
            events.add_scalar("val/acc", acc, step)
    with lock_held_elsewhere(run_dir):
        assert load_run(run_dir).status == "running"
        assert "| running | 70.00 | 60.00 |" in write_report(tmp_path / "sweep")[0].read_text()  # best, final so far
    assert load_run(run_dir).status == "died"
    report = write_report(tmp_path / "sweep")[0].read_text()
    assert "| died | 70.00 | 60.00 |" in report
    assert "it wrote no metrics.json: it was killed (kill -9, out of memory)" in report.split("## Failed runs")[1]


def test_a_single_run_is_reported_as_a_run_and_a_sweep_as_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path / "one", {"loss": "kd"}, completed(90.0))
    status, _, err = report([str(job)], capsys)
    assert status == 0, err
    lines = (job / "report" / "report.md").read_text().splitlines()
    assert lines[0] == f"# Run report: {job}" and lines[2].startswith("1 run; metric: val/acc")
    sweep = alpha_sweep(tmp_path)
    status, _, err = report([str(sweep)], capsys)
    assert status == 0, err
    lines = (sweep / "report" / "report.md").read_text().splitlines()
    assert lines[0] == f"# Sweep report: {sweep}" and lines[2].startswith("3 runs; metric: val/acc")
