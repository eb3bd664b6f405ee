"""RunLogger: points are handed to TensorBoard's writer together, at most once a second, and none is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillab.run_logger import RunLogger
from tests.conftest import custom_charts, fit_in_process, scalars


def log_points(logger: RunLogger, steps: range) -> None:
    for step in steps:
        logger.scalars({"loss/total": step / 10, "loss_weight/kd": 1.0 + step}, step)


def test_points_wait_for_the_interval_and_all_reach_the_file_in_order_on_close(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.WRITE_EVERY_S = 3600.0
    log_points(logger, range(1, 6))  # the first point of training opens the writer and is written at once
    assert logger.writer is not None
    logger.writer.flush()
    assert scalars(tmp_path)["loss/total"] == [pytest.approx(0.1)]  # the other four are still pending
    logger.close()
    assert scalars(tmp_path) == {
        "loss/total": [pytest.approx(s / 10) for s in range(1, 6)],
        "loss_weight/kd": [1.0 + s for s in range(1, 6)],
    }


def test_with_no_interval_every_point_is_written_when_logged(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.WRITE_EVERY_S = 0.0
    log_points(logger, range(1, 4))
    assert logger.writer is not None
    logger.writer.flush()
    assert scalars(tmp_path)["loss_weight/kd"] == [2.0, 3.0, 4.0]
    logger.close()


def test_points_before_training_wait_for_the_first_training_point(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.scalars({"teacher/val/acc": 0.5}, 0)
    assert logger.writer is None  # TensorBoard is not even imported for the step-0 point
    log_points(logger, range(1, 2))
    logger.close()
    assert scalars(tmp_path) == {"teacher/val/acc": [0.5], "loss/total": [pytest.approx(0.1)], "loss_weight/kd": [2.0]}


def test_hparams_write_the_pending_points_first(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.WRITE_EVERY_S = 3600.0
    log_points(logger, range(1, 4))
    logger.hparams({"loss": "kd"}, ["loss/total"])
    logger.writer.flush()  # in the file before close
    assert scalars(tmp_path)["loss/total"] == [pytest.approx(s / 10) for s in range(1, 4)]
    logger.close()


def test_each_epochs_points_are_in_the_file_when_the_epoch_ends(tmp_path: Path, monkeypatch) -> None:
    """The loop hands the points over at each epoch's end: with no hand-over by time, every epoch's
    validation point is in the event file before the logger closes."""
    monkeypatch.setattr(RunLogger, "WRITE_EVERY_S", 3600.0)
    before_close: dict[str, list[float]] = {}
    close = RunLogger.close

    def read_then_close(self: RunLogger) -> None:
        self.writer.flush()
        before_close.update(scalars(self.run_dir))
        close(self)

    monkeypatch.setattr(RunLogger, "close", read_then_close)
    _, result, _ = fit_in_process(tmp_path, ["loss=ce", "trainer.max_epochs=3"])
    assert result.epochs == 3
    assert len(before_close["val/acc"]) == 3 and len(before_close["val_best/acc"]) == 3


def test_a_disabled_logger_keeps_nothing(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, enabled=False)
    log_points(logger, range(1, 4))
    logger.close()
    assert not logger._pending and logger.writer is None and not list(tmp_path.iterdir())


def test_custom_scalars_get_one_chart_per_term_and_hparams_name_the_other_runs_keys(tmp_path: Path) -> None:
    """Custom Scalars: a chart per term of its weight (every run on it), then one of its raw value, each regex
    anchored (`kd`'s chart does not draw `kd2`). HParams: keys other runs of the sweep log are in the
    experiment summary (the dashboard's columns come from one run) and not in this run's own values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    logger = RunLogger(tmp_path, terms=["kd", "kd2"])
    log_points(logger, range(1, 2))
    logger.hparams({"loss": "ce", "trainer.seed": 1}, ["val/acc"], differs={"loss"}, others=["loss.temperature"])
    logger.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert custom_charts(tmp_path) == {
        "weights, a chart per term": [
            ("loss_weight/kd", ["^loss_weight/kd$"]),
            ("loss_weight/kd2", ["^loss_weight/kd2$"]),
        ],
        "loss terms (unweighted), a chart per term": [("loss/kd", ["^loss/kd$"]), ("loss/kd2", ["^loss/kd2$"])],
    }
    content = acc.PluginTagToContent("hparams")
    data = {
        tag.removeprefix("_hparams_/"): plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()
    }
    assert {i.name: i.differs for i in data["experiment"].experiment.hparam_infos} == {
        "loss": True,
        "trainer.seed": False,
        "loss.temperature": False,
    }
    assert set(data["session_start_info"].session_start_info.hparams) == {"loss", "trainer.seed"}


def test_without_terms_no_custom_scalars_layout_is_written(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path)
    log_points(logger, range(1, 2))
    logger.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["scalars"] and not acc.Tags()["tensors"]


def test_a_writer_resumed_within_the_second_is_read_after_the_one_before(tmp_path: Path) -> None:
    """TensorBoard reads event files in name order: second opened, host, pid, then a per-process counter compared
    as text. A previous writer whose counter sorts late (here 9999999, as after 9 writers a 10th sorts before it)
    must still be read before a writer resuming the run in the same second."""
    first = RunLogger(tmp_path)
    first.WRITE_EVERY_S = 0.0
    log_points(first, range(1, 4))
    first.close()
    (previous,) = tmp_path.glob("events.out.tfevents.*")
    previous.rename(previous.with_name(previous.name.rsplit(".", 1)[0] + ".9999999"))  # keeps its mtime

    resumed = RunLogger(tmp_path, purge_step=4)
    resumed.WRITE_EVERY_S = 0.0
    log_points(resumed, range(4, 7))
    resumed.close()
    assert scalars(tmp_path)["loss_weight/kd"] == [1.0 + s for s in range(1, 7)]


def test_a_fused_groups_console_shows_a_shared_line_once_and_every_members_own_lines() -> None:
    """`SHARED` lines (the teacher every member loads) show once per console handler; a member's own line shows
    even when another member said the same words (two members skipping step 7 are two lines)."""
    import io
    import logging

    from distillab.run_logger import SHARED, OnceForTheGroup, speaking_for

    log = logging.getLogger("distillab.test_once")
    log.propagate, log.level = False, logging.INFO
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(s) for s in streams]
    for handler in handlers:
        handler.addFilter(OnceForTheGroup())  # one each, as GroupJobs gives every console handler
        log.addHandler(handler)
    try:
        for member in ("a", "b"):
            with speaking_for(Path(member)):
                log.info("teacher: deep_nn from cache entry x", extra=SHARED)
                log.info("step 7 skipped: the loss is nan")
    finally:
        for handler in handlers:
            log.removeHandler(handler)
    for stream in streams:
        assert stream.getvalue().splitlines() == [
            "teacher: deep_nn from cache entry x", "step 7 skipped: the loss is nan", "step 7 skipped: the loss is nan",
        ]  # fmt: skip
