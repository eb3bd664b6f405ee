"""Fused sweeps (`hydra/launcher=fused`): the runs of a group, trained together, give what each gives alone.

The members' students run as one vmapped network, the teacher once per distinct batch, and each member keeps
its own loss, weighting, seed, optimizer and records: so per step, every loss and weight a member logs is its
own run's, to float tolerance (the fused forward and backward sum in another order), and so are its final
metrics."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from distillab.checkpoint import load_checkpoint
from distillab.fused_sweep import alone_reason, group_key, plan
from distillab.runner import run, run_group
from tests.conftest import compose_in, interrupt_after_step, scalars
from tests.test_reliability import NAN_TERM
from tests.test_run_ownership import cli

# 23 steps an epoch on digits (1437 training images, batch 64): 3 epochs cover the 50 steps compared.
DIGITS = ["trainer.max_epochs=3", "trainer.log_every=1", "model.student.dropout=0", "teacher.cache_outputs=false"]
MEMBERS = [  # each differs from the first in the temperature, alpha, weighting, loss choice or seed
    ["loss=kd", "loss.temperature=4", "loss.alpha=0.5", "weighting=fixed", "trainer.seed=0"],
    ["loss=kd", "loss.temperature=1", "loss.alpha=0.9", "weighting=learnable", "trainer.seed=0"],
    ["loss=fitnet", "weighting=fixed", "trainer.seed=0"],
    ["loss=at", "weighting=uncertainty", "trainer.seed=1"],
    ["loss=ce", "weighting=dwa", "trainer.seed=1"],
]
FINAL = ("best_val_acc", "final_val_acc", "best_epoch", "epochs", "steps")


def close(a: float, b: float) -> bool:
    """Equal to 1e-5, relative to the value (absolute near zero, where an uncertainty-weighted total crosses it)."""
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1.0)


def alone_and_together(tmp_path: Path, common: list[str], members: list[list[str]]) -> list[tuple[Path, Path]]:
    """Each member run alone, then all of them as one group: (alone, fused) run directories."""
    alone = []
    for i, own in enumerate(members):
        cfg = compose_in(tmp_path / f"alone{i}", *common, *own)
        run(cfg)
        alone.append(Path(cfg.paths.output_dir))
    cfgs = [compose_in(tmp_path / f"fused{i}", *common, *own) for i, own in enumerate(members)]
    outcomes = run_group(cfgs)
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    return list(zip(alone, (Path(c.paths.output_dir) for c in cfgs)))


def assert_same_runs(pairs: list[tuple[Path, Path]], steps: int) -> None:
    for alone, fused in pairs:
        a, f = scalars(alone), scalars(fused)
        compared = [t for t in a if t.startswith(("loss/", "loss_weight/"))]
        assert compared and set(compared) <= set(f)
        for tag in compared:
            assert len(a[tag]) >= steps
            bad = [(i, x, y) for i, (x, y) in enumerate(zip(a[tag][:steps], f[tag][:steps])) if not close(x, y)]
            assert not bad, f"{fused.name} {tag}: first differing steps {bad[:3]}"
        ma, mf = (json.loads((d / "metrics.json").read_text()) for d in (alone, fused))
        assert ma["status"] == mf["status"] == "completed", fused.name
        assert {k: ma[k] for k in FINAL} == pytest.approx({k: mf[k] for k in FINAL}, rel=1e-6), fused.name
        assert (fused / "checkpoints" / "last.pt").is_file() and (fused / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_a_group_of_five_trains_each_member_as_its_own_run_would(tmp_path: Path, monkeypatch) -> None:
    import distillab.training.group as group

    teacher_inputs: list[int] = []
    original = group.run_teachers

    def counted(teachers, taps, x):
        teacher_inputs.append(x.shape[0])
        return original(teachers, taps, x)

    monkeypatch.setattr(group, "run_teachers", counted)
    pairs = alone_and_together(tmp_path, DIGITS, MEMBERS)
    assert_same_runs(pairs, steps=50)
    # The fused steps (the runs alone call the teacher through their experiment): one teacher forward a step,
    # over both seeds' batches (64 + 64, an epoch's last batch 29 + 29).
    assert teacher_inputs == [128] * 22 + [58] + [128] * 22 + [58] + [128] * 22 + [58]


@pytest.mark.slow
def test_batchnorm_students_keep_their_own_running_statistics(tmp_path: Path) -> None:
    common = [
        "data=synthetic", "data.image_size=16", "data.num_train=128", "data.noise=0.3", "model/student=resnet8",
        "model/teacher=resnet8", "optim=sgd", "optim.lr=0.005", "optim.momentum=0", "trainer.max_epochs=13",
        "trainer.log_every=1", "teacher.cache_outputs=false",
    ]  # fmt: skip
    members = [
        ["loss=kd", "loss.temperature=4", "trainer.seed=0"],
        ["loss=kd", "loss.temperature=2", "loss.alpha=0.9", "weighting=learnable", "trainer.seed=0"],
        ["loss=ce", "trainer.seed=1"],
    ]
    pairs = alone_and_together(tmp_path, common, members)
    assert_same_runs(pairs, steps=50)
    students = [[load_checkpoint(d / "checkpoints" / "last.pt")["student"] for d in pair] for pair in pairs]
    means = [k for k in students[0][0] if k.endswith("running_mean")]
    assert means
    for a, f in students:  # BatchNorm's running statistics are each member's own run's (to float drift) ...
        assert all(torch.allclose(a[k], f[k], rtol=1e-4, atol=1e-4) for k in means)
    gap = max((students[0][1][k] - students[2][1][k]).abs().max().item() for k in means)
    assert gap > 1e-2  # ... and not shared: another member's differ far more than that


def test_a_member_whose_loss_overflows_stops_alone(tmp_path: Path) -> None:
    common = ["trainer.max_epochs=2", "model.student.dropout=0"]
    members = [["loss=kd", "trainer.seed=0"], [*NAN_TERM, "trainer.seed=0"], ["loss=kd", "trainer.seed=1"]]
    alone = []
    for i in (0, 2):
        cfg = compose_in(tmp_path / f"alone{i}", *common, *members[i])
        run(cfg)
        alone.append(Path(cfg.paths.output_dir))
    cfgs = [compose_in(tmp_path / f"fused{i}", *common, *own) for i, own in enumerate(members)]
    outcomes = run_group(cfgs)
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[2], dict)
    assert isinstance(outcomes[1], Exception)  # its loss term is NaN at its 30th call
    assert str(outcomes[1]).startswith("The loss became non-finite at step 30 (epoch 2): loss terms bomb were")
    stopped = json.loads((Path(cfgs[1].paths.output_dir) / "metrics.json").read_text())
    assert stopped["status"] == "failed" and "loss terms bomb were non-finite" in stopped["error"]
    assert load_checkpoint(Path(cfgs[1].paths.output_dir) / "checkpoints" / "last.pt")["step"] == 23  # epoch 1
    for a, i in zip(alone, (0, 2)):
        ma, mf = (json.loads((d / "metrics.json").read_text()) for d in (a, Path(cfgs[i].paths.output_dir)))
        assert {k: ma[k] for k in FINAL} == pytest.approx({k: mf[k] for k in FINAL}, rel=1e-6)


def test_jobs_that_differ_beyond_loss_weighting_and_seed_form_other_groups(tmp_path: Path) -> None:
    def cfg(*own: str):
        return compose_in(tmp_path, *own)

    base = group_key(cfg("loss=kd", "trainer.seed=0"))
    for same in (
        ["loss=fitnet", "trainer.seed=3"],
        ["loss.temperature=8", "weighting=learnable"],
        ["projector=linear"],
    ):
        assert group_key(cfg(*same)) == base, same
    for other in (["optim.lr=0.1"], ["data.batch_size=32"], ["trainer.max_epochs=5"], ["model/student=deep_nn"]):
        assert group_key(cfg(*other)) != base, other
    assert alone_reason(cfg("weighting=gradnorm")) == (
        "weighting GradNorm decides the gradient in a backward of its own (gradient-level)"
    )
    assert alone_reason(cfg("loss=fsp")) is not None and alone_reason(cfg("loss=fitnet")) is None
    assert (
        alone_reason(cfg("loss=catkd")) == "loss term catkd reads the networks' own layers, which a fused group stacks"
    )
    assert (
        alone_reason(cfg("loss=simkd")) == "loss term simkd reads the networks' own layers, which a fused group stacks"
    )
    assert alone_reason(cfg("loss=ctkd")) is None  # its temperature is a parameter of the member's own term
    assert alone_reason(cfg("trainer.cuda_graph=true")) == "trainer.cuda_graph captures the step of a run of its own"
    cfgs = [cfg("trainer.seed=0"), cfg("optim.lr=0.1"), cfg("trainer.seed=1"), cfg("trainer.backward=separate")]
    p = plan(cfgs)
    assert p.units == [[0, 2], [1], [3]] and list(p.alone) == [3]


SWEEP = ["--multirun", "hydra/launcher=fused", "~experiment", "trainer.max_epochs=2", "trainer.progress=false",
         "teacher.max_epochs=2", "model.student.dropout=0"]  # fmt: skip


@pytest.mark.slow
def test_the_launcher_writes_every_job_as_its_own_and_says_which_ran_alone(tmp_path: Path, monkeypatch, capfd) -> None:
    from distillab.report.runs import find_runs
    from tests.conftest import SHARED_CACHE

    sweep_dir = tmp_path / "sweep"
    code, out, err = cli(
        monkeypatch, capfd, *SWEEP, "loss=kd,fitnet", "weighting=fixed,gradnorm", "trainer.seed=0,1",
        f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert code == 0, err
    assert "fused launcher: 8 jobs, 4 trained in 1 group(s) of 4, 4 alone" in out
    assert out.count("runs alone: weighting GradNorm decides the gradient in a backward of its own") == 4
    # what the group's members say word for word (their teacher) is on the console once, and in each one's log
    assert out.count("on this validation set") == 1 + 4, out  # the group of 4, then each job that ran alone
    runs = sorted(find_runs(sweep_dir))
    assert len(runs) == 8
    for d in runs:
        assert json.loads((d / "metrics.json").read_text())["status"] == "completed"
        assert (d / ".hydra" / "overrides.yaml").is_file() and (d / "checkpoints" / "last.pt").is_file()
        assert "loss_weight/kd" in scalars(d) or "loss_weight/fitnet" in scalars(d)
        text = (d / "distillab.log").read_text()
        trained_its_teacher = "teacher stage done" in text  # (the first job, unless the cache held its teacher)
        assert text.count("epoch 2/2") == 1 + trained_its_teacher, d.name  # its own epoch lines, not the others'
        assert "\t#" not in text and "trained together" not in text, d.name  # nor the launcher's, about others
        assert str(d) in text and "on this validation set" in text  # its closing lines
    # a member trained in the group and the same job alone
    member = sweep_dir / "kd,fixed,seed=1"
    cfg = compose_in(tmp_path / "alone", "loss=kd", "trainer.seed=1", "model.student.dropout=0")
    run(cfg)
    fused_m, alone_m = (json.loads((d / "metrics.json").read_text()) for d in (member, Path(cfg.paths.output_dir)))
    assert alone_m["final_val_acc"] == pytest.approx(fused_m["final_val_acc"], rel=1e-6)


@pytest.mark.slow
def test_a_teacher_trained_while_a_member_is_set_up_is_in_that_members_log(tmp_path: Path, monkeypatch, capfd) -> None:
    """The teacher's own run, made while the first member is set up, logs into that member's log file (as a run
    of its own logs its teacher's stage), not into the other members'."""
    sweep_dir = tmp_path / "sweep"
    code, out, err = cli(
        monkeypatch, capfd, *SWEEP, "trainer.seed=0,1", f"paths.root={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert code == 0, err
    assert out.count("teacher stage done") == 1
    first, second = ((sweep_dir / f"seed={s}" / "distillab.log").read_text() for s in (0, 1))
    assert "teacher stage done" in first and first.count("epoch 2/2") == 2  # the teacher's, then its own
    assert "teacher stage" not in second and second.count("epoch 2/2") == 1


@pytest.mark.slow
def test_sigterm_checkpoints_every_member_and_the_printed_command_finishes_the_sweep(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    from tests.conftest import SHARED_CACHE

    sweep_dir = tmp_path / "sweep"
    args = [*SWEEP, "loss=kd", "loss.temperature=1,4", "trainer.seed=0,1", f"paths.root={tmp_path}",
            f"paths.cache_dir={SHARED_CACHE}", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    # the sweep's teacher, cached first: the step counter below would otherwise interrupt the teacher's training
    warm = [a for a in SWEEP if a not in ("--multirun", "hydra/launcher=fused")]
    assert cli(monkeypatch, capfd, *warm, "loss=kd", f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}",
               f"hydra.run.dir={tmp_path / 'warm'}")[0] == 0  # fmt: skip
    interrupt_after_step(monkeypatch, 30)  # epoch 2 (23 steps an epoch)
    code, out, _ = cli(monkeypatch, capfd, *args)
    monkeypatch.undo()
    assert code == 128 + signal.SIGTERM
    dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(dirs) == 4
    for d in dirs:
        assert json.loads((d / "metrics.json").read_text())["status"] == "interrupted"
        assert load_checkpoint(d / "checkpoints" / "last.pt")["step"] == 30
    command = out.strip().splitlines()[-1].split("to continue it (finished jobs are kept): ", 1)[1]
    code, out, err = cli(monkeypatch, capfd, *shlex.split(command)[3:])
    assert code == 0, err
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 2 and metrics["steps"] == 46


def test_a_group_resumed_from_different_points_trains_in_turn(tmp_path: Path, monkeypatch) -> None:
    """Members checkpointed at different points (one finished, one not started) train in turn, one `fit_group`
    each, and each ends where it should: the finished one takes no step more, the other all of its own."""
    from distillab.training import Trainer

    common = ["trainer.max_epochs=2", "model.student.dropout=0", "trainer.resume=true"]
    done = compose_in(tmp_path, *common, "trainer.seed=0")
    first = run(done)
    parts: list[list[int]] = []
    fit_group = Trainer.fit_group

    def recorded(self, members):
        parts.append([(m.resume_from or {}).get("step", 0) for m in members])
        return fit_group(self, members)

    monkeypatch.setattr(Trainer, "fit_group", recorded)
    outcomes = run_group([done, compose_in(tmp_path, *common, "trainer.seed=1")])
    assert parts == [[46], [0]]  # (digits: 23 steps an epoch) one part per starting point
    assert all(isinstance(o, dict) and o["status"] == "completed" and o["steps"] == 46 for o in outcomes), outcomes
    assert outcomes[0]["final_val_acc"] == first["final_val_acc"]  # nothing trained again


def test_a_group_stopped_in_one_part_leaves_the_other_parts_records_true(tmp_path: Path, monkeypatch) -> None:
    """Members resumed from different points train in turn. A signal in the first part leaves a member of a later
    part, not begun, `interrupted` at what its checkpoint holds (its first epoch, of the two now asked), not
    emptied; a signal in the second part leaves the member the first part finished `completed`."""
    from distillab.errors import Interrupted

    common = ["model.student.dropout=0", "trainer.resume=true"]
    x = [*common, f"paths.output_dir={tmp_path / 'x'}"]
    extended = compose_in(tmp_path, *x, "trainer.max_epochs=1")
    run(extended)  # finished after one epoch (23 steps), to be extended to two
    begun = compose_in(tmp_path, *common, "trainer.max_epochs=2", "trainer.seed=1")
    interrupt_after_step(monkeypatch, 30)
    with pytest.raises(Interrupted):
        run(begun)  # stopped in its second epoch
    monkeypatch.undo()
    record = {d: Path(c.paths.output_dir) / "metrics.json" for d, c in (("x", extended), ("y", begun))}
    before = json.loads(record["x"].read_text())

    def group() -> list[Any]:
        return [begun, compose_in(tmp_path, *x, "trainer.max_epochs=2")]  # parts: from step 30, then 23

    interrupt_after_step(monkeypatch, 35)  # in the first part
    with pytest.raises(Interrupted):
        run_group(group())
    monkeypatch.undo()
    not_begun = json.loads(record["x"].read_text())
    assert not_begun["status"] == "interrupted" and before["status"] == "completed"
    kept = ("best_val_acc", "final_val_acc", "best_epoch", "epochs")
    assert {k: not_begun[k] for k in kept} == {k: before[k] for k in kept}  # what its checkpoint holds
    assert json.loads(record["y"].read_text())["status"] == "interrupted"

    interrupt_after_step(monkeypatch, 30)  # in the second part (the first ends at step 46)
    with pytest.raises(Interrupted):
        run_group(group())
    monkeypatch.undo()
    finished = json.loads(record["y"].read_text())
    assert finished["status"] == "completed" and finished["epochs"] == 2 and finished["steps"] == 46
    stopped = json.loads(record["x"].read_text())
    assert stopped["status"] == "interrupted" and stopped["epochs"] == 1


def test_a_member_whose_checkpoint_does_not_fit_is_refused_alone(tmp_path: Path) -> None:
    """A resumed member whose last.pt does not fit its config is refused at its set-up, as its own run would be;
    the other members train, and its record stays as it was."""
    from distillab.errors import ConfigError

    common = ["model.student.dropout=0", "trainer.max_epochs=1", "trainer.resume=true"]
    broken = compose_in(tmp_path, *common, f"paths.output_dir={tmp_path / 'broken'}")
    run(broken)
    last = tmp_path / "broken" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["objective"]  # as a checkpoint of another config would lack what this one has
    torch.save(state, last)
    before = (tmp_path / "broken" / "metrics.json").read_text()
    extended = compose_in(tmp_path, *common, "trainer.max_epochs=2", f"paths.output_dir={tmp_path / 'broken'}")
    outcomes = run_group([extended, compose_in(tmp_path, *common, "trainer.seed=1")])
    assert isinstance(outcomes[0], ConfigError) and "checkpoints/last.pt does not fit" in str(outcomes[0])
    assert isinstance(outcomes[1], dict) and outcomes[1]["status"] == "completed"
    assert (tmp_path / "broken" / "metrics.json").read_text() == before


def test_a_member_that_fails_its_set_up_is_one_error_line_and_a_traceback_for_its_log(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """What a member's set-up raised is one ERROR line naming the member, and its traceback one DEBUG record (which
    goes to its own log file, where the sentence says it is); the other members train."""
    import logging

    import distillab.runner
    from distillab.errors import SetupFailed

    original = distillab.runner.build_experiment

    def fails_for_seed_1(cfg, *args, **kwargs):
        if cfg.trainer.seed == 1:
            raise RuntimeError("a constructor failed (simulated)")
        return original(cfg, *args, **kwargs)

    monkeypatch.setattr(distillab.runner, "build_experiment", fails_for_seed_1)
    common = ["model.student.dropout=0", "trainer.max_epochs=1"]
    cfgs = [compose_in(tmp_path, *common, f"trainer.seed={seed}") for seed in (0, 1)]
    with caplog.at_level(logging.DEBUG, logger="distillab"):
        outcomes = run_group(cfgs)
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[1], SetupFailed)
    failed = Path(cfgs[1].paths.output_dir).name
    said = [r for r in caplog.records if "a constructor failed (simulated)" in r.getMessage()]
    assert [r.levelname for r in said] == ["ERROR"] and said[0].getMessage().startswith(f"{failed}: ")
    traced = [r for r in caplog.records if r.exc_info and "a constructor failed" in str(r.exc_info[1])]
    assert len(traced) == 1 and traced[0].levelname == "DEBUG"


@pytest.mark.slow
def test_a_group_that_crashes_fails_its_jobs_and_the_sweep_goes_on(tmp_path: Path, monkeypatch, capfd) -> None:
    import distillab.cli
    from tests.conftest import SHARED_CACHE

    original, calls = distillab.cli.run_members, []

    def first_group_runs_out_of_memory(group):
        calls.append(len(group.jobs))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(group)

    monkeypatch.setattr(distillab.cli, "run_members", first_group_runs_out_of_memory)
    sweep_dir = tmp_path / "sweep"
    code, out, err = cli(
        monkeypatch, capfd, *SWEEP, "optim.lr=0.001,0.002", "trainer.seed=0,1", f"paths.root={tmp_path}",
        f"paths.cache_dir={SHARED_CACHE}", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert calls == [2, 2]  # two groups (the learning rate starts another), both launched
    assert code != 0 and "jobs #0, #1 failed: CUDA out of memory (simulated)" in out + err
    for seed in (0, 1):  # the second group trained as if nothing had happened
        done = json.loads((sweep_dir / f"lr=0.002,seed={seed}" / "metrics.json").read_text())
        assert done["status"] == "completed"


def test_members_with_the_same_teacher_and_inputs_share_one_teacher_output_cache(tmp_path: Path, monkeypatch) -> None:
    import distillab.runner as runner

    built = []
    original = runner.build_teacher_cache

    def counted(*args, **kwargs):
        built.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "build_teacher_cache", counted)
    common = ["trainer.max_epochs=1", "model.student.dropout=0"]
    members = [["loss=kd", "trainer.seed=0"], ["loss=kd", "loss.temperature=8", "trainer.seed=1"], ["loss=fitnet"]]
    cfgs = [compose_in(tmp_path / f"m{i}", *common, *own) for i, own in enumerate(members)]
    outcomes = run_group(cfgs)
    assert all(isinstance(o, dict) and o["status"] == "completed" for o in outcomes)
    assert len(built) == 2  # the two KD members (other seeds, same inputs) one cache; FitNets taps a layer: its own


def test_a_signal_while_a_members_teacher_trains_stops_the_group(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM while the first member's teacher trains (for the cache) stops the whole group, as the basic launcher
    stops its sweep: the next member does not train that teacher again from scratch."""
    import distillab.runner
    from distillab.errors import TeacherInterrupted

    trained = []

    def interrupted(cfg):  # what `run(cfg, label="teacher")` raises when a signal arrives mid-teacher
        trained.append(cfg)
        raise TeacherInterrupted("Interrupted by SIGTERM while training the teacher (simulated)", signal.SIGTERM)

    monkeypatch.setattr(distillab.runner, "_train_teacher", interrupted)
    common = ["loss=kd", "teacher.max_epochs=7"]  # a teacher no other test cached
    cfgs = [
        compose_in(tmp_path / f"m{i}", *common, f"loss.temperature={t}", shared_cache=False)
        for i, t in enumerate((1, 4))
    ]
    with pytest.raises(TeacherInterrupted):
        run_group(cfgs)
    assert len(trained) == 1
    status = json.loads((Path(cfgs[0].paths.output_dir) / "metrics.json").read_text())
    assert status["status"] == "interrupted"


@pytest.mark.slow
def test_a_member_refused_for_its_directory_leaves_the_others_of_its_group_training(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """A fused sweep into a folder where one job's directory already holds a run: that job is refused (one
    sentence), and the other members of its group train as their own jobs would."""
    from tests.conftest import SHARED_CACHE

    sweep_dir = tmp_path / "sweep"
    common = [*SWEEP, f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}", f"hydra.sweep.dir={sweep_dir}"]
    code, _, err = cli(monkeypatch, capfd, *common, "trainer.seed=0,9")
    assert code == 0, err
    earlier = (sweep_dir / "seed=0" / "metrics.json").read_text()
    code, out, err = cli(monkeypatch, capfd, *common, "trainer.seed=0,1,2")
    assert code != 0 and "seed=0 already holds a run" in out + err
    assert (sweep_dir / "seed=0" / "metrics.json").read_text() == earlier  # the earlier run, untouched
    for seed in (1, 2):
        assert json.loads((sweep_dir / f"seed={seed}" / "metrics.json").read_text())["status"] == "completed"
