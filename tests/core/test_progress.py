"""The generator-yields-progress contract shared by every long job."""

from __future__ import annotations

import pytest

from napari_samscope.core.progress import Cancelled, Progress, run


def _job(n: int, log: list[str]):
    try:
        for i in range(n):
            yield Progress("step", i, n)
            log.append(f"did {i}")
        return sum(range(n))
    finally:
        log.append("closed")


def test_run_returns_the_generator_result_and_reports_every_step() -> None:
    log: list[str] = []
    seen: list[Progress] = []
    assert run(_job(4, log), progress=seen.append) == 6
    assert [p.done for p in seen] == [0, 1, 2, 3]
    assert seen[-1].fraction == pytest.approx(0.75)
    assert log[-1] == "closed"


def test_should_stop_closes_the_generator_between_steps() -> None:
    log: list[str] = []
    seen: list[Progress] = []
    with pytest.raises(Cancelled):
        run(_job(10, log), progress=seen.append, should_stop=lambda: len(seen) >= 2)
    # the job stopped at its second yield: it finished one unit and was closed
    assert log == ["did 0", "closed"]


def test_tqdm_progress_and_bad_progress_argument() -> None:
    assert run(_job(3, []), progress="tqdm") == 3
    with pytest.raises(ValueError, match="progress must be"):
        run(_job(3, []), progress="bar")


def test_fraction_with_unknown_total() -> None:
    assert Progress("x", 5, 0).fraction == 0.0
    assert Progress("x", 7, 5).fraction == 1.0
