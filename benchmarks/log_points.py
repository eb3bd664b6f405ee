"""What TensorBoard logging costs a training step: points handed to the writer one by one, together (the
default: at most once every `RunLogger.WRITE_EVERY_S`), and no logging at all, in one process.

The tiny workload of `overhead.py --tiny` (MLP [64] -> MLP [32] on 8x8, batch 64, one thread, KD, a point
every `trainer.log_every=10` steps). The three modes run in blocks of 100 steps, alternated round after round,
each with a logger (and an event file) of its own, and each block waits for its writer's thread to finish, so
what a mode hands over is timed in its own block. Each figure is a median over the rounds of the per-round
differences (per-step means within a block), and, as "together" hands its points over in about one round in four
(once a second), the mean of those differences too (`_mean_us`), which counts the hand-overs. Last lines:
`one_by_one_minus_together_us=` (what handing the points over together saves per step) and
`together_minus_off_us=` (what logging still costs per step: the device sums' flush, the means, the writes).

    python benchmarks/log_points.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from distillab.run_logger import RunLogger
from overhead import setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=100, help="steps per mode and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = argparse.Namespace(tiny=True, batches=8, device="cpu")
    _, member, trainer, _, _, _, out, _ = setup(options)
    stage = member.stages[-1]
    batches = list(member.exp.data.train)
    log_every = trainer.log_every
    # Each mode logs through a logger of its own, so one mode's pending points are never written (and timed)
    # in another mode's block. Mode: (trainer.log_every, the logger's WRITE_EVERY_S).
    modes = {"one by one": (log_every, 0.0), "together": (log_every, RunLogger.WRITE_EVERY_S), "off": (10**9, 0.0)}
    loggers = {mode: RunLogger(out / mode.replace(" ", "_")) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(args.rounds + 1):
        for mode, (every, interval) in modes.items():
            trainer.log_every, logger = every, loggers[mode]
            member.logger = logger
            logger.WRITE_EVERY_S = interval
            start = time.perf_counter()
            for i in range(args.block):
                trainer.train_batch([member], [stage], [batches[i % len(batches)]])
            if logger.writer is not None:  # what the writer's thread still has to do is this block's, not the next's
                logger.writer.flush()
            if r > 0:  # round 0 warms up
                times[mode].append((time.perf_counter() - start) / args.block * 1e6)
    for logger in loggers.values():
        logger.close()
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} log_every={log_every} rounds={args.rounds}")
    for mode, values in times.items():
        print(f"{mode}: median {statistics.median(values):.1f} us per step")
    saved_each = [a - b for a, b in zip(times["one by one"], times["together"])]
    cost_each = [a - b for a, b in zip(times["together"], times["off"])]
    saved, cost = statistics.median(saved_each), statistics.median(cost_each)
    print(f"one_by_one_minus_together_mean_us={statistics.mean(saved_each):.1f}")
    print(f"together_minus_off_mean_us={statistics.mean(cost_each):.1f}")
    print(f"one_by_one_minus_together_us={saved:.1f}")
    print(f"together_minus_off_us={cost:.1f}")


if __name__ == "__main__":
    main()
