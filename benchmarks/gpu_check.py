"""GPU check: training throughput of the CIFAR-100 benchmark's resnet32x4 -> resnet8x4 KD, per speed option.

For batch 64 and 256, every combination of `trainer.precision` (32, bf16-mixed), `trainer.channels_last`
(off, on), `trainer.compile` (off, on) and `data.augment_on` (workers, device): images per second through
`Trainer.train_batch` (the whole step, the teacher run every step) on synthetic CIFAR-100-shaped uint8 data
with the recipe's crop + flip, and the wall time 240 epochs of 50,000 images would take at that rate
(training steps only), and the seconds spent before the timed steps (models, loader, warm-up, compiling).
Compiled rows come last, in reverse order (batch 256, bf16, channels_last, device first); rows that do not
fit in `--budget-s` are listed as skipped.

    python benchmarks/gpu_check.py                 # on a GPU: under 8 minutes with the default budget
    python benchmarks/gpu_check.py --tiny          # resnet8 -> resnet8 at 16x16, a few steps: seconds on the CPU

First the tests marked `gpu` (`pytest -m gpu`: the CUDA graph's step against the eager one), then three small
tables: the whole step replayed as one CUDA graph (`trainer.cuda_graph`) against the
eager step, at batch 64 and 256; the teacher's logits cached per augmented view against the teacher every step,
and a fused sweep's group (`hydra/launcher=fused`): 1, 4 and 8 students trained as one at batch 64, as
student-images/s and against one run (the eager, unfused row is the group of one).

Prints Markdown tables (paste them into benchmarks/RESULTS.md with the machine they came from).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import SyntheticCIFAR
from distillab.build import build_experiment
from distillab.config import compose
from distillab.data.augment import CropFlip
from distillab.data.datasets import dataset_data
from distillab.instantiate import instantiate
from distillab.run_logger import RunLogger
from distillab.teacher import build_teachers
from distillab.teacher_outputs import build_teacher_cache
from distillab.training.evaluate import set_epoch

EPOCHS, IMAGES = 240, 50_000


def throughput(
    batch: int,
    precision: str,
    channels_last: bool,
    compiled: bool,
    augment_on: str,
    args: argparse.Namespace,
    students: int = 1,
    view_cache: bool = False,
    cuda_graph: bool = False,
) -> tuple[float, float]:
    """Student-images per second over the timed steps (`students` runs trained as one fused group, as
    `hydra/launcher=fused` trains a sweep's group: one teacher forward per batch), and the seconds before them."""
    begun = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="distillab-gpu-check-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # nothing left in /tmp
    models = ["model/student=resnet8", "model/teacher=resnet8"] if args.tiny else []
    cfg = compose(
        [
            "experiment=cifar100/resnet32x4_resnet8x4/kd",
            "data=synthetic",
            f"data.batch_size={batch}",
            "data.num_train=64",
            "data.num_val=16",
            "data.num_classes=100",  # CIFAR-100's labels, as SyntheticCIFAR draws them
            *models,
            *([f"data.image_size={16}"] if args.tiny else []),
            f"trainer.precision={precision}",
            f"trainer.channels_last={str(channels_last).lower()}",
            f"trainer.compile={str(compiled).lower()}",
            f"trainer.cuda_graph={str(cuda_graph).lower()}",
            f"trainer.device={args.device}",
            "teacher.cache_outputs=false",
            "trainer.progress=false",
            f"paths.root={out}",
            f"paths.output_dir={out}",
        ]
    )
    device = torch.device(args.device)
    # Each row compiles afresh, as its own run would: dynamo's cache is per function, so the rows' models (one
    # class, many precisions and layouts) would otherwise reach its recompile limit and fall back to eager.
    torch._dynamo.reset()
    size = 16 if args.tiny else 32
    images = batch * 10  # ten batches, cycled epoch after epoch (each epoch its own crops and flips)
    data = dataset_data(
        functools.partial(SyntheticCIFAR, True, images, size=size),
        functools.partial(SyntheticCIFAR, False, images, size=size),
        batch_size=batch,
        in_channels=3,
        image_size=size,
        num_classes=100,
        augment=CropFlip(4),
        augment_on=augment_on,
        num_workers=args.workers,
        device=args.device,
        normalize={"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]},
    )
    trainer = instantiate(cfg.trainer, key="trainer")
    members = []
    for seed in range(students):  # a sweep's members: same architecture and data, their own initialisation
        torch.manual_seed(seed)
        exp = build_experiment(cfg, device, build_teachers(cfg, device))
        exp.data = data
        member = trainer.prepare(exp, out)
        member.logger = RunLogger(out, enabled=False)
        members.append(member)
    if view_cache:  # the teacher's logits for all 162 views of every image, built once (untimed)
        for m in members:
            m.exp.teacher_cache = build_teacher_cache(1e6, data, m.exp.teachers, m.exp.teacher_taps, required=True)
    trainer.join(members)
    stages = [m.stages[-1] for m in members]

    def cycled():
        for epoch in itertools.count():
            set_epoch(data.train, epoch)
            yield from data.train

    batches = cycled()

    def run(n: int) -> None:
        for _ in range(n):
            loaded = next(batches)
            trainer.train_batch(members, stages, [loaded] * students)

    run(args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return students * batch * args.steps / (time.perf_counter() - start), start - begun


def hours(images_per_s: float) -> str:
    seconds = EPOCHS * IMAGES / images_per_s
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def fused_rows(args: argparse.Namespace) -> None:
    """A fused sweep's group (`hydra/launcher=fused`): 1, 4 and 8 students of the same recipe trained as one,
    one teacher forward per batch; student-images/s, and the time 240 epochs of each of the runs take together."""
    batch = 8 if args.tiny else 64
    print(
        "| students | batch | precision | augment_on | student-images/s | x one run | all runs, 240 epochs | set-up s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for precision in ("32", "bf16-mixed"):
        alone = None
        for students in (1, 4, 8):
            cells = f"| {students} | {batch} | {precision} | device |"
            try:
                rate, setup_s = throughput(batch, precision, False, False, "device", args, students)
            except Exception as error:
                print(f"{cells} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | | |", flush=True)
                continue
            alone = alone or rate
            total = hours(rate / students)
            print(f"{cells} {rate:,.0f} | {rate / alone:.2f} | {total} | {setup_s:.1f} |", flush=True)
    print()


def view_cache_rows(args: argparse.Namespace) -> None:
    """The teacher's logits looked up per augmented view (crop offset and flip) against the teacher run every
    step: batch 64, fp32, channels_last off and on, eager (the first row is today's eager baseline)."""
    batch = 8 if args.tiny else 64
    print("| batch | precision | channels_last | teacher | images/s | 240 epochs of 50k | set-up s |")
    print("|---|---|---|---|---|---|---|")
    for channels_last in (False, True):
        for cached in (False, True):
            teacher = "per-view cache" if cached else "every step"
            cells = f"| {batch} | 32 | {'on' if channels_last else 'off'} | {teacher} |"
            try:
                rate, setup_s = throughput(batch, "32", channels_last, False, "device", args, view_cache=cached)
            except Exception as error:
                print(f"{cells} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | |", flush=True)
                continue
            print(f"{cells} {rate:,.0f} | {hours(rate)} | {setup_s:.1f} |", flush=True)
    print()


def gpu_tests() -> None:
    """The tests marked `gpu` (skipped where there is no GPU): the CUDA graph against the eager step."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR", "E "))]
    print(f"gpu tests (pytest -m gpu): {lines[-1] if lines else done.stderr.strip()[-200:]}", *failed[:20], sep="\n")
    print()


def graph_rows(args: argparse.Namespace) -> None:
    """`trainer.cuda_graph`: the whole step replayed as one CUDA graph against the same step run eagerly (the
    baseline, measured in the same call), fp32, channels_last, augmentation on the device."""
    print("| batch | precision | channels_last | step | images/s | x eager | 240 epochs of 50k | set-up s |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (8,) if args.tiny else (64, 256):
        eager = None
        for graphed in (False, True):
            cells = f"| {batch} | 32 | on | {'cuda_graph' if graphed else 'eager'} |"
            if graphed and not args.device.startswith("cuda"):
                print(f"{cells} skipped (needs a GPU) | | | |", flush=True)
                continue
            try:
                rate, setup_s = throughput(batch, "32", True, False, "device", args, cuda_graph=graphed)
            except Exception as error:
                print(f"{cells} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | | |", flush=True)
                continue
            eager = rate if not graphed else eager
            against = f"{rate / eager:.2f}" if eager else "-"
            print(f"{cells} {rate:,.0f} | {against} | {hours(rate)} | {setup_s:.1f} |", flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="small models and images, a few steps (a CPU check of this script)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 100; --tiny 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per row (default 15, compile included; --tiny 1)"
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=300.0, help="rows that would start after this are skipped")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.tiny else 100)
    args.warmup = args.warmup or (1 if args.tiny else 15)
    if args.tiny:
        args.workers = min(args.workers, 2)
    batches = (8, 16) if args.tiny else (64, 256)
    combos = list(itertools.product(batches, ("32", "bf16-mixed"), (False, True), (False, True), ("workers", "device")))
    # Compiled rows last, and in reverse order (large batch, bf16, channels_last, device first): each compiles for
    # a minute or more, so a short budget skips the ones least likely to be the fastest.
    rows = [r for r in combos if not r[3]] + [r for r in reversed(combos) if r[3]]
    if args.tiny:
        rows = [r for r in rows if not r[3]]  # compiling needs a C++ toolchain (inductor); the GPU machine has one
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device={args.device} ({name}) torch={torch.__version__} steps={args.steps} warmup={args.warmup} "
        f"workers={args.workers}"
    )
    if not args.tiny:
        gpu_tests()
    started = time.perf_counter()
    graph_rows(args)
    fused_rows(args)
    view_cache_rows(args)
    print("| batch | precision | channels_last | compile | augment_on | images/s | 240 epochs of 50k | set-up s |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, precision, channels_last, compiled, augment_on in rows:
        flags = f"{'on' if channels_last else 'off'} | {'on' if compiled else 'off'}"
        cells = f"| {batch} | {precision} | {flags} | {augment_on} |"
        if time.perf_counter() - started > args.budget_s:
            print(f"{cells} skipped (time budget) | | |")
            continue
        try:
            rate, setup_s = throughput(batch, precision, channels_last, compiled, augment_on, args)
            print(f"{cells} {rate:,.0f} | {hours(rate)} | {setup_s:.1f} |", flush=True)
        except Exception as error:  # one failing option (say, compile without a toolchain) must not end the table
            print(f"{cells} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | |", flush=True)


if __name__ == "__main__":
    main()
