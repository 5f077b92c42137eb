"""Simulation as an operation: a ground-truth subtomogram set and/or a crowded,
cluttered tomogram written to a folder."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

__all__ = ["simulate"]

#: What a step is in each stage of ``simulate.simulate_to_disk``.
_UNITS = {"simulate": "chunk", "write": "file", "tomogram": "tomogram"}


class _Stopped(Exception):
    """Raised in the simulation's thread at its next progress report after a stop."""


def simulate(
    out,
    config,
    *,
    n_per_class: int,
    tomogram_shape=None,
    n_tomogram_particles: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
):
    """Write a simulated subtomogram set and/or tomogram into the folder ``out``
    (``simulate.simulate_to_disk``; refused when ``out`` holds files and not
    ``overwrite``). Yields a ``Progress`` per stage step ("simulate: simulate",
    "simulate: write", "simulate: tomogram"); returns the paths written.

    The simulator reports through a callback, so it runs in a thread of its own here and
    its reports come back as ``Progress``; closing the operation stops it at its next
    report (between chunks or files) and waits for it."""
    from napari_cryossl.base.status import Progress
    from napari_cryossl.io import refuse_to_replace
    from napari_cryossl.simulate import simulate_to_disk

    refuse_to_replace([Path(out)], overwrite=overwrite)
    reports: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict = {}
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if stop.is_set():
            raise _Stopped
        reports.put((stage, done, total))

    def work() -> None:
        try:
            outcome["paths"] = simulate_to_disk(
                out, config, n_per_class=n_per_class, tomogram_shape=tomogram_shape,
                n_tomogram_particles=n_tomogram_particles, seed=seed, progress=progress,
            )
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        finally:
            reports.put(None)

    thread = threading.Thread(target=work, name="cryossl-simulate", daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            stage, done, total = item
            yield Progress(
                stage=f"simulate: {stage}", step=int(done), n_steps=int(total),
                unit=_UNITS.get(stage, "step"), elapsed_s=time.perf_counter() - t0,
            )
    finally:
        stop.set()
        thread.join()
    error = outcome.get("error")
    if error is not None and not isinstance(error, _Stopped):
        raise error
    return outcome.get("paths")
