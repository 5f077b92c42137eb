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
import sys
from pathlib import Path

from napari.qt.threading import GeneratorWorker, create_worker


def prevent_triton_gl_crash() -> bool:
    """Stop torch from importing triton in a process whose OpenGL runs on Mesa's LLVM.

    Measured here (napari 0.9, torch 2.14.1 + triton 3.8, Mesa llvmpipe under Xvfb):
    once napari has an OpenGL context from Mesa's software renderer (which maps
    libLLVM), ``import triton`` kills the process with a segmentation fault, in any
    thread. lightly imports torchvision, which imports torch._dynamo, which imports
    triton: so starting a training run from the viewer would crash napari. triton is
    only needed by ``torch.compile`` (not used here), and torch treats a failed
    ``import triton`` as "not installed"; so when libLLVM is mapped and triton is not
    loaded yet, ``sys.modules["triton"] = None`` makes that import fail cleanly.

    Returns:
        True when triton was blocked.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa llvmpipe clash known
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None
    return True


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
    prevent_triton_gl_crash()
    worker = create_worker(
        func, *args, _worker_class=ClosingGeneratorWorker, _ignore_errors=True, **kwargs
    )
    return _without_raw_relay(worker)


def function_worker(func, *args, **kwargs):
    """A not-yet-started worker for a plain function (its result arrives on ``returned``)."""
    prevent_triton_gl_crash()
    return _without_raw_relay(create_worker(func, *args, _ignore_errors=True, **kwargs))


def _without_raw_relay(worker):
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        with contextlib.suppress(TypeError, RuntimeError):
            worker.errored.disconnect(relay)
    return worker
