"""The report's plots read at a glance: seeds folded into mean +- std, a line style per categorical key."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from distillab.report.plots import curve_groups, plot_curves, plot_weights, style_key
from distillab.report.runs import Run


def fake_run(weighting: str, seed: int, curve: list[float], temperature: str = "4") -> Run:
    overrides = {"weighting": weighting, "trainer.seed": str(seed), "loss.temperature": temperature}
    metrics = {"status": "completed", "monitor": "val/acc"}
    return Run(Path(f"/runs/{weighting}-{seed}"), overrides, metrics, {"val/acc": list(enumerate(curve))})


RUNS = [
    fake_run("fixed", 0, [50.0, 60.0, 70.0]),
    fake_run("fixed", 1, [54.0, 62.0, 71.0]),
    fake_run("learnable", 0, [40.0, 65.0]),  # stopped early: the group is cut to the epochs all reached
    fake_run("learnable", 1, [44.0, 69.0, 80.0]),
]
VARYING = ["trainer.seed", "weighting"]


def test_seeds_fold_into_one_curve_per_setting_with_its_sample_std() -> None:
    groups = curve_groups(RUNS, VARYING)
    assert set(groups) == {("fixed",), ("learnable",)}
    means, stds, n = groups[("fixed",)]
    assert n == 2 and means == [52.0, 61.0, 70.5]
    assert stds == pytest.approx([statistics.stdev([50, 54]), statistics.stdev([60, 62]), statistics.stdev([70, 71])])
    assert groups[("learnable",)][0] == [42.0, 67.0]


def test_the_weighting_is_the_line_style_and_numbers_never_are() -> None:
    assert style_key(RUNS, VARYING) == "weighting"
    numeric = [fake_run("fixed", 0, [1.0], temperature=t) for t in ("1", "2", "4")]
    assert style_key(numeric, ["loss.temperature"]) is None


@pytest.fixture
def saved(monkeypatch) -> list:
    """The figures the plots save, in order."""
    import matplotlib.figure

    figures: list = []
    original = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figures


def test_the_curves_plot_draws_bands_and_distinct_styles(tmp_path: Path, saved: list) -> None:
    out = plot_curves(RUNS, VARYING, tmp_path / "curves.png")
    assert out is not None and out.stat().st_size > 0
    ax = saved[-1].axes[0]
    assert {line.get_linestyle() for line in ax.get_lines()} == {"-", "--"}  # fixed | learnable
    assert len(ax.collections) == 2  # one +-std band per setting (two seeds each)
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # outside the axes


def test_the_report_takes_the_direction_of_a_metric_from_the_task_not_its_name() -> None:
    assert Run(Path("a"), {}, {"monitor": "val/mse", "mode": "min"}).maximises is False
    assert Run(Path("a"), {}, {"monitor": "val/loss", "mode": "max"}).maximises is True


def weight_run(overrides: dict[str, str], name: str) -> Run:
    curves = {"loss_weight/ce": [(0, 0.5), (10, 0.6)], "loss_weight/kd": [(0, 0.5), (10, 0.4)]}
    return Run(Path(f"/runs/{name}"), overrides, {"status": "completed"}, curves)


def drawn_panels(runs: list[Run], varying: list[str], tmp_path: Path, saved: list) -> list:
    assert plot_weights(runs, varying, tmp_path / "weights.png") is not None
    return [ax for ax in saved[-1].axes if ax.get_visible()]


@pytest.mark.parametrize(
    ("key", "values", "shape"),
    [
        ("weighting", ["fixed", "learnable", "uncertainty"], (1, 3)),  # was 3 x 3 with six empty panels
        ("loss.temperature", ["1", "2", "4"], (3, 1)),
    ],
)
def test_a_one_key_sweeps_weights_plot_has_one_panel_per_run_and_no_empty_one(
    key, values, shape, tmp_path: Path, saved: list
) -> None:
    runs = [weight_run({key: v}, f"{key}={v}") for v in values]
    axes = drawn_panels(runs, [key], tmp_path, saved)
    assert len(axes) == 3 and all(ax.get_lines() for ax in axes)
    assert axes[0].get_subplotspec().get_geometry()[:2] == shape


def test_the_weights_plot_keeps_settings_x_weightings_and_wraps_a_partial_cross(tmp_path: Path, saved: list) -> None:
    cross = [
        weight_run({"weighting": w, "loss.temperature": t}, f"{w}{t}") for w in ("fixed", "learnable") for t in "14"
    ]
    varying = ["loss.temperature", "weighting"]
    axes = drawn_panels(cross, varying, tmp_path, saved)
    assert axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)
    assert [ax.get_title() for ax in axes] == [
        "fixed  loss.temperature=1",
        "learnable  loss.temperature=1",
        "fixed  loss.temperature=4",
        "learnable  loss.temperature=4",
    ]
    partial = [*cross, weight_run({"weighting": "fixed", "loss.temperature": "8"}, "fixed8")]  # 5 of 3 x 2
    axes = drawn_panels(partial, varying, tmp_path, saved)
    assert len(axes) == 5 and axes[0].get_subplotspec().get_geometry()[:2] == (3, 2)
    assert all(ax.get_lines() for ax in axes)
