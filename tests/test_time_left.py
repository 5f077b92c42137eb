"""The time left that the terminal, the log and the dock show (`status.TimeLeft`)."""

from __future__ import annotations

import io
import math

import pytest

from napari_cryossl.base.status import TimeLeft, TrainStatus
from napari_cryossl.cli.console import drive


def test_a_resumed_run_measures_its_own_pace_not_the_steps_before_it():
    pace = TimeLeft()
    pace.update(500, 1000, now=100.0)  # resumed at step 500
    pace.update(501, 1000, now=101.0)
    assert pace.rate == pytest.approx(1.0)  # not 501 steps in a second
    assert pace.seconds_left(501, 1000) == pytest.approx(499.0)


def test_the_pace_follows_the_recent_steps_after_a_slow_start():
    """A first epoch read from disk is slower than the cached ones that follow."""
    pace = TimeLeft()
    t = 0.0
    for step in range(1, 1001):
        t += 3.0 if step <= 100 else 1.0
        pace.update(step, 1000, now=t)
        if step == 300:
            break
    # 200 steps at 1 s since the slow part: the estimate is the real 700 s, not ~1,100 s
    assert pace.seconds_left(300, 1000) == pytest.approx(700.0, rel=0.01)


def test_the_time_an_epoch_end_takes_is_counted():
    """Validation after every 10 steps costs 5 s: the pace includes it."""
    pace = TimeLeft()
    t = 0.0
    for step in range(1, 201):
        t += 1.0 + (5.0 if step % 10 == 0 else 0.0)
        pace.update(step, 1000, now=t)
    assert 1 / pace.rate == pytest.approx(1.5, rel=0.06)


def test_unknown_until_two_statuses_and_a_repeated_step_is_ignored():
    pace = TimeLeft()
    assert math.isnan(pace.rate) and math.isnan(pace.seconds_left(0, 10))
    pace.update(3, 10, now=1.0)
    pace.update(3, 10, now=2.0)  # an epoch's status repeats the step
    assert math.isnan(pace.rate)


def _statuses(start: int, n_steps: int):
    for step in range(start + 1, n_steps + 1):
        yield TrainStatus("pretrain", 0, 1, step, n_steps, 1.0, elapsed_s=0.0)


def test_drive_estimates_a_resumed_run_from_the_steps_it_runs():
    stream = io.StringIO()
    drive(_statuses(90, 100), "pretrain", stream=stream, interval=1e9)
    text = stream.getvalue()
    assert "estimated time" in text and "for 10 steps" in text
