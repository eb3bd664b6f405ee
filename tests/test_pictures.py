"""Pictures in TensorBoard's Images tab: which runs draw them, what they show, and that drawing them
changes nothing the run computes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distillab.training.pictures import _labelled, attention
from tests.conftest import TIMING, run_in


def images(run_dir: Path) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    return {
        tag: [np.asarray(Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)]
        for tag in acc.Tags()["images"]
    }


def test_the_attention_map_is_the_channel_mean_of_squares_scaled_per_sample() -> None:
    f = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[1.0, 0.0], [2.0, -1.0]]]])  # (1, 2, 2, 2)
    by_hand = torch.tensor([[1.0, 2.0], [2.0, 5.0]])  # ((1 + 1) / 2, (4 + 0) / 2; (0 + 4) / 2, (9 + 1) / 2)
    expected = (by_hand - 1.0) / 4.0
    # a second sample 10x larger in one channel: scaled on its own, it spans [0, 1] too (the squares of
    # the larger channel dominate, so its map is not the first one's)
    second = f.clone()
    second[0, 0] *= 10
    maps = attention(torch.cat([f, second]))
    assert torch.allclose(maps[0, 0], expected)
    squares = (second[0] ** 2).mean(0)
    assert torch.allclose(maps[1, 0], (squares - squares.min()) / (squares.max() - squares.min()))
    assert maps[1].max() == 1 and maps[1].min() == 0 and not torch.allclose(maps[1], maps[0])


def assert_rows_are_named(column: np.ndarray, rows: int) -> None:
    """A label column: white, with dark text in each row's band, a different word in each."""
    grey = column.astype(float)[..., :3].mean(-1)
    band = (grey.shape[0] - 1) // rows
    bands = [grey[1 + i * band : (i + 1) * band] for i in range(rows)]
    assert all((b < 128).sum() > 10 for b in bands)
    assert not any(np.array_equal(bands[i], bands[j]) for i in range(rows) for j in range(i + 1, rows))


def test_a_label_column_is_added_at_the_left_of_a_grid_and_the_grid_is_unchanged() -> None:
    grid = torch.rand(3, 2 * 49 + 1, 3 * 49 + 1)
    labelled = _labelled(grid, ["student", "teacher"])
    width = labelled.shape[-1] - grid.shape[-1]
    assert 20 < width < 100 and torch.equal(labelled[:, :, width:], grid)
    assert_rows_are_named(labelled[:, :, :width].permute(1, 2, 0).numpy() * 255, 2)


def test_a_reconstruction_run_draws_input_output_and_target_every_epoch(tmp_path: Path) -> None:
    _, run_dir = run_in(tmp_path, "experiment=denoise", "trainer.max_epochs=2")
    drawn = images(run_dir)
    assert list(drawn) == ["pictures/reconstruction"] and len(drawn["pictures/reconstruction"]) == 2
    image = drawn["pictures/reconstruction"][-1]
    cell = 8 * 6 + 1  # digits' 8x8 images shown at 48 px (MIN_PIXELS), 1 px apart
    grid, names = image[:, -(8 * cell + 1) :], image[:, : -(8 * cell + 1)]
    assert grid.shape[:2] == (3 * cell + 1, 8 * cell + 1)  # noisy input, output, target rows of eight samples
    assert_rows_are_named(names, 3)
    rows = [grid[1 + i * cell : (i + 1) * cell, 1:-1].astype(float) for i in range(3)]
    assert all(r.std() > 0 for r in rows)
    assert not any(np.array_equal(rows[i], rows[j]) for i, j in ((0, 1), (0, 2), (1, 2)))  # three different pictures


def test_a_feature_run_draws_student_and_teacher_maps_when_asked_and_they_change_nothing(tmp_path: Path) -> None:
    drawn_metrics, run_dir = run_in(tmp_path / "a", "loss=at", "trainer.image_every=1")
    plain_metrics, plain_dir = run_in(tmp_path / "b", "loss=at")
    drawn = images(run_dir)
    pairs = ("features.1~features.3", "features.4~features.8")
    assert set(drawn) == {f"pictures/at/{kind}/{pair}" for kind in ("attention", "channels") for pair in pairs}
    assert all(len(v) == 2 for v in drawn.values())  # every epoch
    for pair in pairs:  # rows: the inputs, the student's attention maps, the teacher's
        image = drawn[f"pictures/at/attention/{pair}"][-1].astype(float)
        cell = (image.shape[0] - 1) // 3
        grid, names = image[:, -(8 * cell + 1) :], image[:, : -(8 * cell + 1)]
        assert_rows_are_named(names, 3)  # input, student, teacher
        assert_rows_are_named(drawn[f"pictures/at/channels/{pair}"][-1][:, :40], 2)  # student, teacher
        rows = [grid[1 + i * cell : (i + 1) * cell, 1:-1] for i in range(3)]
        assert rows[1].std() > 0 and rows[2].std() > 0 and not np.array_equal(rows[1], rows[2]), pair
    assert images(plain_dir) == {}  # off by default for classification
    strip = {k: v for k, v in drawn_metrics.items() if k not in TIMING}
    assert strip == {k: v for k, v in plain_metrics.items() if k not in TIMING}


@pytest.mark.parametrize("loss", ["kd", "ce"])
def test_runs_without_feature_taps_draw_nothing(loss: str, tmp_path: Path) -> None:
    _, run_dir = run_in(tmp_path, f"loss={loss}", "trainer.image_every=1", "trainer.max_epochs=1")
    assert images(run_dir) == {}
