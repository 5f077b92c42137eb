"""The background jobs of a `Session`: napari thread workers, started and kept until they end.

`WorkerRunner` holds every running worker (so none is garbage-collected mid-run), reports
when the first one starts and the last one ends (the session's ``busy_changed``), and
quits them all when the dock closes.
"""

from __future__ import annotations

from collections.abc import Callable


class WorkerRunner:
    """Starts napari thread workers and keeps them until they finish.

    Args:
        on_busy: called with True when a worker starts while none runs, and with False
            when the last running worker finishes.
    """

    def __init__(self, on_busy: Callable[[bool], object]) -> None:
        self._workers: set = set()
        self._on_busy = on_busy

    @property
    def busy(self) -> bool:
        """Whether any worker is running (or about to start)."""
        return bool(self._workers)

    def start(self, worker) -> None:
        """Start a napari thread worker at the next event-loop turn; keep it until it ends.

        The deferred start lets the caller connect the worker's signals first (a worker
        that fails at once would otherwise emit ``finished`` before anyone listens).
        """
        from qtpy.QtCore import QTimer

        self._workers.add(worker)
        worker.finished.connect(lambda w=worker: self._done(w))
        if len(self._workers) == 1:
            self._on_busy(True)
        QTimer.singleShot(0, lambda: self._start_now(worker))

    @staticmethod
    def _start_now(worker) -> None:
        """Start ``worker``; one quit before its turn (Stop at once, the dock closed)
        never starts, but ends as a stopped one does, so whoever waits on it hears so."""
        if not worker.abort_requested:
            worker.start()
            return
        worker.aborted.emit()
        worker.finished.emit()

    def _done(self, worker) -> None:
        self._workers.discard(worker)
        if not self._workers:
            self._on_busy(False)

    def quit_all(self, wait_ms: int = 30_000) -> bool:
        """Ask every running worker to stop (generators close and write their checkpoint)
        and wait up to `wait_ms` for their threads to end; False if one is still running.

        Waiting matters when napari closes: a worker thread that outlives the Qt objects
        it reports to (say, the device probe still importing torch) aborts the process.
        The wait is on Qt's global thread pool, where napari runs every thread worker, so
        it also covers other plugins' workers still running then; none is asked to quit.
        """
        from qtpy.QtCore import QThreadPool

        workers = list(self._workers)
        for worker in workers:
            worker.quit()
        if not workers or wait_ms <= 0:
            return True
        return bool(QThreadPool.globalInstance().waitForDone(int(wait_ms)))
