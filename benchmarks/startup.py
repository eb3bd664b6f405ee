"""Start-up: how long a user waits for the first error and for the first training step.

- `import_torch_s`: a bare `python -c "import torch"`, the floor every run pays.
- `config_error_s`: `python -m distillab loss=nope`, a mistyped choice (reported before torch is imported).
- `value_error_s`: `python -m distillab optim.lr=-1`, an invalid value (also before torch).
- `torch_step_s`: `import torch` plus one step of `torch.optim.Adam` on a 2x2 linear layer: the floor of any
  script's first training step (an optimizer's `step()` imports `torch._dynamo`, seconds on a slow CPU).
- `first_step_s`: from process start to the end of the first training step of the default run, its teacher
  already cached (the same command was run once before, which trains and caches it).
- `added_s`: `first_step_s - torch_step_s`, what distillab itself costs before its first step (Hydra, data,
  models, the dry run, the cached teacher's load).

Each is the median of `--repeats` runs; the commands run one after another, so they are measured alike.

    python benchmarks/startup.py [--repeats 3]

Last line: startup_ratio=<first_step_s / import_torch_s>. Targets: config_error_s < import_torch_s / 2,
startup_ratio <= 2.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH_STEP = (
    "import torch; m = torch.nn.Linear(2, 2); o = torch.optim.Adam(m.parameters()); "
    "m(torch.ones(1, 2)).sum().backward(); o.step()"
)
# The default run, stopped right after its first step: the stamp is written where the trainer finishes it.
FIRST_STEP = """
import os, sys, time
import distillab.training.loop as loop
original = loop.Trainer.train_batch
def first_step(self, *args):
    original(self, *args)
    print(f"FIRST_STEP_DONE {time.time():.6f}", flush=True)
    os._exit(0)
loop.Trainer.train_batch = first_step
from distillab.cli import main
sys.argv = ["distillab", *sys.argv[1:]]
main()
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - start


def first_step(args: list[str]) -> float:
    start = time.time()
    done = subprocess.run([sys.executable, "-c", FIRST_STEP, *args], capture_output=True, text=True, check=False)
    stamps = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("FIRST_STEP_DONE")]
    if not stamps:
        raise SystemExit(f"the run did not reach its first step:\n{done.stderr[-2000:]}")
    return float(stamps[0]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="distillab-startup-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # nothing left in /tmp
    common = [f"paths.root={root}", "trainer.progress=false"]
    warm = subprocess.run(
        [sys.executable, "-m", "distillab", *common, "trainer.max_epochs=1"], capture_output=True, text=True
    )
    if warm.returncode != 0:
        raise SystemExit(f"the warm-up run (which caches the teacher) failed:\n{warm.stderr[-2000:]}")
    results: dict[str, list[float]] = {
        "import_torch_s": [],
        "config_error_s": [],
        "value_error_s": [],
        "torch_step_s": [],
        "first_step_s": [],
    }
    for i in range(args.repeats):
        results["import_torch_s"].append(timed([sys.executable, "-c", "import torch"]))
        results["config_error_s"].append(timed([sys.executable, "-m", "distillab", "loss=nope"]))
        results["value_error_s"].append(
            timed([sys.executable, "-m", "distillab", "optim.lr=-1", f"hydra.run.dir={root}/bad{i}"])
        )
        results["torch_step_s"].append(timed([sys.executable, "-c", TORCH_STEP]))
        results["first_step_s"].append(first_step([*common, f"hydra.run.dir={root}/run{i}"]))
    medians = {k: statistics.median(v) for k, v in results.items()}
    medians["added_s"] = medians["first_step_s"] - medians["torch_step_s"]
    print(f"python={sys.version.split()[0]} repeats={args.repeats} (median of each)")
    for key, value in medians.items():
        print(f"{key}={value:.2f}")
    print(f"startup_ratio={medians['first_step_s'] / medians['import_torch_s']:.2f}")


if __name__ == "__main__":
    main()
