"""Progress of long work: the one type every long operation yields.

Every long operation (``ops``: simulate, pick, pretrain, fine-tune, predict, Grad-CAM,
embed) is a generator that yields a ``Progress`` after every step and returns its
result; stopping it is closing the generator. The CLI shows the progress under a bar or
as log lines (``console``), the napari widgets in a progress bar inside a thread worker,
and tests read it directly. ``TimeLeft`` turns a stream of them into the time left, the
same way for every front end.

This module imports only the standard library (no numpy, torch or Qt), so any front end
can use the type.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Progress", "TimeLeft", "TrainStatus", "with_callbacks"]


@dataclass
class Progress:
    """Progress of a long operation, yielded after every step.

    Attributes:
        stage: what runs: "simulate", "pick", "pretrain", "finetune", "predict",
            "gradcam", "embed"...
        epoch: training only: epochs completed so far (0 during the first epoch;
            ``n_epochs`` at the end); 0 for work without epochs.
        n_epochs: training only: epochs of the run; 0 for work without epochs.
        step: steps done in the whole run (training: optimiser steps; prediction:
            batches; picking: chunks; simulation: chunks or files).
        n_steps: steps of the whole run.
        loss: training: this step's loss (``event="epoch"``: the epoch's mean); else None.
        metrics: training: step ``lr``; epoch ``train_loss`` and, when fine-tuning,
            ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``best_val_accuracy``,
            ``best_epoch``, ``n_train``, ``n_val``, calibration, and a ``note``.
            Prediction: ``particles`` done and the ``batch_size`` in use.
        elapsed_s: seconds since this call started (a resumed run restarts the clock).
        done: True on the last status of a finished run.
        checkpoint: training: the file written at this point (epoch end, stop, done).
        event: "step", "epoch", "done" or "stopped".
        unit: what a step is, for display ("step", "batch", "chunk", "file"...).
    """

    stage: str
    epoch: int = 0
    n_epochs: int = 0
    step: int = 0
    n_steps: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    done: bool = False
    checkpoint: Path | None = None
    event: str = "step"
    unit: str = "step"

    @property
    def fraction(self) -> float:
        """Fraction of the run done, 0..1 (``step / n_steps``)."""
        if self.done:
            return 1.0
        return min(self.step / self.n_steps, 1.0) if self.n_steps > 0 else 0.0


#: The name the training loops and their tests use for the same type.
TrainStatus = Progress


class TimeLeft:
    """The pace of a run and its time left, from its recent steps.

    The first status only starts the clock (start-up: imports, first data loading, CUDA
    warm-up); after it, the pace is measured over the last tenth of the run (at least
    ``min_window`` steps), so the time an epoch's validation takes is counted, a first
    epoch that reads from disk before the cache holds the data does not skew the
    estimate for the rest, and a resumed run starts its own clock at the step it resumed
    from. One estimator for every front end: the terminal, the log and the dock.
    """

    def __init__(self, *, window_fraction: float = 0.1, min_window: int = 10) -> None:
        self.window_fraction = float(window_fraction)
        self.min_window = int(min_window)
        self._points: deque[tuple[int, float]] = deque()

    def update(self, step: int, n_steps: int, now: float | None = None) -> None:
        """Record that ``step`` of ``n_steps`` is done at ``now`` (default: the clock)."""
        now = time.perf_counter() if now is None else float(now)
        step = int(step)
        if self._points and step <= self._points[-1][0]:
            return  # an epoch's or the end's status repeats the last step
        self._points.append((step, now))
        window = max(self.min_window, int(self.window_fraction * max(int(n_steps), 1)))
        while len(self._points) > 2 and self._points[1][0] <= step - window:
            self._points.popleft()

    @property
    def rate(self) -> float:
        """Steps per second over the window (NaN before two statuses)."""
        if len(self._points) < 2:
            return float("nan")
        (s0, t0), (s1, t1) = self._points[0], self._points[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")

    def seconds_left(self, step: int, n_steps: int) -> float:
        """Seconds until ``n_steps`` at the current pace (NaN while unknown)."""
        rate = self.rate
        left = max(int(n_steps) - int(step), 0)
        return left / rate if rate > 0 and math.isfinite(rate) else float("nan")


def with_callbacks(operation, *, progress=None, should_stop=None, stopped=None):
    """Run a generator of ``Progress`` that returns its result, for callers that want
    callbacks instead: ``progress(step, n_steps)`` after each step, ``should_stop()``
    polled after each (True closes the operation and raises ``stopped``, an exception
    instance, when given). Returns the operation's result."""
    while True:
        try:
            item = next(operation)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(item.step, item.n_steps)
        if should_stop is not None and should_stop():
            operation.close()
            if stopped is not None:
                raise stopped
            return None
