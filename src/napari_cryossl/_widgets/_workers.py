"""Background workers for the long steps (training, prediction, Grad-CAM).

napari's `GeneratorWorker` stops a generator on `quit()` by simply not asking it for
the next item: the generator is left suspended, and its ``finally`` block (where the
training loops write their checkpoint) would run only whenever the garbage collector
gets to it, on whatever thread. `ClosingGeneratorWorker` closes the generator in the
worker thread as soon as the loop ends, so a cancelled run has written its checkpoint
by the time the worker's ``finished`` signal arrives, and Resume can start at once.
"""

from __future__ import annotations

import contextlib

from napari.qt.threading import GeneratorWorker, create_worker


class ClosingGeneratorWorker(GeneratorWorker):
    """A GeneratorWorker whose generator is closed (``finally`` runs) when the work ends."""

    def work(self):
        try:
            return super().work()
        finally:
            # Runs the generator's finally/except GeneratorExit in this thread; a no-op
            # when it already ran to the end. Errors raised there reach `errored`.
            self._gen.close()


def generator_worker(func, *args, **kwargs) -> ClosingGeneratorWorker:
    """A not-yet-started worker for a generator function.

    Errors are neither re-raised in the GUI thread nor relayed raw to napari's
    notification manager: the caller connects ``errored`` and shows a message a person
    can act on (`_common.notify_error`).
    """
    worker = create_worker(
        func, *args, _worker_class=ClosingGeneratorWorker, _ignore_errors=True, **kwargs
    )
    return _without_raw_relay(worker)


def function_worker(func, *args, **kwargs):
    """A not-yet-started worker for a plain function (its result arrives on ``returned``)."""
    return _without_raw_relay(create_worker(func, *args, _ignore_errors=True, **kwargs))


def _without_raw_relay(worker):
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        with contextlib.suppress(TypeError, RuntimeError):
            worker.errored.disconnect(relay)
    return worker
