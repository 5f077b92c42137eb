"""A helper process for CPU work that would freeze the viewer if run in a thread.

Some library code holds Python's GIL for hundreds of milliseconds at a time, and a
thread worker then freezes napari just as if it ran on the GUI thread. Measured for
10,000 particles (``benchmarks/bench_gil.py``, docs/benchmarks.md): scikit-learn's
HDBSCAN (0.34-0.42 s without a release, every time), numba compiling UMAP's functions on
their first call (0.45 s), importing scikit-learn or pynndescent (0.13-0.2 s). In a
separate process these hold another interpreter's GIL, and the viewer stays fluid.

One process is started on first use (spawned: a clean interpreter, no Qt, no OpenGL)
and kept, so that numba's compiled functions and the imported libraries stay warm for
the next map. It is terminated when a call is cancelled (the work is abandoned; the
next call starts a fresh one) and when the dock closes. Written here rather than with
``multiprocessing.Pool`` or ``concurrent.futures``: a pool cannot be stopped mid-task
without private attributes, and ``Pool`` waits forever when its process dies (say, out
of memory), where this one reports it.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any


def _serve(conn) -> None:
    """The helper's loop: run each (function, args, kwargs) received, send the outcome."""
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the dock's end closed
            return
        if task is None:
            return
        fn, args, kwargs = task
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # sent back and raised on the dock's side
            outcome = ("error", exc, traceback.format_exc())
        try:
            conn.send(outcome)
        except Exception as exc:  # the result (or the error) does not pickle
            conn.send(("error", RuntimeError(f"cannot send the result back: {exc}"), ""))


def _start_without_main(process) -> None:
    """Start a spawned process without re-running the parent's ``__main__``.

    Spawn normally imports the parent's main script in the child. A napari script without
    an ``if __name__ == "__main__"`` guard (``viewer = napari.Viewer(); napari.run()`` at
    top level, common) would then open a second viewer in the helper and never serve.
    The helper's code lives in this importable module and needs nothing from
    ``__main__``, so the main-module entries are left out of the preparation data (the
    one part of ``multiprocessing.spawn`` patched, and only while starting).
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def without_main(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = without_main
    try:
        process.start()
    finally:
        spawn.get_preparation_data = original


class HelperProcessError(RuntimeError):
    """The helper process ended before it answered (killed, out of memory, crashed)."""


class HelperProcess:
    """Runs picklable module-level functions in one kept child process, one at a time
    (calls from several threads take turns)."""

    def __init__(self) -> None:
        self._process = None
        self._conn = None
        self._lock = threading.Lock()  # one call at a time (the map, the suggestions)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _ensure(self) -> None:
        if self.running:
            return
        self.close()
        context = multiprocessing.get_context("spawn")
        here, there = context.Pipe()
        process = context.Process(target=_serve, args=(there,), daemon=True,
                                  name="napari-cryossl helper")
        _start_without_main(process)
        there.close()
        self._process, self._conn = process, here

    def call(self, fn: Callable, *args, poll_s: float = 0.05, **kwargs) -> Iterator[None]:
        """Run ``fn(*args, **kwargs)`` in the helper; a generator for a thread worker.

        Yields None every ``poll_s`` seconds while the helper works (a napari generator
        worker checks for cancel at each yield) and returns ``fn``'s result, as the value
        of ``yield from``. ``fn``'s exception is raised here, with the helper's traceback
        as its cause. Closing the generator before the answer (a cancel) terminates the
        helper.
        """
        while not self._lock.acquire(timeout=poll_s):  # another call runs: wait our turn
            yield None
        try:
            self._ensure()
            conn, process = self._conn, self._process
            conn.send((fn, args, kwargs))
        except BaseException:
            self._lock.release()
            raise
        answered = False
        try:
            while not conn.poll(poll_s):
                if not process.is_alive():
                    break
                yield None
            try:
                outcome = conn.recv()
            except (EOFError, OSError):  # its end of the pipe closed: it died
                process.join(timeout=5)
                raise HelperProcessError(
                    f"the helper process ended before it answered (exit code "
                    f"{process.exitcode}; out of memory?)"
                ) from None
            answered = True
        finally:
            if not answered:
                self.close()
            self._lock.release()
        if outcome[0] == "ok":
            return outcome[1]
        _, exc, text = outcome
        raise exc from (_RemoteTraceback(text) if text else None)

    def run(self, fn: Callable, *args, **kwargs) -> Any:
        """``call`` without the yields: wait for the answer."""
        gen = self.call(fn, *args, **kwargs)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        """Stop the helper (at once: any work in progress is abandoned)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)


class _RemoteTraceback(Exception):
    """The helper's traceback, shown as the cause of the error it raised."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])
