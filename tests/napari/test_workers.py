"""JobRunner: progress, supersede, stale results, cancel, errors as notifications."""

import threading

import pytest

from napari_samscope._widgets.workers import JobRunner, user_message
from napari_samscope.core.progress import Progress


def _job(value, gate=None, steps=3, fail=None):
    def job():
        for i in range(steps):
            yield Progress("working", i, steps)
            if gate is not None:
                gate.wait(5)
        if fail is not None:
            raise fail
        return value

    return job


def test_progress_and_result(qtbot):
    reports, results, busy = [], [], []
    runner = JobRunner(reports.append, busy.append)
    runner.start(_job(7), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert results == [7] and busy == [True, False]
    assert [r.done for r in reports] == [0, 1, 2]


def test_a_newer_request_supersedes_and_stale_results_are_dropped(qtbot):
    gate, results = threading.Event(), []
    runner = JobRunner()
    runner.start(_job("old", gate), results.append)
    runner.start(_job("newer"), results.append, supersede=True)
    runner.start(_job("newest"), results.append, supersede=True)  # replaces the pending one
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == ["newest"]


def test_busy_runner_refuses_without_supersede(qtbot):
    gate = threading.Event()
    runner = JobRunner()
    runner.start(_job(1, gate), lambda _r: None)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_job(2), lambda _r: None)
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy)


def test_cancel_stops_between_steps_and_delivers_nothing(qtbot):
    gate, results, reports = threading.Event(), [], []
    runner = JobRunner(reports.append)
    runner.start(_job("x", gate, steps=50), results.append)
    qtbot.waitUntil(lambda: len(reports) >= 1)
    runner.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == [] and len(reports) < 50


def test_errors_notify_and_the_next_run_works(qtbot, monkeypatch):
    from napari_samscope._widgets import workers

    shown, errors, results = [], [], []
    monkeypatch.setattr(workers, "notify_error", lambda e: shown.append(user_message(e)))
    runner = JobRunner(on_error=errors.append)
    runner.start(_job(None, fail=ValueError("The file is not a SAM checkpoint.")), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert shown == ["The file is not a SAM checkpoint."] and len(errors) == 1
    runner.start(_job(3), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert results == [3]


def test_shutdown_runner_delivers_nothing_and_refuses_new_jobs(qtbot):
    gate, results = threading.Event(), []
    runner = JobRunner()
    runner.start(_job("late", gate), results.append)
    runner.shutdown()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == []
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(_job(1), results.append)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MemoryError(), "Out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "Out of memory"),
        (FileNotFoundError("No model file at /x.pt: check the path."), "No model file at /x.pt"),
        (RuntimeError("boom"), "RuntimeError: boom"),
    ],
)
def test_user_messages(error, expected):
    assert user_message(error).startswith(expected)
