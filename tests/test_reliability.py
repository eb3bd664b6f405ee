"""Faults and bad input: one clear sentence before training, NaN guard, atomic checkpoints, exact resume."""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from distillab.checkpoint import load_checkpoint, save_atomic
from distillab.cli import hydra_value, main
from distillab.errors import Interrupted, NonFiniteLoss
from distillab.losses import LossTerm
from distillab.models.tutorial import DeepNN, LightNN
from distillab.runner import run
from tests.conftest import SHARED_CACHE, TIMING, compose_in, interrupt_after_step, run_in, scalars


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` with a hash of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Teacher checkpoints that must be refused: text, truncated, another architecture."""
    files = tmp_path_factory.mktemp("bad_files")
    torch.save(DeepNN(num_classes=10, in_channels=1, image_size=8).state_dict(), files / "deep.pt")
    torch.save(LightNN(num_classes=10, in_channels=1, image_size=8).state_dict(), files / "light.pt")
    whole = (files / "deep.pt").read_bytes()
    (files / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (files / "text.pt").write_text("not a checkpoint")
    return files


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished run, made by the CLI (so it has its .hydra/ record and log), whose files no bad
    invocation may change."""
    root = tmp_path_factory.mktemp("earlier")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillab",
            "loss=ce",
            "trainer.max_epochs=1",
            "trainer.progress=false",
            f"hydra.run.dir={root / 'run'}",
            f"paths.root={root}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


BAD_INPUT = [
    (["loss=nope"], "loss=nope is not a choice of loss: use one of ab, at, catkd, cc, ce, combined, cosine, crd, "),
    (
        ["weighting=nope"],
        "weighting=nope is not a choice of weighting: use one of aligned_mtl, cagrad, dot, dualproj, dwa, fixed, ",
    ),
    (
        ["model/student=nope"],
        "model/student=nope is not a choice of model/student: use one of conv_autoencoder, deep_nn, ",
    ),
    (["loss=fitnet", "projector=mlp", "projector.hidden=-1"], "projector.hidden=-1 is not valid: use an integer >= 1."),
    (  # the key the user set, not the term's copy of it (`loss.terms.fitnet.projector: ${projector}`)
        ["loss=fitnet", "projector._target_=distillab.projectors.Conv3x4"],
        "projector._target_='distillab.projectors.Conv3x4' cannot be imported: distillab.projectors has no 'Conv3x4' "
        "(did you mean Conv3x3?).",
    ),
    (  # a projector's shapes are given when the term calls it: not keys to suggest
        ["loss=fitnet", "projector=mlp", "+projector.hiden=3"],
        "projector.hiden is not an argument of distillab.projectors.MLP (did you mean projector.hidden?): valid keys "
        "are hidden.",
    ),
    (["loss=fitnet", "projector=convreg", "projector.relu=2"], "projector.relu=2 is not valid: use true or false."),
    (  # a 1-channel image target: cross-entropy over one "class" is 0 whatever the model does
        ["experiment=denoise", "loss=ce"],
        "cross-entropy needs a score per class, but the student gives (1, 8, 8) per sample, over which it is 0 ",
    ),
    (
        ["loss.temperature=0"],
        "loss.terms.kd.temperature=0 (from loss.temperature=0) is not valid: use a finite number > 0 and <= 100.",
    ),
    (
        ["loss.temperature=1e9"],
        "loss.terms.kd.temperature=1000000000.0 (from loss.temperature=1000000000.0) is not valid: use a finite "
        "number > 0 and <= 100.",
    ),
    (["loss.alpha=1.5"], "loss.alpha=1.5 is not valid: use a number >= 0 and <= 1 (the task term gets 1 - alpha)."),
    (["loss=ce", "loss.weights.ce=-1"], "loss.weights.ce=-1 is not valid: use a number >= 0 and <= 1e6."),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not valid: use an integer >= 1."),
    (["data.batch_size=0"], "data.batch_size=0 is not valid: use an integer >= 1."),
    (["optim.lr=0"], "optim.lr=0 is not valid: use a finite number > 0 and <= 10."),
    (
        ["loss.temperature=abc"],
        "loss.terms.kd.temperature='abc' (from loss.temperature='abc') is not valid: use a finite number > 0 and <= "
        "100.",
    ),
    (
        ["+data.augment.padding=2"],  # a key of the augment group's configs, with none chosen
        "data.augment={{'padding': 2}} is not valid: use null or a choice of the data/augment group, whose keys are "
        "then set: data/augment=crop_flip data.augment.padding=2.",
    ),
    (
        ["loss=fitnet", "loss.student_layer=nope"],
        "loss.student_layer='nope' is not a module of LightNN: valid paths include features, classifier.",
    ),
    (  # a layer named by the key that set it, through the term's copy of it (shallow_layers: ${loss.shallow_layers})
        ["loss=self_distill", "loss.shallow_layers=[features.9]"],
        "loss.shallow_layers='features.9' is not a module of LightNN: valid paths include features.5, features.4,",
    ),
    (
        ["loss=fitnet", "projector=identity"],
        "loss.terms.fitnet.projector='Identity' is not valid (Identity cannot map a student feature of shape "
        "(16, 2, 2) to the teacher's (32, 2, 2)): use a learnable projector",
    ),
    (  # refused by the term's `setup`, named by the key the term sits under
        ["loss=cosine", "loss.student_layer=classifier"],
        "loss.terms.cosine.projector=None is not valid (the student's width 10 and the teacher's 128 are not multiples "
        "of each other, so average pooling cannot match them): use a projector config such as ${{projector}}",
    ),
    (  # refused by the term's `bind_data`, named the same way
        ["loss=mlkd", "loss.views=2"],
        "loss.terms.mlkd.views=2 is not valid (it is MLKD's number of views of each sample, and the data gives 1): use "
        "null (as the data gives), 2 with data/augment=weak_and_strong",
    ),
    (  # refused by the weighting's check of the metrics the run reports, named under weighting
        ["loss=kd", "weighting=staged", "weighting.stages.0.until.metric=val/nope"],
        "weighting.stages[0].until.metric='val/nope' is not valid (this run does not report it): use one of val/acc, ",
    ),
    (  # refused by a node inside the one built (data.augment inside data)
        ["data/augment=crop_flip", "data.augment.padding=-1"],
        "data.augment.padding=-1 is not valid: use an integer >= 0.",
    ),
    (["teacher.checkpoint=/nonexistent.pt"], "Checkpoint /nonexistent.pt does not exist"),
    (["teacher.checkpoint={files}/text.pt"], "text.pt is not a readable torch checkpoint"),
    (
        ["teacher.checkpoint={files}/truncated.pt"],
        "truncated.pt is not a readable torch checkpoint (truncated or another format",
    ),
    (
        ["teacher.checkpoint={files}/light.pt"],
        "light.pt does not fit the teacher DeepNN: missing keys ['features.2.bias'",
    ),
    (["loss=kd", "~model/teacher"], "loss.terms.kd needs a teacher but none is configured"),
    (
        ["data=cifar10", "data.download=false", "paths.data_dir={files}/none"],
        "CIFAR10 (train split) was not found under",
    ),
    (["data=synthetic", "data.num_train=0", "loss=ce"], "data.num_train=0 is not valid: use an integer >= 1."),
    (["trainer.nan_policy=maybe"], "trainer.nan_policy='maybe' is not valid: use stop, skip_step or off."),
]


@pytest.mark.parametrize(
    ("overrides", "message"), BAD_INPUT, ids=lambda x: " ".join(x) if isinstance(x, list) else None
)
def test_bad_input_is_one_sentence_before_training(
    overrides: list[str], message: str, bad_files: Path, earlier_run: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    """The CLI in-process (as `python -m distillab ...` runs it): exit 2, one line, no traceback, nothing
    of the earlier run touched, no checkpoint or event file for the new one."""
    before = snapshot(earlier_run)
    run_dir = tmp_path / "new"
    args = [o.format(files=bad_files) for o in overrides]
    common = [
        f"hydra.run.dir={run_dir}",
        f"paths.root={earlier_run.parent}",
        f"paths.cache_dir={SHARED_CACHE}",
        "trainer.max_epochs=1",
    ]
    monkeypatch.setattr(sys, "argv", ["distillab", *common, *args])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capfd.readouterr()
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("distillab: error: ") and err.rstrip().endswith("."), err
    assert message.format(files=bad_files) in err
    assert "Traceback" not in out + err
    assert snapshot(earlier_run) == before
    assert not (run_dir / "checkpoints").exists() and not list(run_dir.glob("events.*"))


def test_bad_input_into_an_earlier_runs_directory_changes_nothing_in_it(earlier_run: Path, monkeypatch, capfd) -> None:
    kept = snapshot(earlier_run)  # its .hydra/ record and log included
    assert ".hydra/overrides.yaml" in kept and "distillab.log" in kept
    for args in (["loss.alpha=2"], ["loss=ce"]):  # bad value; a good config that would train over the run
        monkeypatch.setattr(
            sys, "argv", ["distillab", *args, f"hydra.run.dir={earlier_run}", f"paths.root={earlier_run.parent}"]
        )
        GlobalHydra.instance().clear()
        with pytest.raises(SystemExit):
            main()
        assert {k: v for k, v in snapshot(earlier_run).items() if k in kept} == kept
    assert "already holds a run (checkpoints/last.pt): continue it with trainer.resume=true" in capfd.readouterr().err


# -- non-finite losses -------------------------------------------------------------------------------


class NaNAtCall(LossTerm):
    """A loss term that is 0 until its `at_call`-th call, NaN then: a fault at a known step, decided on the device
    (test_host_sync counts host reads around it)."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call = at_call
        self.register_buffer("calls", torch.tensor(0))  # state: the dry run's call is undone

    def forward(self, outputs) -> torch.Tensor:
        self.calls += 1
        zero = outputs.student.out.sum() * 0
        return zero + torch.where(self.calls == self.at_call, float("nan"), 0.0)


NAN_TERM = [
    "+loss.terms.bomb={_target_:tests.test_reliability.NaNAtCall,at_call:30}",
    "+loss.weights.bomb=1.0",
    "loss=ce",
]


def test_a_nan_loss_stops_the_run_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = compose_in(tmp_path, *NAN_TERM, "trainer.max_epochs=3")
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(NonFiniteLoss) as stopped:
        run(cfg)
    # digits: 1437 training images, batches of 64 -> 23 steps per epoch; call 30 is step 30, in epoch 2
    assert str(stopped.value).startswith(
        "The loss became non-finite at step 30 (epoch 2): loss terms bomb were non-finite;"
    )
    assert "checkpoints/last.pt holds the state after epoch 1" in str(stopped.value)
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 23
    assert all(torch.isfinite(t).all() for t in last["student"].values())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_skip_step_leaves_the_bad_step_out_and_finishes(tmp_path: Path, caplog) -> None:
    metrics, run_dir = run_in(tmp_path, *NAN_TERM, "trainer.max_epochs=2", "trainer.nan_policy=skip_step")
    assert metrics["status"] == "completed" and metrics["steps"] == 46
    assert all(
        torch.isfinite(t).all() for t in load_checkpoint(run_dir / "checkpoints" / "last.pt")["student"].values()
    )
    assert "step 30 skipped: loss terms bomb were non-finite" in caplog.text
    assert "1 steps were skipped" in caplog.text


OPTIMIZERS = {  # each optimizer's own starting state: zeros (Adam), lr (Rprop's step sizes), 1 (NAdam's product)
    "adam": lambda p: torch.optim.Adam([p], lr=0.1),
    "sgd-dampening": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5),
    "nadam": lambda p: torch.optim.NAdam([p], lr=0.1),
    "rprop": lambda p: torch.optim.Rprop([p], lr=0.1),
    "asgd": lambda p: torch.optim.ASGD([p], lr=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_masked_step_is_the_step_where_kept_and_no_step_at_all_where_not(optimizer: str) -> None:
    """skip_step without a host read (`masked_step`): after every step the parameters and the optimizer's state
    are exactly those of an optimizer that stepped on the kept steps only, also when the skipped step is the first
    (the state it created is removed, not zeroed: zeros are not every optimizer's start)."""
    from distillab.training.step import masked_step

    def state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]

    plain_param, masked_param = (torch.nn.Parameter(torch.arange(4.0)) for _ in range(2))
    plain, masked = (OPTIMIZERS[optimizer](p) for p in (plain_param, masked_param))
    steps = [(1.0, False), (2.0, True), (float("nan"), False), (-1.0, True), (0.5, True), (float("inf"), False)]
    for gradient, keep in steps:
        for p in (plain_param, masked_param):
            p.grad = torch.full((4,), gradient)
        if keep:
            plain.step()
        masked_step(masked, torch.tensor(keep))
        assert torch.equal(masked_param, plain_param)
        assert len(state(masked)) == len(state(plain))
        assert all(torch.equal(a, b) for a, b in zip(state(masked), state(plain), strict=True))


def test_running_sums_leave_a_skipped_steps_record_out_and_count_only_the_kept() -> None:
    """Under skip_step each record comes with its step's `keep`: a skipped (NaN) record adds nothing, and the
    steps and samples are those kept, counted on the device and read with the sums."""
    from distillab.training.state import RunningSums

    sums = RunningSums()
    records = [(torch.tensor([1.0, 2.0]), True, 8), (torch.tensor([float("nan"), 5.0]), False, 8)]
    records += [(torch.tensor([3.0, 4.0]), True, 5)]
    for value, keep, samples in records:
        sums.add((value,), ["a", "b"], samples, keep=torch.tensor(keep))
    sums.flush()
    assert sums.pop("point") == ({"a": 4.0, "b": 6.0}, 2, 13)


class NaNGradientAtCall(LossTerm):
    """A term whose value is 0 (finite) at every call but whose gradient is NaN at its `at_call`-th call:
    d sqrt(|x|)/dx at 0 is inf * 0, as a focal loss with gamma < 1 had at confident predictions."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call = at_call
        self.register_buffer("calls", torch.tensor(0))

    def forward(self, outputs) -> torch.Tensor:
        self.calls += 1
        zero = outputs.student.out.sum() * 0
        return zero.abs().sqrt() if self.calls == self.at_call else zero


NAN_GRADIENT = [
    "+loss.terms.bomb={_target_:tests.test_reliability.NaNGradientAtCall,at_call:30}",
    "+loss.weights.bomb=1.0",
    "loss=ce",
]


@pytest.mark.parametrize("clip", [None, 5.0], ids=["no-clipping", "clipping"])
def test_a_finite_loss_with_a_nan_gradient_is_caught_and_never_updates_the_weights(
    clip: float | None, tmp_path: Path, caplog
) -> None:
    clipping = [f"optim.grad_clip_norm={clip}"] if clip else []
    cfg = compose_in(tmp_path / "stop", *NAN_GRADIENT, "trainer.max_epochs=3", *clipping)
    with pytest.raises(NonFiniteLoss) as stopped:
        run(cfg)
    assert str(stopped.value).startswith(
        "The gradient became non-finite at step 30 (epoch 2): every loss term was finite, but the gradient was not;"
    )
    metrics, run_dir = run_in(
        tmp_path / "skip", *NAN_GRADIENT, "trainer.max_epochs=2", "trainer.nan_policy=skip_step", *clipping
    )
    assert metrics["status"] == "completed" and metrics["steps"] == 46
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for part in ("student", "optim") for t in _tensors(last[part]))
    assert "step 30 skipped: every loss term was finite, but the gradient was not" in caplog.text


def test_a_skipped_steps_gradient_norms_are_left_out_of_the_logged_ones(tmp_path: Path) -> None:
    """trainer.grad_norm_every=1 under skip_step: the skipped step's NaN norms are masked out of the logged means,
    as its losses are, not averaged into a NaN point."""
    metrics, run_dir = run_in(
        tmp_path, *NAN_GRADIENT, "trainer.max_epochs=2", "trainer.nan_policy=skip_step", "trainer.grad_norm_every=1"
    )
    assert metrics["status"] == "completed"
    logged = scalars(run_dir)
    norms = {tag: points for tag, points in logged.items() if tag.startswith("grad_norm/")}
    assert set(norms) == {"grad_norm/ce", "grad_norm/bomb"}
    assert all(math.isfinite(v) for points in norms.values() for v in points) and len(norms["grad_norm/ce"]) >= 4


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


# -- checkpoints ---------------------------------------------------------------------------------------


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def crash_half_way(obj, handle) -> None:
        handle.write(b"PK\x03\x04 half a zip archive")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = load_checkpoint(path)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.ones(3))


# -- resume ----------------------------------------------------------------------------------------------

# Dropout in the student (RNG), learnable weights (their own parameters and optimizer state), a cosine
# schedule (stepped at each epoch's end) and a KD teacher: everything a resume must restore.
RESUME = ["loss=kd", "weighting=learnable", "optim/scheduler=cosine", "trainer.max_epochs=3", "trainer.log_every=5"]


# 23 steps per epoch, a point every 5: step 27 is mid-epoch and between two points (records still held).
# Resumed after step 23, the first thing the run does is epoch 1's scheduler step: PyTorch must not warn
# that it came before an optimizer step (it did not: that step ran before the interruption).
@pytest.mark.parametrize("stop_after", [23, 27], ids=["end-of-epoch-1", "mid-epoch-2"])
@pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_an_interrupted_run_resumed_ends_bit_identical_to_an_uninterrupted_one(
    stop_after: int, tmp_path: Path, monkeypatch
) -> None:
    whole, whole_dir = run_in(tmp_path / "whole", *RESUME)

    cfg = compose_in(tmp_path / "parts", *RESUME)
    run_dir = Path(cfg.paths.output_dir)
    interrupt_after_step(monkeypatch, stop_after)
    with pytest.raises(Interrupted, match=f"Interrupted by SIGTERM after step {stop_after} "):
        run(cfg)
    monkeypatch.undo()
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted"
    if stop_after == 27:  # epoch 1 was validated: how far the run got is recorded (the report's row shows it)
        first_epoch = scalars(whole_dir)["val/acc"][0]  # (TensorBoard keeps float32)
        assert stopped["epochs"] == 1 and stopped["best_val_acc"] == stopped["final_val_acc"]
        assert stopped["best_val_acc"] == pytest.approx(first_epoch, rel=1e-6)
    else:  # stopped before epoch 1's validation: nothing reached yet
        assert "epochs" not in stopped and "best_val_acc" not in stopped
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == stop_after
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored

    resumed, _ = run_in(tmp_path / "parts", *RESUME, f"paths.output_dir={run_dir}", "trainer.resume=true")
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {k: v for k, v in whole.items() if k not in TIMING}
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (whole_dir, run_dir))
    for part in ("student", "weighting"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    logged, whole_logged = scalars(run_dir), scalars(whole_dir)
    for tag in ("val/acc", "loss_weight/kd", "loss/total", "loss/kd", "train/acc"):  # no step logged twice or lost
        assert logged[tag] == whole_logged[tag], tag


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path: Path, caplog) -> None:
    metrics, run_dir = run_in(tmp_path, "loss=ce", "trainer.max_epochs=1", "trainer.resume=true")
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    said = [r for r in caplog.records if "starting from the beginning" in r.getMessage()]  # a single run: warned
    assert [r.levelname for r in said] == ["WARNING"] and str(run_dir / "checkpoints" / "last.pt") in said[0].message


@pytest.mark.slow
def test_sigterm_to_the_cli_checkpoints_and_the_printed_command_resumes_it(tmp_path: Path) -> None:
    """The acceptance recipe: `kill -TERM` a running `python -m distillab`, then the command it prints."""
    common = [
        "~experiment",  # all of digits: the epochs last long enough to be interrupted
        "trainer.max_epochs=4",
        "teacher.max_epochs=2",
        f"paths.root={tmp_path}",
        f"paths.cache_dir={SHARED_CACHE}",
        "trainer.progress=false",
    ]
    whole = subprocess.run(
        [sys.executable, "-m", "distillab", *common, f"hydra.run.dir={tmp_path / 'whole'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr

    run_dir = tmp_path / "my runs é" / "r"  # the printed command quotes it: copy-pasteable as is
    job = subprocess.Popen(
        [sys.executable, "-m", "distillab", *common, f"hydra.run.dir='{run_dir}'"],  # Hydra's quoting
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (run_dir / "checkpoints" / "last.pt").exists() and job.poll() is None:  # in epoch 2 now
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "distillab: Interrupted by SIGTERM after step" in err
    command = err.strip().splitlines()[-1].split("to continue: ", 1)[1]
    assert command.startswith("python -m distillab ") and command.endswith(
        f"{shlex.quote(f'hydra.run.dir={hydra_value(str(run_dir))}')} trainer.resume=true"
    )
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(
        [sys.executable, "-m", "distillab", *shlex.split(command)[3:]], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", run_dir))
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
