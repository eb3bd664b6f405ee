"""Instructions per training step: distillab's tiny KD step against the hand-written loop, counted by callgrind.

On a noisy CPU box a wall-clock A/B moves by several per cent between runs; an instruction count repeats to
about 4,000 instructions per step. Each side runs in its own process under
`valgrind --tool=callgrind --instr-atstart=no`, built as `overhead.py --tiny` builds it (MLP [64] -> MLP [32],
1x8x8, batch 64, one thread, KD with T=4), warms up, and has instrumentation switched on
(`callgrind_control -i on`) for `--steps` steps only. Needs valgrind (not a project dependency); about two
minutes per side.

    python benchmarks/step_instructions.py            # last line: instructions_ratio=<distillab/hand>
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(side: str, steps: int, handshake: Path) -> None:
    """Runs inside valgrind: build, warm up, then `steps` steps between two handshakes with the parent."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from overhead import build_sides

    torch.set_num_threads(1)
    sides = build_sides(argparse.Namespace(tiny=True, batches=8, device="cpu"))
    step, batches = sides.ours if side == "distillab" else sides.hand, sides.batches

    def wait(name: str) -> None:
        (handshake / name).touch()
        while not (handshake / f"{name}.ack").exists():
            time.sleep(0.05)

    for i in range(40):
        step(batches[i % len(batches)])
    wait("start")
    for i in range(steps):
        step(batches[i % len(batches)])
    wait("end")


def count(side: str, steps: int) -> int:
    """Instructions per step of one side, in a callgrind process of its own."""
    handshake = Path(tempfile.mkdtemp(prefix="distillab-instructions-"))
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={handshake / 'callgrind.out'}",
        sys.executable,
        __file__,
        "--child",
        side,
        "--steps",
        str(steps),
        "--handshake",
        str(handshake),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, switch in (("start", "on"), ("end", "off")):
        while not (handshake / name).exists():
            if proc.poll() is not None:
                printed = proc.stdout.read() if proc.stdout else ""
                raise SystemExit(f"the {side} side ended before its steps:\n{printed}")
            time.sleep(0.2)
        subprocess.run(["callgrind_control", "-i", switch, str(proc.pid)], check=True, capture_output=True)
        (handshake / f"{name}.ack").touch()
    output, _ = proc.communicate()
    found = re.search(r"I\s+refs:\s+([\d,]+)", output)
    if proc.returncode or not found:
        raise SystemExit(f"callgrind gave no count for the {side} side:\n{output}")
    shutil.rmtree(handshake, ignore_errors=True)
    return int(found.group(1).replace(",", "")) // steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="counted steps per side")
    parser.add_argument("--child", choices=("distillab", "hand"), help=argparse.SUPPRESS)
    parser.add_argument("--handshake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.handshake)
        return
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("step_instructions.py needs valgrind (e.g. apt-get install valgrind); it is not on PATH.")
    ours, hand = count("distillab", args.steps), count("hand", args.steps)
    print(f"workload: MLP [64] -> MLP [32], 1x8x8, batch 64, one thread; {args.steps} counted steps per side")
    print(f"instructions per step: distillab {ours:,}, hand-written {hand:,} (+{ours - hand:,})")
    print(f"instructions_ratio={ours / hand:.4f}")


if __name__ == "__main__":
    main()
