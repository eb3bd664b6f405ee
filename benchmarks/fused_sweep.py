"""A sweep with Hydra's basic launcher against the same sweep with `hydra/launcher=fused`, in one invocation.

Both run the same command (default: `experiment=digits_kd_study`, 20 jobs: ce, kd, fitnet, at x 5 seeds) in
a subprocess each, on one teacher cache warmed before either is timed (the teacher is trained once, as a user's
second sweep would find it), basic first. Printed: each side's wall time, `fused_speedup=` (basic / fused), the
groups the fused launcher formed, and per group the largest difference in final validation accuracy between a
job run by the basic launcher and the same job fused (0 up to float rounding where the student has no dropout;
LightNN's dropout draws other masks in a fused step, so there the two are equal in distribution only).

    python benchmarks/fused_sweep.py                       # the study as shipped (200 epochs)
    python benchmarks/fused_sweep.py --epochs 20           # shorter
    python benchmarks/fused_sweep.py --epochs 20 model.student.dropout=0   # extra overrides for both sides
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf


def sweep(root: Path, name: str, launcher: str, args: list[str]) -> float:
    """Run the sweep once; its wall time in seconds (start-up included, as a user waits for it)."""
    command = [
        sys.executable,
        "-m",
        "distillab",
        "--multirun",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={root / name}",
        f"paths.root={root}",
        f"paths.cache_dir={root / 'cache'}",
        *args,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the {launcher} sweep failed:\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        if "fused launcher:" in line:
            print(line.split(" - ", 1)[-1])
    return seconds


def final_acc(job: Path) -> float:
    return float(json.loads((job / "metrics.json").read_text())["final_val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="digits_kd_study")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the experiment's)")
    parser.add_argument("overrides", nargs="*", help="more overrides, for both sides")
    options = parser.parse_args()
    args = [f"experiment={options.experiment}", *options.overrides]
    if options.epochs is not None:
        args.append(f"trainer.max_epochs={options.epochs}")

    from distillab.config import register_resolvers
    from distillab.fused_sweep import plan

    register_resolvers()  # the recorded configs use distillab's resolvers (`${one_minus:...}`)

    with tempfile.TemporaryDirectory(prefix="fused-sweep-") as tmp:
        root = Path(tmp)
        # The teacher (and the digits split) once, untimed: one job of one epoch.
        sweep(root, "warm", "basic", [*args, "trainer.max_epochs=1", "trainer.seed=0", "loss=kd"])
        basic = sweep(root, "basic", "basic", args)
        fused = sweep(root, "fused", "fused", args)
        jobs = sorted(p.parent for p in (root / "fused").glob("*/metrics.json"))
        print(f"jobs={len(jobs)}  basic_s={basic:.1f}  fused_s={fused:.1f}", flush=True)
        cfgs = []
        for job in jobs:
            cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
            cfg.paths.output_dir = str(job)  # recorded as `${hydra:runtime.output_dir}`, which needs Hydra running
            cfgs.append(cfg)
        for number, unit in enumerate(plan(cfgs).units, start=1):
            diffs = {jobs[i].name: abs(final_acc(jobs[i]) - final_acc(root / "basic" / jobs[i].name)) for i in unit}
            worst = max(diffs, key=diffs.__getitem__)
            kind = f"group {number} ({len(unit)} jobs)" if len(unit) > 1 else f"alone ({jobs[unit[0]].name})"
            print(f"{kind}: largest final val/acc difference basic vs fused = {diffs[worst]:.4g} points ({worst})")
        print(f"fused_speedup={basic / fused:.2f}")


if __name__ == "__main__":
    main()
