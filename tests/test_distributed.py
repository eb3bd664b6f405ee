"""trainer.strategy=ddp: sharded data, gradients averaged over ranks, rank 0 alone writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distillab import distributed
from distillab.build import build_experiment
from distillab.checkpoint import load_checkpoint, seed_everything
from distillab.data import TensorLoader
from distillab.errors import ConfigError, Interrupted
from distillab.experiment import Experiment
from distillab.instantiate import instantiate
from distillab.run_logger import RunLogger
from distillab.teacher import build_teachers
from tests.conftest import compose_in, fit_in_process

# FitNets with learnable weights: student, projector and log-weights all have to stay in sync.
# 256 samples, no BatchNorm in the tutorial models and their dropout switched off, so DDP on 2 ranks
# x 32 is the same computation as one process on batches of 64 (each rank's batch k is half of batch k).
RECIPE = [
    "experiment=tutorial_cifar10",
    "data=synthetic",
    "data.num_train=256",
    "data.num_val=64",
    "loss=fitnet",
    "weighting=learnable",
    "trainer.max_epochs=2",
    "teacher.max_epochs=1",
    "trainer.device=cpu",
    "teacher.cache_outputs=false",
    # SGD: the update is linear in the gradient, so the ranks' and the one process's different summation orders
    # stay at float rounding. Adam divides by sqrt(v): where a gradient is near zero, that rounding becomes a
    # different update (1e-3 apart after 8 steps on some CPUs), which says nothing about DDP.
    "optim=sgd",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_process(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    initial: dict[str, Any] = {}

    def no_dropout(exp: Experiment) -> None:  # dropout masks depend on the batch shape: they would differ
        for module in exp.student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        initial.update(
            {
                part: {k: v.clone() for k, v in getattr(exp, part).state_dict().items()}
                for part in ("objective", "weighting")
            }
        )

    exp, result, run_dir = fit_in_process(tmp_path, overrides, before_fit=no_dropout)
    return {
        "student": exp.student.state_dict(),
        "objective": exp.objective.state_dict(),
        "weighting": exp.weighting.state_dict(),
        "steps": result.steps,
        "run_dir": str(run_dir),
        "initial": initial,
    }


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as `rank` of a gloo group, joined and left as the command line does under torchrun."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env()
    finished = False
    try:
        yield
        finished = True
    finally:
        distributed.shutdown(finished)


def _ddp_worker(rank: int, world: int, port: int, tmp_path: Path) -> None:
    with gloo_group(rank, world, port):
        state = train_in_process(tmp_path / f"rank{rank}", [*RECIPE, "data.batch_size=32", "trainer.strategy=ddp"])
        torch.save(state, tmp_path / f"state{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_stay_identical_and_match_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"state{r}.pt", weights_only=False) for r in range(2)]
    single = train_in_process(tmp_path / "single", [*RECIPE, "data.batch_size=64"])
    initial = single["initial"]

    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"] == 2 * 256 // 64
    for part in ("student", "objective", "weighting"):
        assert ranks[0][part].keys() == single[part].keys()
        for key, value in single[part].items():
            assert torch.equal(ranks[0][part][key], ranks[1][part][key]), f"ranks differ in {part}.{key}"
            torch.testing.assert_close(
                ranks[0][part][key], value, rtol=1e-4, atol=1e-5, msg=f"DDP vs one process: {part}.{key}"
            )
    projector = next(k for k in single["objective"] if k.endswith("weight"))
    assert not torch.equal(single["objective"][projector], initial["objective"][projector])  # it did train
    assert not torch.equal(single["weighting"]["log_weights"], initial["weighting"]["log_weights"])

    written = {r: sorted(p.name for p in Path(ranks[r]["run_dir"]).glob("**/*") if p.is_file()) for r in range(2)}
    assert "last.pt" in written[0] and any(n.startswith("events.out.tfevents") for n in written[0])
    assert written[1] == []  # rank 1 trained, but wrote nothing


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 1])  # one process under torchrun is DDP too (WORLD_SIZE=1)
def test_torchrun_cli_writes_one_run_directory_from_rank_zero(tmp_path: Path, processes: int) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        f"--nproc_per_node={processes}",
        "--master_port",
        str(free_port()),
        "-m",
        "distillab",
        "trainer.strategy=ddp",
        *RECIPE,
        "data.batch_size=32",
        "trainer.progress=false",
        f"paths.root={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "teacher.max_epochs=1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("*/*")  # both ranks agreed on one directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2 * 256 // processes // 32
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(list(run_dir.glob("events.out.tfevents*"))) == 1  # one writer: rank 0's
    assert (
        done.stdout.count("best val/acc") + done.stderr.count("best val/acc") == 2
    )  # teacher + student, from rank 0 only


def test_shards_split_each_epoch_without_overlap() -> None:
    loader = TensorLoader(torch.arange(11.0).unsqueeze(1), torch.arange(11), batch_size=2, shuffle=True, seed=3)
    loader.set_epoch(1)
    order = torch.cat([i for _, _, i in loader])

    def served(shard: TensorLoader) -> torch.Tensor:
        shard.set_epoch(1)
        return torch.cat([i for _, _, i in shard])

    # train: every rank the same count; rank r takes every 2nd sample of the epoch's order from r on
    train = [served(loader.sharded(r, 2, even=True)) for r in range(2)]
    assert torch.equal(train[0], order[0:10:2]) and torch.equal(train[1], order[1:10:2])
    assert len(loader.sharded(0, 2, even=True)) == 3  # 5 samples in batches of 2
    # val: uneven parts covering every sample exactly once
    val = [served(loader.sharded(r, 3, even=False)) for r in range(3)]
    assert [len(v) for v in val] == [4, 4, 3]
    assert sorted(torch.cat(val).tolist()) == list(range(11))


def test_ddp_without_torchrun_and_unknown_strategies_are_refused() -> None:
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node=N"):
        instantiate({"_target_": "distillab.training.Trainer", "strategy": "ddp"})
    with pytest.raises(ConfigError, match="use 'single' or 'ddp'"):
        instantiate({"_target_": "distillab.training.Trainer", "strategy": "fsdp"})


def _interruptible_worker(
    rank: int, world: int, port: int, tmp_path: Path, run_dir: Path, tag: str, sigterm_rank1_at: int
) -> None:
    """A DDP fit of 3 epochs with DWA weights (they follow the epoch means of the loss terms, so every
    rank's running sums matter); `sigterm_rank1_at`: a real SIGTERM reaches rank 1 alone after that step."""
    with gloo_group(rank, world, port):
        cfg = compose_in(
            tmp_path / f"{tag}{rank}",
            *RECIPE,
            "loss=kd",
            "weighting=dwa",
            "trainer.max_epochs=3",
            "data.batch_size=32",
            "trainer.strategy=ddp",
            f"paths.output_dir={run_dir}",
        )
        seed_everything(cfg.trainer.seed)
        trainer = instantiate(cfg.trainer)
        exp = build_experiment(cfg, trainer.device, build_teachers(cfg, trainer.device))
        last = run_dir / "checkpoints" / "last.pt"
        resume_from = load_checkpoint(last) if tag == "resumed" else None
        if sigterm_rank1_at and rank == 1:
            one_batch = trainer.train_batch

            def then_signal(members, stages, batches):
                one_batch(members, stages, batches)
                if members[0].p.step == sigterm_rank1_at:
                    os.kill(os.getpid(), signal.SIGTERM)

            trainer.train_batch = then_signal
        logger = RunLogger(run_dir, enabled=distributed.is_main())
        try:
            trainer.fit(exp, logger, run_dir, resume_from)
        except Interrupted as stopped:
            assert stopped.every_rank  # the command line, too, leaves the group through the barrier after it
        logger.close()
        torch.save(
            {"student": exp.student.state_dict(), "weighting": exp.weighting.state_dict()}, tmp_path / f"{tag}{rank}.pt"
        )


@pytest.mark.slow
def test_a_sigterm_on_one_rank_stops_all_at_the_same_step_and_the_resumed_run_ends_identical(tmp_path: Path) -> None:
    mp.spawn(_interruptible_worker, args=(2, free_port(), tmp_path, tmp_path / "straight", "straight", 0), nprocs=2)
    mp.spawn(_interruptible_worker, args=(2, free_port(), tmp_path, tmp_path / "cut", "cut", 6), nprocs=2)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert saved["step"] == 6 and saved["progress"]["batch"] == 2  # mid-epoch 2 (4 steps per epoch), on both ranks
    assert len(saved["rank_sums"]) == 2
    mp.spawn(_interruptible_worker, args=(2, free_port(), tmp_path, tmp_path / "cut", "resumed", 0), nprocs=2)
    for rank in range(2):
        straight, resumed = (torch.load(tmp_path / f"{tag}{rank}.pt") for tag in ("straight", "resumed"))
        for part in ("student", "weighting"):
            for key, value in straight[part].items():
                assert torch.equal(value, resumed[part][key]), f"rank {rank}: {part}.{key} differs after resuming"


def _leaving_worker(rank: int, world: int, port: int, tmp_path: Path) -> None:
    with gloo_group(rank, world, port):
        if rank == 0:
            time.sleep(1.0)  # rank 0 still writing its files when rank 1 is done
            (tmp_path / "rank0_done").touch()
    if rank == 1:
        (tmp_path / "rank1_left").write_text(str((tmp_path / "rank0_done").exists()))


def test_a_rank_that_finished_leaves_the_group_only_once_every_rank_has_finished(tmp_path: Path, monkeypatch) -> None:
    """A finished rank waits for the others before leaving: one that exited while gloo's worker thread still
    held the last collective's tensors aborted at exit (SIGABRT, seen in CI). A failed rank leaves at once."""
    mp.spawn(_leaving_worker, args=(2, free_port(), tmp_path), nprocs=2)
    assert (tmp_path / "rank1_left").read_text() == "True"

    barriers: list[int] = []
    for finished in (False, True):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        monkeypatch.setattr(dist, "barrier", lambda: barriers.append(finished))
        distributed.shutdown(finished)
        monkeypatch.undo()
        assert not dist.is_initialized()
    assert barriers == [True]


@pytest.mark.slow
def test_the_command_line_leaves_through_the_barrier_after_a_run_every_rank_ends_at_the_same_point(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """`python -m distillab` under torchrun (one process: a real gloo group): a run that completed, and a DDP run
    that a SIGTERM stopped at a step (every rank stops at that step), leave the group after the barrier; a run
    refused in its job, and a stop of a run that is not DDP (one rank's alone), leave at once."""
    from tests.conftest import interrupt_after_step
    from tests.test_run_ownership import QUICK, cli

    left: list[bool] = []
    leave = distributed.shutdown
    monkeypatch.setattr(distributed, "shutdown", lambda finished: (left.append(finished), leave(finished)))
    cases = {  # (a stop outside DDP, a teacher's training under torchrun say, is one rank's alone: not marked)
        "single, completed": (["trainer.strategy=single"], 0),
        "single, interrupted": (["trainer.strategy=single", "trainer.max_epochs=3"], 128 + signal.SIGTERM),
        "ddp, interrupted": (["trainer.strategy=ddp", "trainer.max_epochs=3"], 128 + signal.SIGTERM),
        "ddp, refused": (["trainer.strategy=ddp", "loss=kd", "loss.temperature=-1"], 2),
    }
    for name, (extra, code) in cases.items():
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        where = [f"hydra.run.dir={tmp_path / name.replace(', ', '_')}", f"paths.root={tmp_path}"]
        with pytest.MonkeyPatch.context() as signalling:
            if name.endswith("interrupted"):
                interrupt_after_step(signalling, 2)
            got, _, err = cli(monkeypatch, capfd, *QUICK, *extra, *where)
        assert got == code, err
        assert ("after step 2" in err) == name.endswith("interrupted"), err  # stopped in training, at that step
        assert not dist.is_initialized()
    assert left == [True, False, True, False]


def test_cuda_and_mps_resolve_to_an_indexed_device_as_tensors_report_theirs(monkeypatch) -> None:
    """`trainer.device=cuda` (and `auto` on a GPU machine) means the current GPU, named `cuda:N` as a tensor's
    `.device` is (`mps` likewise `mps:0`), so the loop recognises a batch already on the device (in-memory data)
    and does not copy it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    for asked in ("cuda", "auto"):
        assert distributed.resolve_device(asked) == torch.device("cuda", 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert distributed.resolve_device("mps") == torch.device("mps", 0)  # an MPS tensor's device is mps:0


def test_a_rank_waiting_for_rank_0s_teacher_stops_with_its_sentence_or_after_the_timeout(tmp_path, monkeypatch) -> None:
    """Ranks other than 0 wait for rank 0 to train the teacher: they return once its teacher.pt exists, stop at
    once with rank 0's sentence when its training failed in this launch (the `.failed` file rank 0 writes; one an
    earlier launch left is not read as this one's), and stop after teacher.wait_minutes otherwise, saying which key
    to raise."""
    import threading

    from distillab.errors import ConfigError
    from distillab.teacher import launch_id, wait_for_rank_0

    final, failed = tmp_path / "t" / "teacher.pt", tmp_path / "t.failed"
    final.parent.mkdir()
    threading.Timer(0.05, final.write_text, ["weights"]).start()
    assert wait_for_rank_0(final, failed, minutes=0.1) == final
    final.unlink()
    message = "ConfigError: training the teacher deep_nn: teacher.optim.lr=-1 is not valid"
    failed.write_text(json.dumps({"launch": "an earlier launch", "error": message}))
    with pytest.raises(ConfigError, match=r"waited 0.002 minutes"):  # an earlier launch's failure is not this one's
        wait_for_rank_0(final, failed, minutes=0.002)
    failed.write_text(json.dumps({"launch": launch_id(), "error": message}))
    with pytest.raises(
        ConfigError, match=r"rank 0 could not train the teacher this rank waits for: ConfigError: .*=-1"
    ):
        wait_for_rank_0(final, failed, minutes=1)
    failed.unlink()
    with pytest.raises(ConfigError, match=r"waited 0.002 minutes for rank 0 .* raise teacher.wait_minutes"):
        wait_for_rank_0(final, failed, minutes=0.002)


def test_rank_0_leaves_the_sentence_of_a_failed_teacher_for_the_ranks_that_wait(tmp_path, monkeypatch) -> None:
    from distillab import distributed
    from distillab.errors import ConfigError, config_key
    from distillab.teacher import cache_entry, cached_teacher
    from tests.conftest import compose_in

    cfg = compose_in(tmp_path, "loss=kd", shared_cache=False)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)

    def train(_cfg):  # as the teacher's run names a key of its config
        raise ConfigError(f"{config_key('optim.lr')}=-1 is not valid: use a number > 0.")

    with pytest.raises(ConfigError, match=r"teacher.optim.lr=-1 is not valid"):
        cached_teacher(cfg, cfg.model.teacher, train)
    directory = cache_entry(cfg, cfg.model.teacher)
    marker = directory.parent / f"{directory.name}.failed"
    from distillab.teacher import launch_id

    written = json.loads(marker.read_text())
    assert written["launch"] == launch_id() and "teacher.optim.lr=-1 is not valid" in written["error"]
