"""Framework overhead: distillab's KD training step against a hand-written loop on the same models and data.

Both sides get identical models (same initial weights), the same batches, the same recipe (Adam 1e-3, KD with
CE), and are timed alternately, one step each (A B A B ...), after a warm-up; the per-step figure is the
median of the per-pair differences (`overhead_us`; the ratio of the two medians: `overhead_ratio`). A median
leaves out what happens every few steps (a TensorBoard point every `log_every`, the held records' sums), so
the mean of the differences is printed too (`overhead_mean_us`), and the median over each fifth of the pairs
(on a shared box the step time drifts within a run), and then each side runs alone in alternated
blocks of steps (200; tutorial pair: 20), `block_ratio`: their total times' ratio, the step time a run pays,
with no cache shared between the sides.

The distillab side is `Trainer.train_batch`: everything its loop does per batch (device copy, forward with
taps, loss terms, weighting and its backward, NaN check, optimizer step (and a scheduler's, when one is set),
running sums, a TensorBoard point every `log_every` steps). The teacher runs on every step on both sides
(teacher.cache_outputs=false): this measures the framework, not the cache. The hand loop is the PyTorch KD
tutorial's inner loop, `loss.item()` included (its running loss; distillab's NaN check reads the same one
scalar).

    python benchmarks/overhead.py            # the tutorial's DeepNN -> LightNN on 3x32x32, batch 128: overhead_ratio
    python benchmarks/overhead.py --tiny     # MLP [64] -> MLP [32] on 8x8, batch 64, one thread: overhead_us
    python benchmarks/overhead.py --tiny trainer.nan_policy=skip_step   # overrides for distillab's side

Both print the aten operations one step dispatches on each side (a TorchDispatchMode counter), which is what
costs on a GPU, where a small model's step takes a few milliseconds.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from distillab.build import build_experiment
from distillab.config import compose
from distillab.instantiate import instantiate
from distillab.run_logger import RunLogger
from distillab.teacher import build_teachers
from distillab.training import Trainer
from distillab.training.state import Progress


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def hand_kd_step(teacher, student, optimizer, inputs, labels, T: float, alpha: float, device: torch.device) -> float:
    """The inner loop of the PyTorch KD tutorial's `train_knowledge_distillation` (with a batchmean KL)."""
    inputs, labels = inputs.to(device), labels.to(device)
    optimizer.zero_grad()
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    student_logits = student(inputs)
    soft_targets = F.softmax(teacher_logits / T, dim=-1)
    soft_prob = F.log_softmax(student_logits / T, dim=-1)
    soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)
    label_loss = F.cross_entropy(student_logits, labels)
    loss = alpha * soft_targets_loss + (1 - alpha) * label_loss
    loss.backward()
    optimizer.step()
    return loss.item()  # the tutorial's `running_loss += loss.item()`


def setup(args: argparse.Namespace):
    out = Path(tempfile.mkdtemp(prefix="distillab-overhead-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # nothing left in /tmp
    if args.tiny:
        model = ["model/student=mlp", "model.student.hidden=[32]", "model/teacher=mlp", "model.teacher.hidden=[64]"]
        shape = [
            "data=synthetic",
            "data.in_channels=1",
            "data.image_size=8",
            f"data.num_train={64 * args.batches}",
            "data.batch_size=64",
        ]
        recipe = ["loss=kd", "loss.temperature=4", "loss.alpha=0.5"]
    else:
        model = []
        shape = [
            "experiment=tutorial_cifar10",
            "data=synthetic",
            f"data.num_train={128 * args.batches}",
            "data.batch_size=128",
        ]
        recipe = ["loss=kd"]
    cfg = compose(
        [
            *shape,
            *model,
            *recipe,
            "data.num_val=64",
            "teacher.cache_outputs=false",
            f"trainer.device={args.device}",
            "trainer.progress=false",
            f"paths.root={out}",
            f"paths.output_dir={out}",
            *args.overrides,
        ]
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    teachers = build_teachers(cfg, device)  # random weights: the cost of a step does not depend on them
    exp = build_experiment(cfg, device, teachers)
    trainer: Trainer = instantiate(cfg.trainer, key="trainer")
    member = trainer.prepare(exp, out)
    for module in (exp.student, exp.objective, exp.weighting):
        module.train()
    student = instantiate(cfg.model.student).to(device)
    student.load_state_dict(exp.student.state_dict())
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.optim.lr)
    return cfg, member, trainer, teachers[0], student, optimizer, out, device


class Sides(NamedTuple):
    """One training step of each side, on the same models and batches (`ours`: `Trainer.train_batch`)."""

    ours: Callable[[list[torch.Tensor]], None]
    hand: Callable[[list[torch.Tensor]], None]
    batches: list[list[torch.Tensor]]
    progress: Progress  # distillab's
    logger: RunLogger  # distillab's
    log_every: int
    device: torch.device


def build_sides(args: argparse.Namespace) -> Sides:
    cfg, member, trainer, teacher, student, optimizer, out, device = setup(args)
    stage, logger = member.stages[-1], RunLogger(out)
    member.logger = logger
    T, alpha = float(cfg.loss.temperature), float(cfg.loss.alpha)

    def ours(batch: list[torch.Tensor]) -> None:
        trainer.train_batch([member], [stage], [batch])

    def hand(batch: list[torch.Tensor]) -> None:
        hand_kd_step(teacher, student, optimizer, batch[0], batch[1], T, alpha, device)

    return Sides(ours, hand, list(member.exp.data.train), member.p, logger, trainer.log_every, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny MLP workload, one thread: per-step microseconds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default: 300, --tiny: 3000)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument(
        "--blocks", type=int, default=None, help="blocks per side (default: 3 of 20 steps, --tiny: 10 of 200)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "overrides", nargs="*", help="distillab overrides for its side, e.g. trainer.nan_policy=skip_step"
    )
    args = parser.parse_args()
    steps = args.steps or (3000 if args.tiny else 300)
    if args.blocks is None:
        args.blocks = 10 if args.tiny else 3
    if args.tiny:
        torch.set_num_threads(1)
    sides = build_sides(args)
    ours_step, hand_step, batches, device = sides.ours, sides.hand, sides.batches, sides.device

    def tick() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()  # both sides end with their queued GPU work done
        return time.perf_counter()

    ours, hand = [], []
    for i in range(args.warmup + steps):
        batch = batches[i % len(batches)]
        start = tick()
        ours_step(batch)
        middle = tick()
        hand_step(batch)
        end = tick()
        if i >= args.warmup:
            ours.append(middle - start)
            hand.append(end - middle)
    # Blocks: each side alone for `block` steps (log points and the held records' sums included), alternated;
    # what a run pays per step, with no cache shared between the sides as in the per-step alternation above.
    block, block_ours, block_hand = (200 if args.tiny else 20), [], []
    for r in range(args.blocks):
        order = [(ours_step, block_ours), (hand_step, block_hand)]
        for run_step, times in order if r % 2 == 0 else order[::-1]:  # neither side always goes first
            start = tick()
            for i in range(block):
                run_step(batches[i % len(batches)])
            times.append((tick() - start) / block)
    # one step of each under the op counter (for distillab a step that does not log)
    while (sides.progress.step + 1) % sides.log_every == 0:
        ours_step(batches[0])
    counted = []
    for run_step in (ours_step, hand_step):
        with OpCounter() as counter:
            run_step(batches[0])
        counted.append(sum(counter.ops.values()))
    sides.logger.close()

    ours_ms, hand_ms = statistics.median(ours) * 1e3, statistics.median(hand) * 1e3
    diffs = [(a - b) * 1e6 for a, b in zip(ours, hand)]
    diff_us, mean_diff_us = statistics.median(diffs), statistics.mean(diffs)
    # the same median over each fifth of the pairs, in order: how far the box's speed moved it within this run
    n = len(diffs)
    fifths = [statistics.median(diffs[i * n // 5 : (i + 1) * n // 5]) for i in range(5)] if n >= 5 else []
    workload = "MLP [64] -> MLP [32], 1x8x8, batch 64" if args.tiny else "DeepNN -> LightNN, 3x32x32, batch 128"
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} steps={steps} workload: "
        f"{workload}"
    )
    print(f"distillab step median {ours_ms:.3f} ms, hand-written step median {hand_ms:.3f} ms")
    print(f"aten ops per step (a step that does not log): distillab {counted[0]}, hand-written {counted[1]}")
    print(
        f"blocks of {block} steps, each side alone ({args.blocks} each, medians per step): distillab "
        f"{statistics.median(block_ours) * 1e3:.3f} ms, hand-written {statistics.median(block_hand) * 1e3:.3f} ms"
    )
    print(f"overhead_us per fifth of the pairs, in order: {', '.join(f'{f:.1f}' for f in fifths)}")
    print(f"block_ratio={sum(block_ours) / sum(block_hand):.4f}")  # every block counted: a log point's hand-over too
    print(f"overhead_mean_us={mean_diff_us:.1f}")
    print(f"overhead_ratio={ours_ms / hand_ms:.4f}")
    print(f"overhead_us={diff_us:.1f}")


if __name__ == "__main__":
    main()
