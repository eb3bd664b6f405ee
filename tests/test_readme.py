"""The README tells the truth: every error it shows is the program's actual output for that command."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from distillab.cli import main
from tests.conftest import SHARED_CACHE

README = Path(__file__).resolve().parents[1] / "README.md"
# "$ python -m distillab ARGS" directly followed by the line it prints
EXAMPLE = re.compile(r"^\$ python -m distillab (?P<args>[^\n&|;]*)\n(?P<output>distillab: error: [^\n]*)$", re.M)
EXAMPLES = [(m["args"].strip(), m["output"]) for m in EXAMPLE.finditer(README.read_text())]


def test_the_readme_shows_error_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(("args", "output"), EXAMPLES, ids=[a for a, _ in EXAMPLES])
def test_each_readme_error_example_is_what_the_program_prints(
    args: str, output: str, tmp_path: Path, monkeypatch, capfd
) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    common = [f"hydra.run.dir={tmp_path / 'r'}", f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}"]
    monkeypatch.setattr(sys, "argv", ["distillab", *shlex.split(args), *common])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capfd.readouterr().err.strip() == output
