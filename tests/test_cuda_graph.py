"""`trainer.cuda_graph` (training/graph.py). On the CPU: the refusals, and the loop around the graph, with a capture
that re-runs the step eagerly and writes the new values into the tensors of the first ("captured") result, as a
replayed graph does; so a run must equal the eager run exactly, and anything the loop kept of a replay without
copying it would be overwritten and show. On a GPU (`gpu` mark, skipped elsewhere): the real graph against the eager
step."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from distillab.errors import CaptureFailed, ConfigError
from tests.conftest import compose_in, fit_in_process, scalars

FULL_DATA = ["data.train_subset=null", "trainer.max_epochs=3", "trainer.log_every=5"]  # 22 full batches + 1 of 29


def write_into(old: Any, new: Any) -> None:
    """Copy every tensor of `new` into the same place in `old` (what a replay does to the captured outputs)."""
    if isinstance(old, torch.Tensor):
        with torch.no_grad():
            old.copy_(new)
    elif isinstance(old, (tuple, list)):
        for a, b in zip(old, new, strict=True):
            write_into(a, b)
    elif isinstance(old, dict):
        for key in old:
            write_into(old[key], new[key])
    elif dataclasses.is_dataclass(old):
        for f in dataclasses.fields(old):
            write_into(getattr(old, f.name), getattr(new, f.name))


class EagerReplay:
    """A stand-in for `CudaCapture`: capturing runs the step once (it is this step); each replay runs it again and
    writes its outputs into the captured ones. It also checks what a real graph needs: that the learning rates are
    the captured ones (a replay cannot see new ones)."""

    made: ClassVar[list[EagerReplay]] = []

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.captures = self.replays = self.warm_steps = 0
        EagerReplay.made.append(self)

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizers.append(optimizer)

    def rates(self) -> list[float]:
        return [g["lr"] for o in self.optimizers for g in o.param_groups]

    def warm(self, work: Callable[[], Any]) -> Any:
        self.warm_steps += 1
        return work()

    def capture(self, work: Callable[[], Any]) -> Any:
        self.captures += 1
        self.work, self.result, self.captured_rates, self.first = work, work(), self.rates(), True
        return self.result

    def replay(self) -> None:
        assert self.rates() == self.captured_rates, "replayed with learning rates the graph did not capture"
        if self.first:
            self.first = False  # the capture itself ran this step
        else:
            write_into(self.result, self.work())
        self.replays += 1


@pytest.fixture
def eager_replay(monkeypatch):
    from distillab.training import graph, loop

    EagerReplay.made.clear()
    monkeypatch.setattr(loop, "check_cuda_graph", lambda *args: None)  # the CPU stands in for the GPU
    monkeypatch.setattr(graph, "CudaCapture", EagerReplay)
    return EagerReplay.made


@pytest.mark.parametrize(
    "overrides, captures, eager_after_warmup",
    [
        # lr moves at each epoch's end: epochs 2 and 3 run their first step eagerly and capture at the second
        (["loss=kd", "weighting=learnable", "optim/scheduler=cosine"], 3, 2),
        # lr moves every step of epoch 1 (warm-up): its steps run eagerly, and epoch 2's first (the last move);
        # epoch 3 captures at its first step. The clipping is replayed, and skip_step's masked update of a step made
        # non-finite (step 60).
        (
            ["loss=fitnet", "optim.warmup_epochs=1", "optim.grad_clip_norm=1", "trainer.nan_policy=skip_step"],
            2,
            22 - 3 + 1,
        ),
    ],
    ids=["kd-learnable-cosine", "fitnet-warmup-clipped-skip-step"],
)
def test_a_replayed_step_trains_exactly_as_the_eager_one(
    overrides: list[str], captures: int, eager_after_warmup: int, tmp_path: Path, eager_replay, caplog
) -> None:
    skipping = "trainer.nan_policy=skip_step" in overrides
    bad_step = 60  # in epoch 3, after its capture: a replay whose update the keep-mask undoes

    def nan_at_bad_step(exp) -> None:
        ce, calls = exp.objective["ce"], []
        computed = ce.forward

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            calls.append(1)  # once per step, eager or replayed (the stand-in capture re-runs the step)
            value = computed(*args, **kwargs)
            return value * float("nan") if len(calls) == bad_step else value

        ce.forward = forward

    hook = nan_at_bad_step if skipping else None
    with caplog.at_level(logging.INFO, logger="distillab"):
        _, eager, eager_dir = fit_in_process(tmp_path / "eager", [*overrides, *FULL_DATA], hook)
        _, graphed, graphed_dir = fit_in_process(
            tmp_path / "graphed", [*overrides, *FULL_DATA, "trainer.cuda_graph=true"], hook
        )
    if skipping:  # each run skipped that one step
        assert caplog.text.count("1 steps were skipped for a non-finite loss") == 2, caplog.text

    (capture,) = eager_replay
    epochs, full_batches = 3, 22
    # captured once an epoch where the rates have settled; every full batch replayed but the 3 warm-up steps and
    # the eager ones
    assert capture.warm_steps == 3
    assert capture.captures == captures
    assert capture.replays == epochs * full_batches - 3 - eager_after_warmup
    assert eager.best == graphed.best and eager.final == graphed.final
    assert eager.final_weights == graphed.final_weights
    logged, replayed = scalars(eager_dir), scalars(graphed_dir)
    assert logged.keys() == replayed.keys()
    for tag in logged:  # every point: a kept reference overwritten by a later replay would change its mean
        assert replayed[tag] == pytest.approx(logged[tag], rel=1e-6, abs=1e-7), tag
    if "optim.warmup_epochs=1" in overrides:
        assert "the learning rate changes every step" in caplog.text


def test_a_step_that_cannot_be_captured_stops_the_run_naming_why(tmp_path: Path, eager_replay, monkeypatch) -> None:
    def refuses(self, work):  # as torch.cuda.graph does when the step reads the host: raises again on leaving
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        finally:
            raise RuntimeError("operation failed due to a previous error during capture")

    monkeypatch.setattr(EagerReplay, "capture", refuses)
    with pytest.raises(CaptureFailed) as stopped:
        fit_in_process(tmp_path, ["loss=kd", "data.train_subset=null", "trainer.cuda_graph=true"])
    said = str(stopped.value)
    assert said.startswith("trainer.cuda_graph=true could not capture the training step at step 4 (operation not ")
    assert said.endswith("run it with trainer.cuda_graph=false.")


def test_the_graph_captures_the_largest_batch_and_never_replays_stale_rates() -> None:
    """`StepGraph.run` alone, on a toy step: a run resumed at an epoch's last, smaller batch captures the full
    batches once it sees one; a changed rate runs eagerly until it settles, then is captured again."""
    from distillab.training.graph import StepGraph
    from distillab.training.group import Batch

    weight = torch.nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    capture = EagerReplay()
    graph = StepGraph(capture, warmup_steps=1)
    ran: list[int] = []

    def work(batch: Batch) -> torch.Tensor:
        ran.append(len(batch.x))
        return (batch.x.sum() * weight).detach()

    def step(size: int, epoch: int = 0) -> float:
        x = torch.arange(float(size))
        return graph.run(Batch(x, x.long()), work, optimizer, epoch, step=len(ran) + 1).item()

    assert step(3) == 3.0  # warm-up, on the smaller batch a resumed run starts with
    assert step(5) == 10.0 and (capture.captures, capture.replays) == (1, 1)  # the full batch: captured
    assert step(5) == 10.0 and step(3) == 3.0 and (capture.captures, capture.replays) == (1, 2)
    optimizer.param_groups[0]["lr"] = 0.05  # an epoch scheduler moved it
    assert step(5, epoch=1) == 10.0 and (capture.captures, capture.replays) == (1, 2)  # eager: it just moved
    assert step(5, epoch=1) == 10.0 and (capture.captures, capture.replays) == (2, 3)  # settled: captured again
    optimizer.param_groups[0]["lr"] = 0.02  # within the epoch (a per-step scheduler): not the captured rate
    assert step(5, epoch=1) == 10.0 and (capture.captures, capture.replays) == (2, 3)  # eager: it just moved
    assert step(5, epoch=1) == 10.0 and (capture.captures, capture.replays) == (3, 4)  # settled: captured again
    assert ran == [3, 5, 5, 3, 5, 5, 5, 5]  # each step ran once (the capture is the step it was taken at)


def test_an_optimizer_state_on_the_host_is_refused_at_the_capture() -> None:
    from distillab.training.graph import StepGraph
    from distillab.training.group import Batch

    weight = torch.nn.Parameter(torch.ones(()))
    optimizer = torch.optim.Adam([weight])
    optimizer.state[weight]["step"] = torch.zeros((), device="meta")  # on another device than the parameter
    graph = StepGraph(EagerReplay(), warmup_steps=0)
    x = torch.ones(2)
    graph.run(Batch(x, x.long()), lambda b: b.x.sum(), optimizer, 0, 1)  # the first step runs eagerly
    with pytest.raises(CaptureFailed, match="keeps state on the host \\(Adam's step\\)"):
        graph.run(Batch(x, x.long()), lambda b: b.x.sum(), optimizer, 0, 2)


def test_a_run_asking_for_a_cuda_graph_on_the_cpu_is_refused_in_one_sentence() -> None:
    from distillab.training import Trainer

    with pytest.raises(ConfigError) as refused:
        Trainer(device="cpu", cuda_graph=True)
    said = str(refused.value)
    assert said == (
        "trainer.cuda_graph=true needs a CUDA device (this run's is cpu): run it on a GPU, or set "
        "trainer.cuda_graph=false."
    )


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"precision": "16-mixed"}, "16-mixed"),
        ({"strategy": "ddp"}, "trainer.strategy=ddp"),
        ({"compile": True}, "trainer.compile"),
    ],
)
def test_what_a_graph_cannot_capture_is_refused(settings: dict[str, Any], named: str) -> None:
    from distillab.training.graph import check_cuda_graph

    accepted = {"precision": "32", "strategy": "single", "compile": False}
    check_cuda_graph(torch.device("cuda"), **accepted)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=named):
        check_cuda_graph(torch.device("cuda"), **(accepted | settings))  # type: ignore[arg-type]


def test_a_weighting_that_decides_in_its_own_backward_is_refused_before_training(tmp_path: Path) -> None:
    from distillab.build import build_experiment
    from distillab.teacher import build_teachers

    cfg = compose_in(tmp_path, "loss=kd", "weighting=gradnorm", "trainer.cuda_graph=true")
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="cannot capture the step of weighting GradNorm"):
        build_experiment(cfg, cpu, build_teachers(cfg, cpu))


GPU_VARIANTS = {  # overrides; the tolerance of the first points and of all (later ones drift as the runs do)
    "sgd-recipe": (["teacher.cache_outputs=false"], 1e-4, 2e-2),
    "adam-capturable": (["optim=adam", "~optim.momentum", "optim.lr=1e-3", "teacher.cache_outputs=false"], 1e-4, 2e-2),
    "bf16-mixed": (["trainer.precision=bf16-mixed", "teacher.cache_outputs=false"], 1e-3, 5e-2),
    "teacher-per-view-cache": (["teacher.cache_outputs=true"], 1e-4, 2e-2),  # the lookup captured in the graph
}


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(GPU_VARIANTS))
def test_the_cuda_graph_gives_the_eager_steps_losses_and_weights_on_a_gpu(
    variant: str, tmp_path: Path, monkeypatch
) -> None:
    """resnet8 -> resnet8 KD with learnable weights on synthetic CIFAR-shaped data (crop and flip on the device), a
    cosine schedule, 320 steps: replayed and eager runs log the same losses and weights to float tolerance."""
    from distillab.teacher_outputs import build_teacher_cache

    overrides, first, every = GPU_VARIANTS[variant]
    common = [
        *overrides,
        "optim/scheduler=cosine",
        "experiment=cifar100/resnet32x4_resnet8x4/kd",
        "model/student=resnet8",
        "model/teacher=resnet8",
        "data=synthetic",
        "data/augment=crop_flip",
        "data.num_train=1024",
        "data.batch_size=32",
        "weighting=learnable",
        "trainer.max_epochs=10",
        "trainer.device=cuda",
        "trainer.log_every=8",
    ]

    def cache_views(exp) -> None:  # what the runner's teacher stage does: every view's logits, looked up by the step
        if variant == "teacher-per-view-cache":
            exp.teacher_cache = build_teacher_cache(1e6, exp.data, exp.teachers, exp.teacher_taps, required=True)
            assert exp.teacher_cache is not None and exp.teacher_cache.views == 162

    _, eager, eager_dir = fit_in_process(tmp_path / "eager", common, cache_views)
    from distillab.training import graph

    captured: list[int] = []

    class Counted(graph.CudaCapture):
        def capture(self, work):
            captured.append(1)
            return super().capture(work)

    monkeypatch.setattr(graph, "CudaCapture", Counted)
    from distillab.training import Trainer

    steps: list[tuple[int, bool, int]] = []  # (step, captured in it, host syncs torch reported in it)
    train_batch = Trainer.train_batch

    def watched(self, members, stages, batches):
        before = len(captured)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")  # each synchronising CUDA call warns
            try:
                train_batch(self, members, stages, batches)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # (torch's sync-debug warnings, told apart from any other warning by what they say)
        syncs = [w for w in said if "synchroniz" in str(w.message)]
        steps.append((members[0].p.step, len(captured) > before, len(syncs)))

    monkeypatch.setattr(Trainer, "train_batch", watched)
    _, graphed, graphed_dir = fit_in_process(tmp_path / "graphed", [*common, "trainer.cuda_graph=true"], cache_views)
    assert len(captured) == 10  # one capture an epoch (the cosine moves the rate at each epoch's end)
    # a step that neither logs nor captures (torch.cuda.graph synchronises to begin one) reads nothing back
    quiet = [(step, syncs) for step, capturing, syncs in steps if step % 8 and not capturing]
    assert len(quiet) > 250 and all(syncs == 0 for _, syncs in quiet), [q for q in quiet if q[1]][:5]
    logged, replayed = scalars(eager_dir), scalars(graphed_dir)
    tags = [t for t in logged if t.startswith(("loss/", "loss_weight/"))]
    assert len(tags) == 5  # total, ce, kd and the two weights
    for tag in tags:  # the first points to float rounding; later ones drift as cuBLAS and cuDNN sum in their order
        assert replayed[tag][:3] == pytest.approx(logged[tag][:3], rel=first, abs=first / 10), tag
        assert replayed[tag] == pytest.approx(logged[tag], rel=every, abs=every / 20), tag
    assert abs(eager.final["val/acc"] - graphed.final["val/acc"]) <= 5


def test_a_failed_capture_ends_a_sweep_rather_than_its_next_jobs(caplog) -> None:
    """Under --multirun a stopped run lets Hydra go on with the next job; a failed capture ends the sweep (its other
    jobs would capture the same step), as an interruption does."""
    from omegaconf import OmegaConf

    from distillab import cli

    with caplog.at_level(logging.ERROR, logger="distillab"), pytest.raises(SystemExit) as ended:
        cli._fail(CaptureFailed("trainer.cuda_graph=true could not capture ..."), OmegaConf.create({}), multirun=True)
    assert ended.value.code == 1
    assert caplog.records[-1].getMessage().endswith("; the sweep stopped there, as its other jobs would")
