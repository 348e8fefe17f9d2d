"""Segment everything in a folder on a dask cluster: one task per image file.

The client lists the folder and gives every image its output stem, exactly as the
in-process run does (the names depend on the whole folder); each task then runs the core
job (:func:`~napari_samscope.core.everything.batch.everything_files_job`) on its one
file, on the worker, with the worker's cached model, writing into the run's output
folder. The label files, overlays and records are therefore the in-process run's, byte
for byte, for the same model and dtype, and a rerun skips what is done.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_samscope.core.everything.batch import (
    EverythingBatchOptions,
    EverythingBatchSummary,
    everything_files_job,
    plan_stems,
)
from napari_samscope.core.progress import Job, run
from napari_samscope.distributed.cluster import (
    ClusterSpec,
    open_client,
    require_distributed,
    run_tasks,
)
from napari_samscope.distributed.worker import ModelRef, cached_model

__all__ = ["everything_folder_job", "everything_task"]


def everything_task(
    item: tuple[Path, str], out: Path, ref: ModelRef, options: EverythingBatchOptions
) -> EverythingBatchSummary:
    """Segment one image on this worker (the function each dask task runs)."""
    return run(everything_files_job([item], out, functools.partial(cached_model, ref), options))


def everything_folder_job(
    source: str | os.PathLike,
    out: str | os.PathLike,
    options: EverythingBatchOptions,
    *,
    model: str | os.PathLike | None = None,
    device: str = "",
    dtype: str = "default",
    scheduler: str = "local",
    workers: int | None = None,
    retries: int = 2,
    echo: Callable[[str], Any] | None = print,
) -> Job[EverythingBatchSummary]:
    """Segment every image of ``source`` into ``out`` on a cluster (yields ``Progress`` per image).

    ``model`` is a registry name, an alias, a checkpoint path or None (the default
    model); each worker loads it once. ``echo`` receives the dashboard address.

    Raises:
        ImportError: ``distributed`` is not installed.
        ValueError: an unreachable scheduler, a missing source, or a worker that cannot
            load the model or segment in this mode (the run stops).
    """
    spec = ClusterSpec(scheduler, workers)
    if spec.in_process:
        raise ValueError("everything_folder_job needs a scheduler ('local' or an address)")
    require_distributed()  # before anything is written
    ref = ModelRef.of(model, device, dtype)
    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    items = [(path.absolute(), stem) for path, stem in plan_stems(source, out)]
    summary = EverythingBatchSummary()
    if not items:
        return summary
    with open_client(spec, echo=echo) as client:
        arguments = [(item, out, ref, options) for item in items]
        parts = yield from run_tasks(client, everything_task, arguments, retries=retries,
                                     message="segmenting images")
    for part in parts:
        summary.merge(part)
    return summary
