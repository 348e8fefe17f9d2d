"""Segment everything in a folder on a dask cluster: one task per image, or per few
planes of a stack.

The client lists the folder and gives every image its output stem, exactly as the
in-process run does (the names depend on the whole folder); each task then runs the core
job (:func:`~napari_samscope.core.everything.batch.everything_files_job`) on its file,
on the worker, with the worker's cached model, writing into the run's output folder. The
label files, overlays and records are therefore the in-process run's, byte for byte, for
the same model and dtype, and a rerun skips what is done.

A 2D image is one task, which checks whether it is done and records it in the manifest
itself. A stack is split into tasks of a few planes (every plane is segmented on its
own, so the split changes no output), so that a folder of a few long stacks keeps every
worker busy; the client checks whether a stack is done before submitting it and records
it once all its planes are written.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_samscope.core.everything.batch import (
    EverythingBatchOptions,
    EverythingBatchSummary,
    everything_files_job,
    expected_outputs,
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

__all__ = ["everything_folder_job", "everything_task", "split_planes"]

TASKS_PER_WORKER = 4  # plane tasks per worker when stacks are split (balances the workers)


def everything_task(
    item: tuple[Path, str], out: Path, ref: ModelRef, options: EverythingBatchOptions,
    planes: list[int] | None = None,
) -> EverythingBatchSummary:
    """Segment one image, or ``planes`` of one stack, on this worker (the function each
    dask task runs)."""
    return run(everything_files_job([item], out, functools.partial(cached_model, ref), options,
                                    only_planes=planes))


def split_planes(counts: list[int], workers: int) -> list[list[list[int]]]:
    """Per stack of ``counts`` planes, its planes in chunks small enough that every worker
    gets about ``TASKS_PER_WORKER`` tasks."""
    size = max(1, math.ceil(sum(counts) / max(1, workers * TASKS_PER_WORKER)))
    return [[list(range(start, min(start + size, n))) for start in range(0, n, size)] for n in counts]


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
    from napari_samscope.core.datasets.annotate_io import plane_count
    from napari_samscope.core.datasets.manifest import Manifest

    items = [(path.absolute(), stem) for path, stem in plan_stems(source, out)]
    summary = EverythingBatchSummary()
    manifest = Manifest.load(out)
    singles, stacks = [], []
    for path, stem in items:
        count = plane_count(path)
        if count is None or count <= 1:
            singles.append((path, stem))
            continue
        expected = expected_outputs(out, stem, path, options.records) or []
        if not options.overwrite and manifest.is_done(stem, path, expected, settings=options.settings):
            summary.skipped += 1
        else:
            stacks.append(((path, stem), count))
    if not singles and not stacks:
        return summary
    with open_client(spec, echo=echo) as client:
        workers = len(client.scheduler_info().get("workers", {})) or 1
        chunks = split_planes([count for _, count in stacks], workers)
        arguments = [(item, out, ref, options) for item in singles]
        arguments += [(item, out, ref, options, planes)
                      for (item, _), parts in zip(stacks, chunks) for planes in parts]
        parts = yield from run_tasks(client, everything_task, arguments, retries=retries,
                                     message="segmenting images")
    for part in parts[: len(singles)]:
        summary.merge(part)
    start = len(singles)
    for ((path, stem), _), pieces in zip(stacks, chunks):
        stack = EverythingBatchSummary()
        for part in parts[start : start + len(pieces)]:
            stack.merge(part)
        start += len(pieces)
        if stack.failed:  # one failure per file, as in one process
            summary.failed.append(stack.failed[0])
            continue
        manifest.record(stem, path, stack.files, keep=False, settings=options.settings)
        manifest.save()
        stack.done = 1
        summary.merge(stack)
    return summary
