"""Progress of long work on a console: a bar on a terminal, plain log lines elsewhere.

The CLI and `cryossl demo` drive the core's generators (`TrainStatus` after every step)
through `drive`. On a terminal a tqdm bar shows step, epoch, loss, learning rate and the
time left. When the output is not a terminal (a cluster job's log, a pipe, a file) a bar
would print nothing useful until the end, so `drive` writes one plain line every
``interval`` seconds and at the end of every epoch instead:

    [pretrain moco] step 120/1870 (6 %) epoch 1/10 loss 3.2104 lr 1.0e-03 4.1 steps/s ETA 7m07s

Qt-free and torch-free.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

#: Seconds between log lines when the output is not a terminal
#: (``$CRYOSSL_LOG_INTERVAL`` overrides it).
DEFAULT_LOG_INTERVAL = 30.0
#: Steps after which `drive` prints its estimate of the whole run's duration.
ESTIMATE_AFTER = 5


def format_seconds(seconds: float) -> str:
    """"42s", "7m07s", "2h05m"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _number(value: float) -> str:
    """A learning rate or metric in a readable width: 1.0e-03, 0.8125."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.1e}"


class ProgressLog:
    """Formats `TrainStatus` updates; keeps the last loss and the pace
    (`status.TimeLeft`: recent steps, start-up excluded, right after a resume)."""

    def __init__(self, desc: str) -> None:
        from napari_cryossl.base.status import TimeLeft

        self.desc = desc
        self.last_loss: float | None = None
        self.pace = TimeLeft()
        self._stage: str | None = None

    @property
    def rate(self) -> float:
        """Steps per second, recently."""
        return self.pace.rate

    def update(self, status: Any) -> None:
        from napari_cryossl.base.status import TimeLeft

        if status.loss is not None and math.isfinite(status.loss):
            self.last_loss = float(status.loss)
        stage = getattr(status, "stage", "")
        if stage != self._stage:  # an operation of several stages: each its own pace
            self._stage, self.pace = stage, TimeLeft()
        self.pace.update(status.step, status.n_steps)

    def eta_s(self, status: Any) -> float:
        return self.pace.seconds_left(status.step, status.n_steps)

    def fields(self, status: Any) -> dict[str, str]:
        """What the bar's postfix and the log line show."""
        out = {}
        if getattr(status, "n_epochs", 0):
            # ``epoch`` counts finished epochs: during a step the current one is epoch + 1.
            current = status.epoch if status.event != "step" else status.epoch + 1
            out["epoch"] = f"{min(max(current, 1), status.n_epochs)}/{status.n_epochs}"
        if self.last_loss is not None:
            out["loss"] = f"{self.last_loss:.4f}"
        for key, value in (status.metrics or {}).items():
            if isinstance(value, float) and math.isfinite(value):
                out[key] = _number(value)
        return out

    def line(self, status: Any) -> str:
        n = max(int(status.n_steps), 1)
        unit = getattr(status, "unit", "step") or "step"
        stage = getattr(status, "stage", "")
        desc = stage if stage and stage.startswith(f"{self.desc}:") else self.desc
        parts = [f"[{desc}] {unit} {status.step}/{status.n_steps} ({100 * status.step // n} %)"]
        parts += [f"{k} {v}" for k, v in self.fields(status).items()]
        if self.rate > 0:
            rate = f"{self.rate:.2f}" if self.rate < 10 else f"{self.rate:.0f}"
            parts.append(f"{rate} {unit}s/s" if unit == "step" else f"{rate}/s")
        if status.step < status.n_steps:
            parts.append(f"ETA {format_seconds(self.eta_s(status))}")
        else:
            parts.append(f"done in {format_seconds(getattr(status, 'elapsed_s', 0.0))}")
        return " ".join(parts)


def _interval(interval: float | None) -> float:
    if interval is not None:
        return float(interval)
    try:
        return float(os.environ.get("CRYOSSL_LOG_INTERVAL", DEFAULT_LOG_INTERVAL))
    except ValueError:
        return DEFAULT_LOG_INTERVAL


def drive(
    generator: Iterator,
    desc: str,
    *,
    stream: IO[str] | None = None,
    interval: float | None = None,
    results: list | None = None,
):
    """Run a generator of `TrainStatus` to its end, showing its progress on ``stream``.

    Items that are not statuses (the final result of ``predict.iter_predict``) are
    appended to ``results``. Ctrl-C closes the generator (its ``finally`` writes the
    checkpoint) and is raised again.

    Returns:
        (the last status or None, the `ProgressLog` with the last loss).
    """
    stream = stream if stream is not None else sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    every = _interval(interval)
    log = ProgressLog(desc)
    last = None
    bar = None
    next_line = time.perf_counter() + every
    printed_step = -1
    estimated = False
    first_step: int | None = None  # where this call started (a resumed run: not 0)
    shown_note = None

    def say(text: str) -> None:
        """A line of its own, above the progress bar when there is one."""
        if bar is not None:
            bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    try:
        for status in generator:
            if not hasattr(status, "n_steps"):
                if results is not None:
                    results.append(status)
                continue
            last = status
            log.update(status)
            note = (status.metrics or {}).get("note")
            if note and note != shown_note:  # a run's notes (say, centring declined), once
                shown_note = note
                say(f"[{desc}] note: {note}")
            if first_step is None:  # the first status comes after this call's first step
                first_step = int(status.step) - 1
            done_here = int(status.step) - first_step
            if (
                not estimated
                and done_here >= min(ESTIMATE_AFTER, status.n_steps - first_step)
                and log.rate > 0
            ):
                # one explicit estimate, from the first steps, before a long run goes on
                estimated = True
                if status.step < status.n_steps:
                    text = (
                        f"[{desc}] estimated time: "
                        f"{format_seconds(log.eta_s(status) + status.elapsed_s)} for "
                        f"{status.n_steps - first_step} steps ({log.rate:.2f} steps/s over the "
                        f"first {done_here}; the time left is updated as the run goes)"
                    )
                    say(text)
            if terminal:
                if bar is None:
                    from tqdm.auto import tqdm

                    # initial: a resumed run's steps before this call are not this call's pace
                    bar = tqdm(
                        total=status.n_steps, initial=first_step, desc=desc, unit="step",
                        dynamic_ncols=True, file=stream,
                    )
                if bar.total != status.n_steps:
                    bar.total = status.n_steps
                bar.n = status.step
                bar.set_postfix(log.fields(status), refresh=False)
                bar.refresh()
                continue
            now = time.perf_counter()
            epoch_end = getattr(status, "event", "step") in ("epoch", "done", "stopped") or (
                status.n_steps > 0 and status.step >= status.n_steps  # a stage's last step
            )
            repeat = status.event == "done" and status.step == printed_step
            if (epoch_end or now >= next_line) and not repeat:
                print(log.line(status), file=stream, flush=True)
                printed_step = status.step
                next_line = now + every
    except KeyboardInterrupt:
        generator.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return last, log


def run_operation(operation, desc: str, **options):
    """Drive an operation (``ops``: a generator of ``Progress`` that returns its result)
    with `drive`'s display; return its result. Ctrl-C closes it and is raised again."""
    box: dict = {}

    def items():
        box["value"] = yield from operation

    drive(items(), desc, **options)
    return box.get("value")


class CallbackProgress:
    """Progress of work that reports ``(done, total)`` through a callback (picking's
    chunks, Grad-CAM's particles): a bar on a terminal, a line every ``interval`` s and
    at the end in a log. Use as ``with CallbackProgress("pick", "chunks") as progress:``
    and pass ``progress`` as the callback."""

    def __init__(self, desc: str, unit: str, *, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = _interval(interval)
        self.bar = None
        self._t0 = time.perf_counter()
        self._next = self._t0 + self.every
        self._last = None

    def __call__(self, done: int, total: int) -> None:
        self._last = (int(done), int(total))
        if self.terminal:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.stream)
            self.bar.n = done
            self.bar.refresh()
            return
        now = time.perf_counter()
        if now >= self._next or done >= total:
            self._line(done, total, now)
            self._next = now + self.every

    def _line(self, done: int, total: int, now: float) -> None:
        elapsed = now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else float("nan")
        tail = f"ETA {format_seconds(left)}" if done < total else f"done in {format_seconds(elapsed)}"
        print(f"[{self.desc}] {done}/{total} {self.unit} ({100 * done // max(total, 1)} %) {tail}",
              file=self.stream, flush=True)

    def __enter__(self) -> CallbackProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


class StagedProgress:
    """Progress of work in named stages reported as ``progress(stage, done, total)``
    (``simulate_to_disk``: simulate, write, tomogram): one `CallbackProgress` per
    stage, each closed when the next begins. ``units`` names each stage's unit."""

    def __init__(self, desc: str, units: dict[str, str], *, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        self.desc, self.units = desc, units
        self.stream, self.interval = stream, interval
        self.stage: str | None = None
        self.current: CallbackProgress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.current = CallbackProgress(
                f"{self.desc}: {stage}", self.units.get(stage, "steps"),
                stream=self.stream, interval=self.interval,
            )
        self.current(done, total)

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None

    def __enter__(self) -> StagedProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
