"""Shared helpers: compose a config the way the CLI does and run it in-process on tiny data."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# pytest-xdist runs one worker per core (make test: -n auto); torch's default, a thread per core in every worker,
# would oversubscribe the cores (OpenMP threads spin waiting for each other): each worker, and the runs it starts
# as subprocesses, gets its share of the cores instead. Set before torch is imported.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # as xdist's
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distillab import distributed
from distillab.build import build_experiment
from distillab.checkpoint import seed_everything
from distillab.config import compose
from distillab.experiment import Experiment
from distillab.instantiate import instantiate
from distillab.run_logger import RunLogger
from distillab.runner import run
from distillab.teacher import build_teachers
from distillab.training import FitResult, Trainer

# Small and quick: every end-to-end test starts from these and adds its own overrides (the teacher's own
# epochs too: its default, 20, is for real runs).
TINY = ["trainer.max_epochs=2", "teacher.max_epochs=2", "trainer.log_every=2", "trainer.progress=false"]
# Trained teachers (and the digits split) are shared by the whole session, xdist's workers included (each teacher
# is keyed by everything that decides its weights, so sharing cannot mix them up, and its file lock makes one
# worker train it while another waits); tests of the cache itself pass shared_cache=False. The process that loads
# this file first (pytest, or xdist's controller, whose workers inherit the variable) makes the folder and removes
# it when the session ends: the CIFAR teachers alone take about a gigabyte.
OWNS_SHARED_CACHE = "DISTILLAB_TEST_CACHE" not in os.environ
if OWNS_SHARED_CACHE:
    os.environ["DISTILLAB_TEST_CACHE"] = tempfile.mkdtemp(prefix="distillab-test-cache-")
SHARED_CACHE = Path(os.environ["DISTILLAB_TEST_CACHE"])
TIMING = ("train_time_s", "samples_per_s")  # the only metrics.json values that may differ between two runs


def pytest_unconfigure(config: pytest.Config) -> None:
    if OWNS_SHARED_CACHE:
        shutil.rmtree(SHARED_CACHE, ignore_errors=True)


def unused_dir(parent: Path, stem: str = "run") -> Path:
    """`parent/run`, or `run1`, `run2`, ... if taken: a run refuses to train over an earlier one."""
    return next(d for n in range(1_000) if not (d := parent / (f"{stem}{n}" if n else stem)).exists())


def plain_defaults(overrides: Sequence[str]) -> list[str]:
    """`["~experiment"]`: the tests start from the plain defaults, not from the default experiment
    (quickstart: 100 labels, 200 epochs), unless a test chooses (or removes) an experiment itself."""
    return [] if any(o.lstrip("+~").startswith("experiment") for o in overrides) else ["~experiment"]


def compose_in(tmp_path: Path, *overrides: str, shared_cache: bool = True):
    cache = SHARED_CACHE if shared_cache else tmp_path / "cache"
    return compose(
        [
            *plain_defaults(overrides),
            f"paths.root={tmp_path}",
            f"paths.cache_dir={cache}",
            f"paths.output_dir={unused_dir(tmp_path)}",
            *TINY,
            *overrides,
        ]
    )


def run_in(tmp_path: Path, *overrides: str, shared_cache: bool = True) -> tuple[dict[str, Any], Path]:
    """Run an experiment in-process; returns (metrics.json as written, run directory)."""
    cfg = compose_in(tmp_path, *overrides, shared_cache=shared_cache)
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def fit_in_process(
    tmp_path: Path, overrides: list[str], before_fit: Callable[[Experiment], None] | None = None
) -> tuple[Experiment, FitResult, Path]:
    """Build and fit like the CLI does, keeping the built experiment to look into. Teachers keep their
    seeded random weights (none is trained): enough wherever only the computation is under test."""
    cfg = compose_in(tmp_path, *overrides)
    seed_everything(cfg.trainer.seed)
    trainer = instantiate(cfg.trainer)
    exp = build_experiment(cfg, trainer.device, build_teachers(cfg, trainer.device))
    if before_fit is not None:
        before_fit(exp)
    run_dir = Path(cfg.paths.output_dir)
    logger = RunLogger(run_dir, enabled=distributed.is_main())
    result = trainer.fit(exp, logger, run_dir)
    logger.close()
    return exp, result, run_dir


def interrupt_after_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process right after the run's training step `step` (counted over all stages), as
    `kill -TERM` would send it."""
    original = Trainer.train_batch

    def train_then_signal(self, members, stages, batches):
        original(self, members, stages, batches)
        if members[0].p.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "train_batch", train_then_signal)


@contextlib.contextmanager
def lock_held_elsewhere(run_dir: Path) -> Iterator[None]:
    """Another process holds `run_dir`'s lock (`RunLock`, as a run training there does) for the block; it is then
    killed with SIGKILL (no chance to release anything: the kernel drops its lock)."""
    holds = "import sys, time; from pathlib import Path; from distillab.rundir import RunLock; "
    holds += "lock = RunLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", holds, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag of a run's event files, read back with TensorBoard's own reader."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def custom_charts(run_dir: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """A run's Custom Scalars layout, read back: category -> [(chart, its tag regexes)], in order."""
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {c.title: [(chart.title, list(chart.multiline.tag)) for chart in c.chart] for c in layout.category}


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A CLI run in this process configures logging (Hydra's console handler on this test's captured stdout): its
    handlers go with the test, so later tests do not write to a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_typed_command_left():
    """A CLI run in this process records its command line (`command_line.typed`), from which the commands it
    prints are built: cleared after the test, so a later test's expected commands do not carry its flags."""
    from distillab import command_line

    yield
    command_line.record_typed([])


@pytest.fixture
def tiny_run(tmp_path: Path):
    """run_in for a test: each call gets a fresh run directory under the test's tmp_path."""
    calls = iter(range(1_000))
    return lambda *overrides: run_in(tmp_path / f"call{next(calls)}", *overrides)
