"""Memory format on the CPU: torch's max-pooling in NCHW against NHWC, and the default run with and without
`trainer.channels_last=true`.

- `pool_nchw_ms`, `pool_nhwc_ms`: `F.max_pool2d(x, 2)` on a 1280x16x8x8 batch (20 LightNN students' first
  pooling at batch 64, the digits study fused), the mean of 50 calls after 3 warm-ups.
- `train_s_nchw`, `train_s_nhwc`: `train_time_s` of the default run (`loss=kd`, 200 epochs on digits, its teacher
  cached by a first run) in its metrics.json, the median of `--repeats` runs, alternating; each pair's best and
  final val/acc are compared (the same, or the script says so).

    python benchmarks/memory_format.py [--repeats 3]

Last line: channels_last_speedup=<train_s_nchw / train_s_nhwc>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def pool_ms(x: torch.Tensor, calls: int = 50) -> float:
    for _ in range(3):
        F.max_pool2d(x, 2)
    start = time.perf_counter()
    for _ in range(calls):
        F.max_pool2d(x, 2)
    return (time.perf_counter() - start) / calls * 1e3


def default_run(channels_last: bool, out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "distillab", "loss=kd", f"trainer.channels_last={str(channels_last).lower()}"]
    subprocess.run([*command, f"hydra.run.dir={out}"], check=True, capture_output=True)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x = torch.randn(1280, 16, 8, 8)
    print(f"pool_nchw_ms={pool_ms(x):.3f}")
    print(f"pool_nhwc_ms={pool_ms(x.contiguous(memory_format=torch.channels_last)):.3f}")
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        default_run(False, Path(tmp) / "warm")  # trains and caches the teacher if it is not yet
        for i in range(args.repeats):
            pair = {cl: default_run(cl, Path(tmp) / f"{i}-{cl}") for cl in (False, True)}
            for cl, metrics in pair.items():
                times[cl].append(metrics["train_time_s"])
            scores = {cl: (m["best_val_acc"], m["final_val_acc"]) for cl, m in pair.items()}
            if scores[False] != scores[True]:
                print(f"run {i}: best/final val/acc differ: NCHW {scores[False]}, NHWC {scores[True]}")
    nchw, nhwc = statistics.median(times[False]), statistics.median(times[True])
    print(f"train_s_nchw={nchw:.3f}")
    print(f"train_s_nhwc={nhwc:.3f}")
    print(f"channels_last_speedup={nchw / nhwc:.2f}")


if __name__ == "__main__":
    main()
