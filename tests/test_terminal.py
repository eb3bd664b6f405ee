"""What the default run shows in a terminal: a live progress line per stage, about 20 epoch lines, no bar
glued to a log line (issue 37)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_CACHE


def in_a_terminal(args: list[str]) -> str:
    """Run `python -m distillab ARGS` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, side = pty.openpty()
    job = subprocess.Popen([sys.executable, "-m", "distillab", *args], stdout=side, stderr=side, close_fds=True)
    os.close(side)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other side closed: the run ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert job.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_the_default_run_prints_at_most_40_lines_in_a_terminal(tmp_path: Path) -> None:
    common = [f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    first = subprocess.run(  # trains and caches the teacher (the line count is for a cached teacher)
        [sys.executable, "-m", "distillab", *common, "trainer.max_epochs=1"], capture_output=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    shown = in_a_terminal(common)  # the default experiment: 200 epochs
    lines = shown.replace("\r\n", "\n").split("\n")
    assert len(lines) <= 40, shown
    epoch_lines = [line for line in lines if re.search(r"\] - epoch \d+/200 ", line)]
    assert 15 <= len(epoch_lines) <= 25, epoch_lines
    assert not any(re.search(r"batch/s.*\[\d{4}-\d\d-\d\d ", line) for line in lines), shown  # nothing glued
    logs = [p.read_text() for p in (tmp_path / "runs").glob("*/*/distillab.log")]
    assert any(all(f"epoch {e}/200 " in text for e in range(1, 201)) for text in logs)  # every epoch in the file
