"""JobRunner and PreviewRunner: progress, supersede, stale results, cancel, errors as notifications."""

import threading

import pytest

from napari_samscope._widgets.workers import JobRunner, PreviewRunner, user_message
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


@pytest.fixture(params=[JobRunner, PreviewRunner], ids=["JobRunner", "PreviewRunner"])
def Runner(request):  # noqa: N802 (a class)
    return request.param


def test_progress_and_result(qtbot, Runner):
    reports, results, busy = [], [], []
    runner = Runner(reports.append, busy.append)
    runner.start(_job(7), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert results == [7] and busy == [True, False]
    assert [r.done for r in reports] == [0, 1, 2]


def test_a_newer_request_supersedes_and_stale_results_are_dropped(qtbot, Runner):
    gate, results = threading.Event(), []
    runner = Runner()
    runner.start(_job("old", gate), results.append, supersede=True)
    runner.start(_job("newer"), results.append, supersede=True)
    runner.start(_job("newest"), results.append, supersede=True)  # replaces the pending one
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == ["newest"]


def test_busy_runner_refuses_without_supersede(qtbot, Runner):
    gate = threading.Event()
    runner = Runner()
    runner.start(_job(1, gate), lambda _r: None, supersede=False)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_job(2), lambda _r: None, supersede=False)
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy)


def test_cancel_stops_between_steps_and_delivers_nothing(qtbot, Runner):
    gate, results, reports = threading.Event(), [], []
    runner = Runner(reports.append)
    runner.start(_job("x", gate, steps=50), results.append)
    qtbot.waitUntil(lambda: len(reports) >= 1)
    runner.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == [] and len(reports) < 50


def test_errors_notify_and_the_next_run_works(qtbot, monkeypatch, Runner):
    from napari_samscope._widgets import workers

    shown, errors, results = [], [], []
    monkeypatch.setattr(workers, "notify_error", lambda e: shown.append(user_message(e)))
    runner = Runner(on_error=errors.append)
    runner.start(_job(None, fail=ValueError("The file is not a SAM checkpoint.")), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert shown == ["The file is not a SAM checkpoint."] and len(errors) == 1
    runner.start(_job(3), results.append)
    qtbot.waitUntil(lambda: not runner.busy)
    assert results == [3]


def test_shutdown_runner_delivers_nothing_and_refuses_new_jobs(qtbot, Runner):
    gate, results = threading.Event(), []
    runner = Runner()
    runner.start(_job("late", gate), results.append)
    runner.shutdown()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == []
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(_job(1), results.append)


def test_preview_runner_reuses_one_thread_and_runs_the_newest_request_next(qtbot):
    gate, results, threads = threading.Event(), [], []

    def job(value, wait=False):
        def run():
            threads.append(threading.get_ident())
            if wait:
                gate.wait(5)
            yield from ()
            return value

        return run

    runner = PreviewRunner()
    runner.start(job("first"), results.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    runner.start(job("running", wait=True), results.append)
    qtbot.waitUntil(lambda: len(threads) == 2, timeout=5_000)
    runner.start(job("replaced"), results.append)
    runner.start(job("newest"), results.append)
    assert runner.busy
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == ["first", "newest"]
    assert len(threads) == 3 and len(set(threads)) == 1  # "replaced" never ran
    assert threading.get_ident() not in threads
    runner.cancel()  # idle: nothing to do, stays idle
    assert not runner.busy


def test_preview_runner_cancel_of_a_queued_request_leaves_it_idle(qtbot):
    gate, results = threading.Event(), []
    runner = PreviewRunner()
    runner.start(_job("running", gate, steps=1), results.append)
    runner.start(_job("queued"), results.append)
    runner.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == []


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


def test_long_jobs_run_at_the_gui_threads_priority(qtbot):
    """Work the user waits for must not yield the CPU to other programs (no ``nice``)."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are a Linux notion")

    def job():
        yield Progress("working", 0, 1)
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    results = []
    runner = JobRunner(background=True)
    runner.start(job, results.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert results == [os.getpriority(os.PRIO_PROCESS, threading.get_native_id())]


def test_interpreter_exit_stops_a_running_preview_thread_and_waits_for_it(qtbot):
    """napari closed during a preview: the exit hook stops the job at its next step and
    joins the thread, so Python never finalises with a daemon thread inside torch (that
    aborted the process with "terminate called without an active exception")."""
    import time

    from napari_samscope._widgets import workers

    started, steps = threading.Event(), []

    def endless():
        started.set()
        while True:
            steps.append(1)
            time.sleep(0.01)  # stands for one step of torch work
            yield Progress("working", len(steps), 0)

    runner = PreviewRunner()
    runner.start(endless, lambda _: None)
    assert started.wait(5)
    thread = runner._thread
    assert runner in workers._LIVE_RUNNERS and thread.is_alive()
    workers._stop_at_exit()
    assert not thread.is_alive()
    done = len(steps)
    time.sleep(0.05)
    assert len(steps) == done  # the job ran no further step
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(endless, lambda _: None)
    assert runner.stop_thread(0.1)  # a second stop is harmless
