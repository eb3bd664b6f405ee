"""Multirun sweeps as a user runs them (subprocesses), the launchers, and the sweep report."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from omegaconf import OmegaConf

from distillab.config import compose, config_dir, job_dirname
from distillab.report import Run, find_runs, load_run, summary_rows, varying_keys, write_report
from tests.conftest import SHARED_CACHE, custom_charts, scalars


def sweep(tmp_path: Path, *overrides: str, expect_ok: bool = True) -> Path:
    """Run `python -m distillab --multirun ...` on digits for one epoch; returns the sweep directory.

    `expect_ok=False`: some job fails, so the sweep as a whole must exit non-zero (after all jobs ran).
    """
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "distillab",
        "--multirun",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.root={tmp_path}",
        f"paths.cache_dir={SHARED_CACHE}",
        "trainer.max_epochs=1",
        "teacher.max_epochs=2",  # the session's shared teacher (conftest's TINY)
        "trainer.progress=false",
        *overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == expect_ok, done.stderr[-3000:]
    LAST_STDERR[:] = [done.stderr]
    return sweep_dir


LAST_STDERR: list[str] = []  # what the last `sweep` printed (its closing table)


def hparams_data(run_dir: Path, tag: str):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[f"_hparams_/{tag}"])


def hparam_keys(run_dir: Path) -> set[str]:
    return set(hparams_data(run_dir, "session_start_info").session_start_info.hparams)


def differing_hparams(run_dir: Path) -> set[str]:
    """The hparams the run's experiment summary marks as differing: TensorBoard's HParams dashboard lists
    those first and ticks the first five."""
    return {info.name for info in hparams_data(run_dir, "experiment").experiment.hparam_infos if info.differs}


def test_job_directory_names_show_the_swept_keys_shortly_choices_first_and_safely(tmp_path: Path) -> None:
    job = ["loss=kd", "loss.temperature=4", "weighting=learnable", "loss.alpha=0.5", "paths.root=/tmp/x"]
    assert job_dirname(job) == "kd,learnable,alpha=0.5,root=_tmp_x,temperature=4"
    # In a sweep, keys with one value in every job are left out of the name: TensorBoard's run list shows about
    # 35 characters, and the name of the 2x2x2 sweep below fits, what tells fixed from learnable first.
    command_line = ["loss=kd", "loss.temperature=2,4", "loss.alpha=range(0,1,0.5)", "paths.root=/tmp/x"]
    OmegaConf.save({"hydra": {"overrides": {"task": command_line}}}, tmp_path / "multirun.yaml")
    sweep_file_params = {"weighting": "fixed,learnable"}
    name = job_dirname(job, 3, str(tmp_path), sweep_file_params)
    assert name == "learnable,alpha=0.5,temperature=4" and len(name) <= 35
    assert job_dirname(["model/student=deep_nn"]) == "deep_nn"
    # a value two swept choices share, or a last part two keys share, keeps its key
    both = {"model/student": "light_nn,deep_nn", "model/teacher": "deep_nn,resnet8"}
    assert job_dirname(["model/teacher=deep_nn", "model/student=light_nn"], 0, None, both) == (
        "student=light_nn,teacher=deep_nn"
    )
    assert job_dirname(["weighting.alpha=2", "loss.alpha=0.5", "trainer.seed=1"]) == (
        "loss.alpha=0.5,seed=1,weighting.alpha=2"
    )
    assert job_dirname(["loss.student_layers=[a,b]"]) == "student_layers=_a,b_"
    long = job_dirname(["x=" + "y" * 400])
    assert len(long) < 200 and long != job_dirname(["x=" + "y" * 399 + "z"])
    assert job_dirname([], 7) == "job7"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_a_2x2_sweep_gives_named_runs_with_the_same_hparams_and_a_report(launcher: str, tmp_path: Path) -> None:
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    if launcher == "submitit_local":
        extra += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    sweep_dir = sweep(tmp_path, "loss=kd", "loss.temperature=2,4", "weighting=fixed,learnable", *extra)
    names = sorted(p.name for p in find_runs(sweep_dir))
    assert names == [f"{w},temperature={t}" for w in ("fixed", "learnable") for t in (2, 4)]
    # HParams: the swept keys and the numbers KD reads, not loss=kd or trainer.max_epochs=1 (set on the command
    # line, the same in every job), nor other losses' keys; only the swept ones are marked as differing
    assert all(hparam_keys(sweep_dir / name) == {"weighting", "loss.temperature", "loss.alpha"} for name in names)
    assert all(differing_hparams(sweep_dir / name) == {"loss.temperature", "weighting"} for name in names)
    for name in names:
        assert json.loads((sweep_dir / name / "metrics.json").read_text())["status"] == "completed"
        assert "loss_weight/kd" in scalars(sweep_dir / name)
        # Custom Scalars: one chart per term of its weight across the runs, then one of its raw value
        assert custom_charts(sweep_dir / name) == {
            "weights, a chart per term": [
                ("loss_weight/ce", ["^loss_weight/ce$"]),
                ("loss_weight/kd", ["^loss_weight/kd$"]),
            ],
            "loss terms (unweighted), a chart per term": [("loss/ce", ["^loss/ce$"]), ("loss/kd", ["^loss/kd$"])],
        }

    written = write_report(sweep_dir)
    rows = list(csv.DictReader((sweep_dir / "report" / "runs.csv").open()))
    assert sorted(r["run"] for r in rows) == [
        f"loss.temperature={t},weighting={w}" for t in (2, 4) for w in ("fixed", "learnable")
    ]  # the report names runs by their overrides (.hydra/overrides.yaml), not by their directories
    for row in rows:
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert float(row["best"]) == pytest.approx(metrics["best_val_acc"])
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"val_curves.png", "weights.png"}  # alpha was not swept: no heatmap
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.slow
def test_report_groups_seeds_as_mean_and_std_and_draws_the_heatmap(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "loss=kd", "loss.temperature=2,4", "loss.alpha=0.5,0.9", "trainer.seed=0,1")
    runs = [load_run(p) for p in find_runs(sweep_dir)]
    assert len(runs) == 8
    groups = {(g["loss.alpha"], g["loss.temperature"]): g for g in summary_rows(runs, varying_keys(runs))}
    assert len(groups) == 4 and all(g["n"] == 2 for g in groups.values())
    pair = [
        r.metrics["best_val_acc"]
        for r in runs
        if r.overrides["loss.temperature"] == "4" and r.overrides["loss.alpha"] == "0.9"
    ]
    group = groups[("0.9", "4")]
    assert group["best_val_acc_mean"] == pytest.approx(statistics.fmean(pair))
    assert group["best_val_acc_std"] == pytest.approx(statistics.stdev(pair))
    written = write_report(sweep_dir)
    assert (sweep_dir / "report" / "heatmap.png") in written
    text = (sweep_dir / "report" / "report.md").read_text()
    assert f"{group['best_val_acc_mean']:.2f} ± {group['best_val_acc_std']:.2f}" in text


@pytest.mark.slow
def test_report_against_a_baseline_pairs_the_seeds_and_writes_the_summary(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "loss=ce,kd", "trainer.seed=0,1,2")
    # HParams: the CE runs read no loss number; every run's summary names KD's too (the dashboard takes its
    # columns from one run), marking the swept keys as differing
    assert hparam_keys(sweep_dir / "ce,seed=0") == {"loss", "trainer.seed"}
    assert hparam_keys(sweep_dir / "kd,seed=0") == {"loss", "trainer.seed", "loss.temperature", "loss.alpha"}
    for name in ("ce,seed=0", "kd,seed=2"):
        infos = hparams_data(sweep_dir / name, "experiment").experiment.hparam_infos
        assert {i.name: i.differs for i in infos} == {
            "loss": True,
            "trainer.seed": True,
            "loss.alpha": False,
            "loss.temperature": False,
        }
    done = subprocess.run(
        [sys.executable, "-m", "distillab.report", str(sweep_dir), "--baseline", "loss=ce"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["loss"]: r for r in csv.DictReader((sweep_dir / "report" / "summary.csv").open())}
    assert set(rows) == {"ce", "kd"} and all(r["n"] == "3" for r in rows.values())
    final = {
        loss: {
            r.overrides["trainer.seed"]: r.metrics["final_val_acc"]
            for r in map(load_run, find_runs(sweep_dir))
            if r.overrides["loss"] == loss
        }
        for loss in rows
    }
    diffs = [final["kd"][s] - final["ce"][s] for s in ("0", "1", "2")]
    kd = rows["kd"]
    assert float(kd["delta_final_val_acc_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert float(kd["delta_final_val_acc_ci95"]) == pytest.approx(
        4.302652729911275 * statistics.stdev(diffs) / 3**0.5
    )  # t(0.975, 2)
    assert float(rows["ce"]["delta_final_val_acc_mean"]) == 0.0
    assert "Δ final vs loss=ce" in (sweep_dir / "report" / "report.md").read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "distillab.report", str(sweep_dir), "--baseline", "weighting=fixed"],
        capture_output=True,
        text=True,
    )
    assert (
        refused.returncode != 0
        and refused.stderr.strip()
        == "distillab.report: error: --baseline weighting=fixed: weighting is not a key this sweep varies "
        "(it varies loss)."
    )


@pytest.mark.slow
def test_a_failing_job_leaves_the_others_running_and_is_marked_in_the_report(tmp_path: Path) -> None:
    # a value the job refuses when it builds the network, after the sweep's first job trained
    sweep_dir = sweep(tmp_path, "loss=kd", "model.student.dropout=0.5,1.5", expect_ok=False)
    failed = sweep_dir / "dropout=1.5"
    assert json.loads((sweep_dir / "dropout=0.5" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((failed / "metrics.json").read_text())["status"] == "refused"  # before it trained
    assert (
        "model.student.dropout=1.5 is not valid: use a finite number >= 0 and < 1."
        in (failed / "distillab.log").read_text()
    )
    write_report(sweep_dir)
    rows = {r["run"]: r for r in csv.DictReader((sweep_dir / "report" / "runs.csv").open())}
    refused = rows["model.student.dropout=1.5"]
    assert refused["status"] == "refused" and "model.student.dropout=1.5" in refused["error"]
    assert "Traceback" in (failed / "distillab.log").read_text()  # the full story is in the job's own log
    assert rows["model.student.dropout=0.5"]["status"] == "completed"
    assert "## Failed runs" in (sweep_dir / "report" / "report.md").read_text()
    # The sweep ended with one table of its jobs (the failed one too) and the commands to look further.
    table = LAST_STDERR[0][LAST_STDERR[0].index(f"sweep {sweep_dir}: 2 jobs, 1 not completed") :].splitlines()
    assert table[1].split() == ["model.student.dropout", "status", "best", "val/acc", "epoch", "final", "val/acc"]
    assert table[2].split()[:2] == ["0.5", "completed"] and table[3].split() == ["1.5", "refused", "-", "-", "-"]
    assert table[4] == f"report: python -m distillab.report {sweep_dir}"


def test_report_reads_a_single_run_and_a_sweep_in_progress(tmp_path: Path, tiny_run) -> None:
    _, run_dir = tiny_run("loss=kd")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- loss=kd\n")
    assert write_report(run_dir)[0].read_text().count("| completed |") == 1
    in_progress = tmp_path / "sweep" / "loss.alpha=0.5"
    (in_progress / ".hydra").mkdir(parents=True)
    (in_progress / ".hydra" / "overrides.yaml").write_text("- loss.alpha=0.5\n")
    (run := load_run(in_progress))
    assert run.status == "running"
    assert "| running |" in write_report(tmp_path / "sweep")[0].read_text()


def sweep_jobs(overrides: list[str]) -> set[frozenset[str]]:
    """The jobs Hydra's basic sweeper makes of a sweep file plus command-line sweeps, without running them."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[o for o in overrides if "," not in o], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *(o for o in overrides if "," in o)])
    return {frozenset(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch}


def test_the_sweep_file_makes_the_24_jobs_of_the_command() -> None:
    from_file = sweep_jobs(["experiment=sweep_kd"])
    command = sweep_jobs(["loss.temperature=1,2,4,8", "loss.alpha=0.25,0.5,0.75", "weighting=fixed,learnable"])
    assert len(from_file) == 24 and from_file == command
    # a command-line value replaces an axis
    assert len(sweep_jobs(["experiment=sweep_kd", "loss.temperature=2,4"])) == 12
    # and each job is configured as the command line's (the default experiment's 100 labels and 200 epochs)
    job = ["loss.temperature=4", "loss.alpha=0.5", "weighting=learnable", "paths.output_dir=job"]
    file_job, command_job = compose(["experiment=sweep_kd", *job]), compose(["loss=kd", *job])
    assert file_job.data.train_subset == 100 and file_job.trainer.max_epochs == 200
    same = [OmegaConf.to_container(c) for c in (file_job, command_job)]
    for c in same:  # the default experiment's notes on itself: the data it is made for (the sweep file runs on any)
        c.pop("experiment_for", None)
        c.pop("student_alone", None)  # and the figure a distilled run's closing lines compare with
    assert same[0] == same[1]


@pytest.mark.slow
def test_a_job_of_the_sweep_file_runs(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "experiment=sweep_kd", "loss.temperature=2", "loss.alpha=0.5", "weighting=learnable")
    runs = [load_run(p) for p in find_runs(sweep_dir)]
    assert [r.status for r in runs] == ["completed"] and runs[0].metrics["final_weights"].keys() == {"ce", "kd"}


@pytest.mark.slow
def test_optuna_search_maximises_validation_accuracy(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "experiment=search_kd", "hydra.sweeper.n_trials=3")
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_params" in results and "loss.temperature" in results and "best_value" in results
    best = max(json.loads(p.read_text())["best_val_acc"] for p in sweep_dir.glob("*/metrics.json"))
    assert f"best_value: {best}" in results
    assert all(p.name.startswith("alpha=") and "paths" not in p.name for p in find_runs(sweep_dir))


def _run(overrides: dict[str, str], final: float, best: float, status: str = "completed") -> Run:
    return Run(
        Path("/x"), overrides, {"status": status, "monitor": "val/acc", "final_val_acc": final, "best_val_acc": best}
    )


def test_summary_statistics_and_paired_deltas_by_hand() -> None:
    """Two methods x three seeds; seed 2 of kd failed, so the pairs are seeds 0 and 1 only."""
    runs = [
        _run({"loss": "ce", "trainer.seed": "0"}, 90.0, 91.0),
        _run({"loss": "ce", "trainer.seed": "1"}, 92.0, 92.5),
        _run({"loss": "ce", "trainer.seed": "2"}, 94.0, 95.0),
        _run({"loss": "kd", "trainer.seed": "0"}, 93.0, 93.0),
        _run({"loss": "kd", "trainer.seed": "1"}, 93.0, 94.0),
        _run({"loss": "kd", "trainer.seed": "2"}, 0.0, 0.0, status="failed"),
    ]
    rows = {r["loss"]: r for r in summary_rows(runs, ["loss", "trainer.seed"], {"loss": "ce"})}
    ce, kd = rows["ce"], rows["kd"]
    assert (ce["n"], kd["n"]) == (3, 2)
    assert ce["final_val_acc_mean"] == pytest.approx(92.0) and ce["final_val_acc_std"] == pytest.approx(2.0)
    assert kd["final_val_acc_mean"] == pytest.approx(93.0) and kd["final_val_acc_std"] == pytest.approx(0.0)
    # paired over seeds 0 and 1: final diffs 3 and 1 -> mean 2, sd sqrt(2), t(0.975, 1) = 12.706
    assert kd["delta_final_val_acc_mean"] == pytest.approx(2.0) and kd["n_paired"] == 2
    assert kd["delta_final_val_acc_ci95"] == pytest.approx(12.706204736174707 * 2**0.5 / 2**0.5)
    assert kd["delta_best_val_acc_mean"] == pytest.approx(((93 - 91) + (94 - 92.5)) / 2)
    single = summary_rows(runs[:1], ["loss"], None)[0]
    assert single["final_val_acc_std"] is None  # one value: no sample std
    # a baseline no run has: the values that would be valid
    with pytest.raises(
        ValueError, match=r"^--baseline loss=cee: no completed run has it \(use one of loss=ce, loss=kd\)\.$"
    ):
        summary_rows(runs, ["loss", "trainer.seed"], {"loss": "cee"})


def test_runs_that_repeat_a_seed_count_once_and_are_said(caplog) -> None:
    """One sweep run twice and reported from their parent folder: each group has two runs of each seed. Each seed
    counts once (its runs averaged) in the mean, the std and the pairing, n counts seeds, and the note says so;
    before, the last run of a seed replaced the others in the statistics while n counted them all."""
    from distillab.report import summary_section

    runs = [
        _run({"loss": "ce", "trainer.seed": "0"}, 90.0, 91.0),
        _run({"loss": "ce", "trainer.seed": "1"}, 92.0, 92.0),
        _run({"loss": "kd", "trainer.seed": "0"}, 93.0, 93.0),
        _run({"loss": "kd", "trainer.seed": "1"}, 93.0, 94.0),
        _run({"loss": "ce", "trainer.seed": "0"}, 94.0, 95.0),  # the second sweep's ce, seed 0: 4 points higher
        _run({"loss": "ce", "trainer.seed": "1"}, 92.0, 92.0),
        _run({"loss": "kd", "trainer.seed": "0"}, 93.0, 93.0),
        _run({"loss": "kd", "trainer.seed": "1"}, 93.0, 94.0),
    ]
    rows = {r["loss"]: r for r in summary_rows(runs, ["loss", "trainer.seed"], {"loss": "ce"})}
    ce, kd = rows["ce"], rows["kd"]
    assert (ce["n"], ce["runs"], kd["n"], kd["runs"]) == (2, 4, 2, 4)
    assert ce["final_val_acc_mean"] == pytest.approx((92.0 + 92.0) / 2)  # seed 0: (90 + 94) / 2; seed 1: 92
    assert ce["final_val_acc_std"] == pytest.approx(0.0)
    assert kd["delta_final_val_acc_mean"] == pytest.approx(1.0) and kd["n_paired"] == 2  # 93 - 92 for both seeds
    with caplog.at_level("INFO", logger="distillab"):
        lines = summary_section(list(rows.values()), ["loss"], "val_acc", {"loss": "ce"})
    assert (
        "n counts seeds: runs that repeat a seed were averaged into that seed's value before the mean, std and "
        "pairing (loss=ce: 4 runs of 2 seeds; loss=kd: 4 runs of 2 seeds)."
    ) in "\n".join(lines)


def test_a_run_without_a_typed_seed_counts_as_the_seed_it_recorded(tmp_path: Path) -> None:
    """`-m loss=kd,ce` and later `-m loss=kd,ce trainer.seed=0,1`, reported from their parent folder: the first
    sweep's runs ran with the default seed 0, which their `.hydra/config.yaml` records, so they repeat seed 0 and
    are averaged with it (n=2 seeds, 3 runs), not counted as a third, independent seed."""
    untyped = tmp_path / "first" / "loss=kd"
    (untyped / ".hydra").mkdir(parents=True)
    (untyped / ".hydra" / "overrides.yaml").write_text("- loss=kd\n")
    (untyped / ".hydra" / "config.yaml").write_text("trainer:\n  seed: 0\n  max_epochs: 3\n")
    (untyped / "metrics.json").write_text(
        json.dumps({"status": "completed", "monitor": "val/acc", "final_val_acc": 90.0, "best_val_acc": 91.0})
    )
    first = load_run(untyped, curves=False)
    assert first.seed == "0"
    runs = [
        first,
        _run({"loss": "kd", "trainer.seed": "0"}, 94.0, 95.0),
        _run({"loss": "kd", "trainer.seed": "1"}, 93, 93),
    ]
    (row,) = summary_rows(runs, ["loss", "trainer.seed"])
    assert (row["n"], row["runs"]) == (2, 3)
    assert row["final_val_acc_mean"] == pytest.approx(((90.0 + 94.0) / 2 + 93.0) / 2)
    from distillab.report import per_run_rows

    assert [r["trainer.seed"] for r in per_run_rows(runs, ["trainer.seed"])] == ["0", "0", "1"]  # runs.csv's column


def test_a_single_value_on_the_command_line_replaces_a_sweep_files_axis(tmp_path: Path) -> None:
    """`experiment=sweep_kd loss.alpha=0.5 loss.temperature=2,4`: the file's alpha axis becomes one value and its
    temperature axis the two typed, as Hydra's basic sweeper runs them. The sweep varies temperature and weighting
    only (alpha is left out of the names), and its 4 jobs are the sweep, not the file's 24."""
    from distillab.config import sweep_values

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    typed = ["experiment=sweep_kd", "loss.alpha=0.5", "loss.temperature=2,4"]
    OmegaConf.save({"hydra": {"overrides": {"task": typed}}}, sweep / "multirun.yaml")
    params = {"loss.temperature": "1,2,4,8", "loss.alpha": "0.25,0.5,0.75", "weighting": "fixed,learnable"}
    assert sweep_values(str(sweep), params) == {"loss.temperature": ["2", "4"], "weighting": ["fixed", "learnable"]}
    assert job_dirname([*typed[:2], "loss.temperature=4", "weighting=fixed"], 0, str(sweep), params) == (
        "fixed,temperature=4"
    )


def test_the_end_of_an_interrupted_sweep_lists_the_jobs_that_never_started(tmp_path: Path) -> None:
    """The basic sweeper's jobs are the cross product its multirun.yaml records: the end-of-sweep table names the
    jobs that have no directory yet as `not started`, and one that never finished (no metrics.json) as such."""
    from distillab.sweep_end import sweep_table

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    typed = ["loss=kd", "loss.temperature=1,4", "trainer.seed=0,1"]
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}
    OmegaConf.save({"hydra": {"overrides": {"task": typed}, "sweeper": sweeper}}, sweep / "multirun.yaml")
    done = {"status": "completed", "monitor": "val/acc", "mode": "max", "best_val_acc": 90.0, "final_val_acc": 89.0}
    for temperature, seed, metrics in (("1", "0", done), ("1", "1", None)):
        job = sweep / job_dirname([f"loss.temperature={temperature}", f"trainer.seed={seed}"], 0, str(sweep), None)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- loss=kd\n- loss.temperature={temperature}\n- trainer.seed={seed}\n"
        )
        if metrics:
            (job / "metrics.json").write_text(json.dumps(metrics))
    lines = sweep_table(sweep).splitlines()
    assert lines[0] == f"sweep {sweep}: 4 jobs, 1 not completed, 2 not started"
    rows = [line.split() for line in lines[2:]]
    assert rows == [
        ["1", "0", "completed", "90.00", "-", "89.00"],
        ["1", "1", "not", "finished", "-", "-", "-"],
        ["4", "0", "not", "started", "-", "-", "-"],
        ["4", "1", "not", "started", "-", "-", "-"],
    ]
    # the report names them too, and shows how far an interrupted run got (what its metrics.json records)
    interrupted = {"status": "interrupted", "monitor": "val/acc", "best_val_acc": 70.0, "final_val_acc": 65.0}
    (sweep / job_dirname(["loss.temperature=1", "trainer.seed=1"], 0, str(sweep), None) / "metrics.json").write_text(
        json.dumps(interrupted)
    )
    write_report(sweep)
    report = (sweep / "report" / "report.md").read_text()
    assert "2 runs, 2 jobs not started (see below)" in report
    assert "## Jobs not started" in report and "- `loss.temperature=4,trainer.seed=0`" in report
    assert "| trainer.seed=1 | interrupted | 70.00 | 65.00 |" in report
    sweeper["_target_"] = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"  # its trials are drawn
    OmegaConf.save({"hydra": {"overrides": {"task": typed}, "sweeper": sweeper}}, sweep / "multirun.yaml")
    assert sweep_table(sweep).splitlines()[0] == f"sweep {sweep}: 2 jobs, 1 not completed"
