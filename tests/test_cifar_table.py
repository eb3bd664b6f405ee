"""The CIFAR-100 benchmark's one source of truth: benchmarks/cifar100/table.csv gives every experiment file
and the table in docs/cifar100.md (regenerated here and compared), and its per-cell settings reach the composed
configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from distillab.config import compose

REPO = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "benchmarks" / "cifar100" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_every_experiment_file_and_the_docs_table_are_what_the_table_generates() -> None:
    gen = generator()
    rows = gen.read_table()
    files = gen.expected_files(rows)
    on_disk = sorted((REPO / "conf" / "experiment" / "cifar100").glob("*/*.yaml"))
    assert sorted(files) == on_disk and len(on_disk) == 219  # no file the table does not give, none missing
    for path, text in files.items():
        assert path.read_text() == text, f"{path} differs from the table: run python benchmarks/cifar100/generate.py"
    readme = (REPO / "docs" / "cifar100.md").read_text()
    assert gen.readme_with_table(readme, gen.readme_table(rows)) == readme
    assert gen.main(["--check"]) == 0
    assert len({r["pair"] for r in rows}) == 13 and all(r["published_top1"] for r in rows if r["method"] == "teacher")


@pytest.mark.parametrize(
    ("pair", "beta", "review", "ft_lr"), [("resnet32x4_resnet8x4", 8.0, 5.0, 0.01), ("vgg13_vgg8", 6.0, None, None)]
)
def test_the_tables_per_pair_settings_are_what_the_experiments_compose_to(pair, beta, review, ft_lr) -> None:
    gen = generator()
    cells = {r["method"]: gen.settings_of(r) for r in gen.read_table() if r["pair"] == pair}
    assert cells["dkd"] == {"loss.beta": beta}
    assert compose([f"experiment=cifar100/{pair}/dkd"]).loss.beta == beta
    assert compose([f"experiment=cifar100/{pair}/ft"]).loss.init_lr == ft_lr
    if review is not None:
        assert compose([f"experiment=cifar100/{pair}/reviewkd"]).loss.weights.reviewkd == review


def test_the_logit_standardization_experiments_are_the_authors_settings() -> None:
    """Sun et al. 2024's `--logit-stand --base-temp 2 --kd-weight 9`: KD at base T 2 with CE 0.1 + KD 9; on DKD
    their script makes alpha 9 and beta 81 (alpha x 9, then that x 9) and leaves DKD's T at 4."""
    kd = compose(["experiment=cifar100/resnet32x4_resnet8x4/kd_ls"]).loss
    assert kd.terms.kd.logit_standardization is True and kd.terms.kd.temperature == 2.0
    assert dict(kd.weights) == {"ce": 0.1, "kd": 9.0}
    dkd = compose(["experiment=cifar100/resnet32x4_resnet8x4/dkd_ls"])
    term = dkd.loss.terms.dkd
    assert (term.logit_standardization, term.alpha, term.beta, term.temperature) == (True, 9.0, 81.0, 4.0)
    assert dkd.weighting.schedules.dkd.epochs == 20
