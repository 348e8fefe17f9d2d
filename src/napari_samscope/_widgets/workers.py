"""Running job generators in napari workers: progress, cancel, errors, supersede.

A job is a generator that yields ``core.progress.Progress`` and returns a result.
:class:`JobRunner` runs one job at a time in a ``napari.qt.threading`` worker:

- every yielded ``Progress`` goes to ``on_progress`` (GUI thread);
- ``cancel()`` asks the worker to stop at its next yield;
- an exception becomes a napari notification with a sentence for the user
  (:func:`user_message`) and never leaves the runner busy, so the next run works;
- ``start(..., supersede=True)`` replaces a running job: the old one is asked to
  stop, the new one starts as soon as the old one has ended (never two at once),
  and only the newest request's result is delivered (a generation counter drops
  stale results).

:class:`PreviewRunner` has the same interface for the live preview's short jobs but runs
them in one long-lived thread: no thread is started per request, a request made while
one runs waits in a one-slot queue (a newer one replaces it) and starts as soon as the
running one ends, without a round trip through the GUI thread.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Generator
from contextlib import suppress
from typing import Any

from napari_samscope.core.progress import Progress

__all__ = ["JobRunner", "PreviewRunner", "user_message", "notify_error", "notify_info",
           "objects_text"]

Job = Callable[[], Generator[Progress, None, Any]]

_pool: Any = None


def _background_pool() -> Any:
    """A thread pool of our own for long jobs, so that a long encoding never takes one
    of the threads napari keeps for its own work.

    Its threads run at the same OS priority as napari: work the user is waiting for
    must not yield the CPU to every other program on the machine. The GUI stays
    responsive because nothing heavy runs on its thread, and torch releases the GIL
    while it computes.
    """
    global _pool
    if _pool is None:
        from qtpy.QtCore import QThreadPool

        _pool = QThreadPool()
        _pool.setMaxThreadCount(max(2, QThreadPool.globalInstance().maxThreadCount() // 2))
    return _pool


def user_message(error: BaseException) -> str:
    """A sentence for a notification about ``error``."""
    text = str(error) or type(error).__name__
    lowered = text.lower()
    if isinstance(error, MemoryError) or "out of memory" in lowered:
        return (
            "Out of memory while segmenting: lower the embedding cache, close other "
            f"programs, or choose a smaller model or the CPU. ({text})"
        )
    if isinstance(error, (ValueError, TypeError, OSError, KeyError)):
        return text  # the core writes these for users (what went wrong, what to do)
    return f"{type(error).__name__}: {text}"


def notify_error(error: BaseException | str) -> None:
    """Show an error notification in napari (never raises)."""
    from napari.utils.notifications import show_error

    show_error(error if isinstance(error, str) else user_message(error))


def objects_text(count: int) -> str:
    """``"1 object"``, ``"3 objects"``."""
    return f"{count} object{'' if count == 1 else 's'}"


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class JobRunner:
    """Runs jobs one at a time in napari workers (see the module docstring).

    Args:
        on_progress: called with each ``Progress`` (GUI thread).
        on_busy: called with True when a job starts and False when none is left.
        on_error: called with the exception after the notification (optional).
        background: run jobs in the plugin's own thread pool (long jobs: loading,
            encoding stacks, propagation, segment-everything), at napari's priority.
    """

    def __init__(
        self,
        on_progress: Callable[[Progress], Any] | None = None,
        on_busy: Callable[[bool], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        background: bool = False,
    ) -> None:
        self._background = background
        self._on_progress = on_progress
        self._on_busy = on_busy
        self._on_error = on_error
        self.worker: Any = None
        #: What the running job does, for people ("precomputing embeddings"), or None.
        self.label: str | None = None
        self.generation = 0
        self._pending: tuple[Job, Callable[[Any], Any], int, str | None] | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, job: Job, on_done: Callable[[Any], Any], supersede: bool = False,
              label: str | None = None) -> int:
        """Run ``job()`` in a worker; ``on_done(result)`` gets its result.

        Without ``supersede``, a runner that is busy refuses with ``RuntimeError``.
        With it, the running job is cancelled and this one runs next. ``label`` says
        what the job does, for the message shown when it is cancelled.

        Returns:
            The request's generation number.
        """
        if self._closed:
            raise RuntimeError("This runner was shut down.")
        self.generation += 1
        if self.worker is not None:
            if not supersede:
                raise RuntimeError("A job is already running; wait for it or press Cancel.")
            self._pending = (job, on_done, self.generation, label)
            self.worker.quit()
            return self.generation
        self._launch(job, on_done, self.generation, label)
        return self.generation

    def cancel(self) -> None:
        """Ask the running job to stop at its next yield; drop a pending one."""
        self._pending = None
        self.generation += 1  # whatever is running now is stale
        if self.worker is not None:
            self.worker.quit()

    def shutdown(self) -> None:
        """Cancel and never start again (the widget is closing)."""
        self.cancel()
        self._closed = True

    def wait(self, timeout_ms: int = 10_000) -> bool:
        """Block until the current worker has finished (tests, shutdown); True if idle."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self.worker is not None and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
        return self.worker is None

    # ------------------------------------------------------------------ internals

    def _launch(self, job: Job, on_done: Callable[[Any], Any], generation: int,
                label: str | None = None) -> None:
        from napari.qt.threading import create_worker

        self.label = label
        background = self._background

        def run_job() -> Generator[Progress, None, Any]:  # a generator function, whatever job is
            return (yield from job())

        worker = create_worker(run_job, _ignore_errors=True)
        worker.yielded.connect(self._progress)
        worker.returned.connect(lambda result: self._returned(result, on_done, generation))
        worker.errored.connect(lambda error: self._errored(error, generation))
        worker.finished.connect(lambda: self._finished(worker))
        self.worker = worker
        if self._on_busy is not None:
            self._on_busy(True)
        if background:
            # what worker.start() does for the global pool: napari's quit asks the
            # workers in this set to stop
            with suppress(AttributeError):
                worker._worker_set.add(worker)
                worker._finished.connect(worker._set_discard)
            _background_pool().start(worker)
        else:
            worker.start()

    def _progress(self, report: Any) -> None:
        if not self._closed and self._on_progress is not None and isinstance(report, Progress):
            self._on_progress(report)

    def _returned(self, result: Any, on_done: Callable[[Any], Any], generation: int) -> None:
        if self._closed or generation != self.generation:
            return  # stale: a newer request exists, or the run was cancelled
        try:
            on_done(result)
        except Exception as error:  # a failure while showing results is still the user's to see
            self._report(error)

    def _errored(self, error: BaseException, generation: int) -> None:
        if self._closed or generation != self.generation:
            return
        self._report(error)

    def _report(self, error: BaseException) -> None:
        notify_error(error)
        if self._on_error is not None:
            self._on_error(error)

    def _finished(self, worker: Any) -> None:
        if worker is not self.worker:
            return
        self.worker = None
        self.label = None
        pending, self._pending = self._pending, None
        if pending is not None and not self._closed:
            self._launch(*pending)
            return
        if self._on_busy is not None and not self._closed:
            self._on_busy(False)


#: Preview runners whose thread may still run at interpreter exit (see _stop_at_exit).
_LIVE_RUNNERS: weakref.WeakSet[PreviewRunner] = weakref.WeakSet()
#: Seconds the interpreter waits at exit for a preview job to reach its next step.
EXIT_JOIN_SECONDS = 30.0


@atexit.register
def _stop_at_exit() -> None:
    """Stop every preview thread and wait for its current step before Python finalises: a
    daemon thread still inside torch then would abort the process ("terminate called
    without an active exception") when napari is closed during a preview."""
    for runner in list(_LIVE_RUNNERS):
        runner.stop_thread(EXIT_JOIN_SECONDS)


class PreviewRunner:
    """Runs short jobs (the live preview) one at a time in one long-lived thread.

    Same interface and guarantees as :class:`JobRunner` with ``supersede=True``: only
    the newest request's result reaches ``on_done``, a superseded or cancelled job is
    stopped at its next yield, errors become notifications, and ``busy`` is True from
    ``start`` until the last request has ended. Results, progress and errors reach the
    GUI thread through a queued Qt signal.
    """

    def __init__(
        self,
        on_progress: Callable[[Progress], Any] | None = None,
        on_busy: Callable[[bool], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        from qtpy.QtCore import QObject, Signal

        class _Relay(QObject):
            event = Signal(object)

        self._on_progress = on_progress
        self._on_busy = on_busy
        self._on_error = on_error
        self._relay = _Relay()  # lives in the GUI thread: worker emits arrive queued there
        self._relay.event.connect(self._deliver)
        self._cond = threading.Condition()
        self._request: tuple[Job, Callable[[Any], Any], int] | None = None
        self._running: int | None = None  # generation of the job the thread runs now
        self._thread: threading.Thread | None = None
        self._busy = False
        self._closed = False
        self.generation = 0

    @property
    def busy(self) -> bool:
        return self._busy

    #: The live preview's jobs are not announced when cancelled.
    label: str | None = None

    def start(self, job: Job, on_done: Callable[[Any], Any], supersede: bool = True,
              label: str | None = None) -> int:
        """Queue ``job()``; ``on_done(result)`` gets its result on the GUI thread.

        A running job is superseded (asked to stop at its next yield; its result is
        dropped). ``supersede=False`` refuses with ``RuntimeError`` while busy.

        Returns:
            The request's generation number.
        """
        if self._closed:
            raise RuntimeError("This runner was shut down.")
        if self._busy and not supersede:
            raise RuntimeError("A job is already running; wait for it or press Cancel.")
        self.generation += 1
        with self._cond:
            self._request = (job, on_done, self.generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="samscope-preview",
                                                daemon=True)
                self._thread.start()
                _LIVE_RUNNERS.add(self)
            self._cond.notify()
        self._set_busy(True)
        return self.generation

    def cancel(self) -> None:
        """Drop a queued request; ask the running job to stop at its next yield."""
        self.generation += 1
        with self._cond:
            self._request = None
            running = self._running is not None
        if not running:
            self._set_busy(False)

    def shutdown(self) -> None:
        """Cancel and never start again; the thread ends after its current job."""
        self.cancel()
        self._closed = True
        with self._cond:
            self._cond.notify()

    def stop_thread(self, timeout: float) -> bool:
        """Stop the worker thread without touching Qt (interpreter exit): drop the queued
        request, stop the running job at its next yield and wait up to ``timeout``
        seconds for the thread to end. Returns whether it has ended."""
        self._closed = True
        with self._cond:
            self._request = None
            self._cond.notify()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait(self, timeout_ms: int = 10_000) -> bool:
        """Block until the runner is idle (tests, shutdown); True if idle."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self._busy and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
        return not self._busy

    # ------------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._running = None
                    return
                (job, on_done, generation), self._request = self._request, None
                self._running = generation
            outcome = self._run(job, generation)
            with self._cond:
                self._running = None
            self._emit(("end", generation, on_done, outcome))

    def _run(self, job: Job, generation: int) -> tuple[str, Any]:
        try:
            steps = job()
            while True:
                if generation != self.generation or self._closed:
                    steps.close()
                    return ("stale", None)
                try:
                    report = next(steps)
                except StopIteration as stop:
                    return ("returned", stop.value)
                self._emit(("progress", generation, None, report))
        except Exception as error:  # shown to the user on the GUI thread
            return ("errored", error)

    def _emit(self, message: tuple[str, int, Any, Any]) -> None:
        with suppress(RuntimeError):  # the relay is gone: napari is closing
            self._relay.event.emit(message)

    # ------------------------------------------------------------------ GUI thread

    def _deliver(self, message: tuple[str, int, Any, Any]) -> None:
        kind, generation, on_done, payload = message
        current = not self._closed and generation == self.generation
        if kind == "progress":
            if current and self._on_progress is not None and isinstance(payload, Progress):
                self._on_progress(payload)
            return
        status, value = payload
        if current and status == "returned":
            try:
                on_done(value)
            except Exception as error:  # a failure while showing results is the user's to see
                self._report(error)
        elif current and status == "errored":
            self._report(value)
        with self._cond:
            idle = self._request is None and self._running is None
        if idle:
            self._set_busy(False)

    def _report(self, error: BaseException) -> None:
        notify_error(error)
        if self._on_error is not None:
            self._on_error(error)

    def _set_busy(self, state: bool) -> None:
        if state == self._busy:
            return
        self._busy = state
        if self._on_busy is not None and not self._closed:
            self._on_busy(state)
