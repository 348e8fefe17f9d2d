"""The compute contract shared by every long-running job in the core.

Long work (loading, encoding a stack, segment-everything, training) is written
as a *generator* that yields :class:`Progress` records and ``return``\\ s its
result. The same generator then serves both front ends:

- headless code calls :func:`run` (optionally with a tqdm bar or a callback);
- the napari plugin wraps the generator in ``napari.qt.threading.thread_worker``
  and turns each yielded record into a progress-bar update. Quitting the worker
  stops the generator at its next ``yield``, so cancellation is always between
  two units of work and never leaves half-written results behind.

Example::

    def encode_stack(planes):
        out = []
        for i, plane in enumerate(planes):
            yield Progress("encoding", i, len(planes))
            out.append(encode(plane))
        return out

    embeddings = run(encode_stack(planes), progress="tqdm")
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Progress", "Job", "Cancelled", "TqdmBar", "run"]


@dataclass(frozen=True)
class Progress:
    """One progress report: ``done`` of ``total`` units of ``message`` are finished.

    ``total`` may be 0 when the amount of work is unknown. ``info`` carries optional
    extra figures (for example ``{"loss": 0.12}`` while training).
    """

    message: str
    done: int = 0
    total: int = 0
    info: dict[str, float] | None = None

    @property
    def fraction(self) -> float:
        """Completed fraction in [0, 1]; 0.0 when ``total`` is unknown."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


#: The type of every long-running core job.
Job = Generator[Progress, None, T]


class Cancelled(RuntimeError):
    """Raised by :func:`run` when ``should_stop`` asked to stop the job."""


def run(
    job: Generator[Progress, None, T],
    progress: Callable[[Progress], Any] | str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run a job generator to the end and return its result.

    Args:
        job: a generator that yields :class:`Progress` and returns the result.
        progress: ``None`` (silent), ``"tqdm"`` (a progress bar on stderr), or a
            callable that receives every :class:`Progress`.
        should_stop: polled after every yield; when it returns True the generator
            is closed and :class:`Cancelled` is raised.

    Returns:
        Whatever the generator returned.
    """
    bar = None
    callback: Callable[[Progress], Any] | None
    if progress == "tqdm":
        callback = bar = TqdmBar()
    elif isinstance(progress, str):
        raise ValueError(f"progress must be None, 'tqdm' or a callable, not {progress!r}")
    else:
        callback = progress
    try:
        while True:
            try:
                report = next(job)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(report)
            if should_stop is not None and should_stop():
                job.close()
                raise Cancelled("the job was cancelled")
    finally:
        if bar is not None:
            bar.close()


class TqdmBar:
    """A :class:`Progress` callback that shows a tqdm bar on stderr, opened at the first
    report (a job that reports nothing leaves no empty ``0it`` line) and closed by
    :meth:`close` or at the end of a ``with`` block."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, report: Progress) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=report.total or None, leave=False)
        if report.total and self._bar.total != report.total:
            self._bar.reset(total=report.total)
        self._bar.set_description(report.message, refresh=False)
        self._bar.n = report.done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TqdmBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
