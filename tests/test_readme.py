"""The README and its docs/ pages tell the truth: every error they show is the program's actual output for that
command; the README stays a first page (15 KB at most) and every page it links exists."""

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

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
# "$ python -m distillab ARGS" directly followed by the line it prints
EXAMPLE = re.compile(r"^\$ python -m distillab (?P<args>[^\n&|;]*)\n(?P<output>distillab: error: [^\n]*)$", re.M)
EXAMPLES = sorted({(m["args"].strip(), m["output"]) for page in PAGES for m in EXAMPLE.finditer(page.read_text())})
# a Markdown link to a file of this repository: [text](relative/path.md#anchor)
LINK = re.compile(r"\]\((?P<path>(?!https?:|#)[^)#\s]+)(?:#(?P<anchor>[^)\s]+))?\)")


def test_the_readme_and_its_pages_show_error_examples() -> None:
    assert len(EXAMPLES) >= 5
    errors = (REPO / "docs" / "errors.md").read_text()
    assert sum(1 for _ in EXAMPLE.finditer(errors)) >= 5  # the page on errors shows them, not only the README


def test_the_readme_is_a_first_page_of_at_most_15_kb() -> None:
    assert len(README.read_bytes()) <= 15 * 1024, "README.md is reference again: move it into a docs/ page"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_link_to_a_file_of_the_repository_resolves(page: Path) -> None:
    links = [(m["path"], m["anchor"]) for m in LINK.finditer(page.read_text())]
    for path, anchor in links:
        target = (page.parent / path).resolve()
        assert target.exists(), f"{page.name} links {path}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name} links {path}#{anchor}, which is not a heading there"
    if page == README:  # the README is the map: every docs/ page is linked from it
        linked = {(page.parent / p).resolve() for p, _ in links}
        assert set(PAGES[1:]) <= linked and len(PAGES) >= 10


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
