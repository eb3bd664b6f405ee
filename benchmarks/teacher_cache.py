"""Cached teacher outputs: KD epochs with the teacher run every step vs looked up from the cache.

The PyTorch KD tutorial's pair (DeepNN teacher ~70x the LightNN student's cost) on tutorial-shaped
synthetic data (3x32x32, 10 classes, batch 128), both sides through `Trainer.fit` with the same
config apart from `teacher.cache_outputs`. The cached side pays for one teacher pass over the training
set (building the cache) on top of its epochs; that pass is counted in its time.

Then the build's memory: an MLP teacher whose tapped 4096-wide hidden layer is cached for `--memory-samples`
8x8 images; the peak resident memory during `build_teacher_cache` (sampled every millisecond) against the size
of the cache it leaves.

Then the per-view cache under the CIFAR recipe's random crop (padding 4) and flip: resnet32x4 -> resnet8x4 KD
(the teacher about 6x the student's cost) on CIFAR-shaped synthetic data, `--view-samples` training images at
16x16 (small enough for a CPU) in batches of 64: epoch time with the teacher's logits looked up per (sample,
view) against the teacher run every step, and the time to build the cache (162 views of every sample).

    python benchmarks/teacher_cache.py [--epochs 10] [--batches 10] [--device cpu] [--memory-samples 20000]
                                       [--view-samples 192] [--view-epochs 5]

Last lines: speedup=<time without cache / time with cache, cache building included>,
peak_over_cache=<peak increase during the build / cache size>, then
view_cache_speedup=<epoch time with the teacher every step / with the per-view cache, the build excluded>.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from distillab.build import build_experiment
from distillab.checkpoint import seed_everything
from distillab.config import compose
from distillab.instantiate import instantiate
from distillab.run_logger import RunLogger
from distillab.teacher import build_teachers
from distillab.teacher_outputs import build_teacher_cache

TUTORIAL = ["experiment=tutorial_cifar10", "data=synthetic", "data.num_val=128", "data.batch_size=128", "loss=kd"]


def timed_kd_run(cache: bool, args: argparse.Namespace, setting: list[str] | None = None) -> tuple[float, float]:
    """(seconds to build the cache, seconds in `Trainer.fit`) for one KD run (default: the tutorial pair)."""
    out = Path(tempfile.mkdtemp(prefix="distillab-teacher-cache-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # nothing left in /tmp
    cfg = compose(
        [
            *(setting or [*TUTORIAL, f"data.num_train={128 * args.batches}", f"trainer.max_epochs={args.epochs}"]),
            f"trainer.device={args.device}",
            "trainer.progress=false",
            f"teacher.cache_outputs={str(cache).lower()}",
            f"paths.root={out}",
            f"paths.output_dir={out}",
        ]
    )
    seed_everything(0)
    trainer = instantiate(cfg.trainer)
    teachers = build_teachers(cfg, trainer.device)  # random weights: a step costs the same either way
    exp = build_experiment(cfg, trainer.device, teachers)
    start = time.perf_counter()
    exp.teacher_cache = build_teacher_cache(4096, exp.data, teachers, exp.teacher_taps) if cache else None
    built = time.perf_counter()
    assert (exp.teacher_cache is not None) == cache
    logger = RunLogger(out)
    trainer.fit(exp, logger, out)
    logger.close()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return built - start, time.perf_counter() - built


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def cache_memory(samples: int) -> tuple[float, float]:
    """(peak increase of resident memory during the build, size of the cache), in MB."""
    out = Path(tempfile.mkdtemp(prefix="distillab-teacher-cache-memory-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # nothing left in /tmp
    cfg = compose(
        [
            "data=synthetic",
            "data.in_channels=1",
            "data.image_size=8",
            f"data.num_train={samples}",
            "data.num_val=64",
            "data.batch_size=256",
            "model/teacher=mlp",
            "model.teacher.hidden=[4096]",
            "loss=feature_mse",
            "loss.student_layers=[body]",
            "loss.teacher_layers=[body]",
            "projector=linear",
            "model/student=mlp",
            "model.student.hidden=[16]",
            "trainer.device=cpu",
            f"paths.root={out}",
            f"paths.output_dir={out}",
        ]
    )
    teachers = build_teachers(cfg, torch.device("cpu"))
    exp = build_experiment(cfg, torch.device("cpu"), teachers)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    base = rss_bytes()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    cache = build_teacher_cache(1e9, exp.data, teachers, exp.teacher_taps)
    stop.set()
    watcher.join()
    assert cache is not None
    size = sum(o.out.nbytes + sum(f.nbytes for f in o.features.values()) for o in cache.outputs)
    return (peak[0] - base) / 2**20, size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="KD epochs per run (the tutorial trains 10)")
    parser.add_argument("--batches", type=int, default=10, help="training batches of 128 per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-samples", type=int, default=20_000)
    parser.add_argument("--view-samples", type=int, default=192, help="training images of the per-view case")
    parser.add_argument("--view-epochs", type=int, default=5)
    args = parser.parse_args()

    _, every_step = timed_kd_run(False, args)
    build, cached = timed_kd_run(True, args)
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"epochs={args.epochs} batches/epoch={args.batches} batch=128x3x32x32"
    )
    print(f"teacher every step: {every_step:.2f} s ({every_step / args.epochs:.3f} s/epoch)")
    print(
        f"cached teacher:     {build + cached:.2f} s = {build:.2f} s building the cache + {cached:.2f} s "
        f"({cached / args.epochs:.3f} s/epoch)"
    )
    print(f"per-epoch speedup once cached: {every_step / cached:.2f}x")
    print(f"speedup={every_step / (build + cached):.2f}")
    peak, size = cache_memory(args.memory_samples)
    print(
        f"cache build memory: {size:.0f} MB of cached outputs ({args.memory_samples} samples x 4096 floats), peak "
        f"increase {peak:.0f} MB"
    )
    print(f"peak_over_cache={peak / size:.2f}")

    recipe = [
        "experiment=cifar100/resnet32x4_resnet8x4/kd",
        "data=synthetic",
        "data/augment=crop_flip",  # the recipe's random crop (padding 4) and flip
        "data.image_size=16",
        "data.num_classes=100",
        f"data.num_train={args.view_samples}",
        "data.num_val=64",
        "data.batch_size=64",
        f"trainer.max_epochs={args.view_epochs}",
        "trainer.checkpoint_every=1000",  # (the last epoch still writes last.pt, on both sides)
    ]
    _, live = timed_kd_run(False, args, recipe)
    build, viewed = timed_kd_run(True, args, recipe)
    print(
        f"resnet32x4 -> resnet8x4 KD, crop + flip, {args.view_samples} images of 3x16x16, batch 64, "
        f"{args.view_epochs} epochs: teacher every step {live / args.view_epochs:.3f} s/epoch, per-view cache "
        f"{viewed / args.view_epochs:.3f} s/epoch (building it: {build:.1f} s for 162 views x {args.view_samples})"
    )
    print(f"view_cache_speedup={live / viewed:.2f}")


if __name__ == "__main__":
    main()
