"""``auto_annotate`` on a dask cluster: one task per image file.

Every task runs the core job
(:func:`~napari_samscope.core.datasets.annotate.auto_annotate_job`) on its own files,
on the worker, with the worker's cached model, writing into the run's output folder.
The names, the atomic writes and the skip-if-done rule are therefore the in-process
run's own, and so are the label files, byte for byte, for the same model and dtype: a
rerun after a crash or a lost worker continues where it stopped.

Output names depend on the whole folder only where two images share a stem
(``a.png`` and ``a.tif`` give ``a.txt`` and ``a_tif.txt``); such images go together
into one task (see :func:`plan_tasks`). The COCO file (``save_coco``) covers the whole
folder, so it is written at the end on the client from the label files, as a rerun
writes it (the detector scores are then not in it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.datasets.annotate import auto_annotate_job
from napari_samscope.core.datasets.annotate_io import list_images, output_stems, safe_stem
from napari_samscope.core.datasets.annotate_options import AnnotateOptions, AnnotateSummary
from napari_samscope.core.datasets.detectors import instance_mode
from napari_samscope.core.progress import Job, Progress, run
from napari_samscope.distributed.cluster import (
    ClusterSpec,
    open_client,
    require_distributed,
    run_tasks,
)
from napari_samscope.distributed.worker import LazyPredictor, ModelRef

__all__ = ["annotate_task", "auto_annotate", "auto_annotate_job_distributed", "plan_tasks"]


def plan_tasks(files: Sequence[Path]) -> list[list[int]]:
    """Indices of ``files`` per task: one file per task, except files whose output name
    depends on another file's (shared stems), which go together, in folder order, into
    one task so that the core job names them as it does for the whole folder."""
    stems = output_stems(files)
    alone = [output_stems([path]) == [stem] for path, stem in zip(files, stems)]
    if all(alone):
        return [[i] for i in range(len(files))]
    clashing = {safe_stem(files[i].stem).lower() for i, ok in enumerate(alone) if not ok}
    group = [i for i, path in enumerate(files) if safe_stem(path.stem).lower() in clashing]
    if output_stems([files[i] for i in group]) != [stems[i] for i in group]:
        return [list(range(len(files)))]  # names entangled beyond shared stems: one task
    grouped = set(group)
    return [group] + [[i] for i in range(len(files)) if i not in grouped]


def annotate_task(files: list[Path], ref: ModelRef, options: AnnotateOptions) -> AnnotateSummary:
    """Annotate ``files`` on this worker (the function each dask task runs)."""
    model = LazySAM(ref) if instance_mode(options.det_model) else LazyPredictor(ref)
    return run(auto_annotate_job(files, options, sam_model=model))


_SAMS: dict[tuple[Any, ...], Any] = {}


class LazySAM:
    """Stands for ``SAM(ref)`` (with its instance decoder, for ``det_model="ais"``), loaded
    at its first use and kept for the process's later tasks."""

    def __init__(self, ref: ModelRef) -> None:
        self._ref = ref

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        key = self._ref.cache_key()
        if key not in _SAMS:
            from napari_samscope.core.predict.sam_api import SAM

            _SAMS[key] = SAM(self._ref.model, device=self._ref.device or "auto", dtype=self._ref.dtype)
        return getattr(_SAMS[key], name)


def _merge(total: AnnotateSummary, part: AnnotateSummary) -> None:
    total.annotated += part.annotated
    total.skipped += part.skipped
    total.planes += part.planes
    total.objects += part.objects
    total.failed += part.failed
    total.files += part.files


def auto_annotate_job_distributed(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    options: AnnotateOptions | None = None,
    *,
    dtype: str = "default",
    scheduler: str = "local",
    workers: int | None = None,
    retries: int = 2,
    echo: Callable[[str], Any] | None = print,
    **params: Any,
) -> Job[AnnotateSummary]:
    """The generator behind :func:`auto_annotate` with a scheduler (yields ``Progress`` per task)."""
    spec = ClusterSpec(scheduler, workers)
    if spec.in_process:
        raise ValueError("auto_annotate_job_distributed needs a scheduler ('local' or an address)")
    require_distributed()  # before anything is written
    opts = AnnotateOptions.from_arguments(options, params)
    ref = ModelRef.of(opts.sam_model, opts.device, dtype)
    files, default_dir = list_images(data)
    files = [path.absolute() for path in files]
    out = (Path(opts.output_dir).expanduser() if opts.output_dir is not None else default_dir).absolute()
    # every task writes into the same folder; the COCO file covers the whole folder and is
    # assembled at the end
    task_options = replace(opts, sam_model=None, output_dir=out, save_coco=False)
    # Check the arguments and the output names exactly as the in-process run does, before
    # any cluster starts: the core job validates everything up to its first report.
    check = auto_annotate_job(files, task_options, sam_model=LazyPredictor(ref))
    next(check)
    check.close()
    tasks = plan_tasks(files)
    summary = AnnotateSummary(output_dir=out, images=len(files))
    with open_client(spec, echo=echo) as client:
        arguments = [([files[i] for i in task], ref, task_options) for task in tasks]
        parts = yield from run_tasks(client, annotate_task, arguments, retries=retries, message="auto-annotating")
    for part in parts:
        _merge(summary, part)
    if opts.save_coco:  # every image is done: the core's skip path assembles the COCO file
        coco = run(auto_annotate_job(
            files, task_options, sam_model=LazyPredictor(ref), save_coco=True, overwrite=False
        ))
        summary.coco_path = coco.coco_path
        summary.files.append(coco.coco_path)
    return summary


def auto_annotate(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    options: AnnotateOptions | str | os.PathLike | Callable[[np.ndarray], Any] | None = None,
    *,
    progress: Callable[[Progress], Any] | str | None = "tqdm",
    verbose: bool = True,
    dtype: str = "default",
    scheduler: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    **params: Any,
) -> AnnotateSummary:
    """:func:`~napari_samscope.core.datasets.annotate.auto_annotate`, optionally on a dask cluster.

    ``options``, the keyword options (``sam_model=``, ``save_tiff=``, ...), ``progress``
    and ``verbose`` are those of the in-process function. The others:

    Args:
        dtype: compute precision request (``"default"``, ``"float32"``, ``"bfloat16"``,
            ``"auto"``), applied where the model is loaded.
        scheduler: None (in this process, the default), ``"local"`` (a local cluster of
            ``workers`` single-threaded processes) or a scheduler address
            (``"tcp://host:8786"``).
        workers: worker processes of the local cluster (default: one per CPU core); giving
            it without ``scheduler`` means ``"local"``.
        retries: how often a task that raised is retried (a task whose worker died is
            always rerun elsewhere).

    With a scheduler, ``sam_model`` must be a name, an alias, a checkpoint path or None
    (each worker loads it), and the dashboard address is printed when there is one.

    Raises:
        ImportError: a scheduler is asked for but ``distributed`` is not installed.
        ValueError: bad arguments, an unreachable scheduler, or a worker that cannot
            load the model.
    """
    if options is not None and not isinstance(options, AnnotateOptions):
        if "det_model" in params:
            raise TypeError("det_model was given twice (as the second argument and by name)")
        params["det_model"], options = options, None
    opts = AnnotateOptions.from_arguments(options, params)
    spec = ClusterSpec(scheduler, workers)
    if spec.in_process:
        from napari_samscope.core.datasets.annotate import auto_annotate as annotate_here

        if dtype != "default":
            from napari_samscope.core.predict.sam_api import SAM

            opts = replace(opts, sam_model=SAM(opts.sam_model, device=opts.device or "auto", dtype=dtype))
        return annotate_here(data, opts, progress=progress, verbose=verbose)
    echo = (lambda line: print(line, file=sys.stderr)) if verbose else None
    summary = run(
        auto_annotate_job_distributed(
            data, opts, dtype=dtype, scheduler=spec.address, workers=spec.workers,
            retries=retries, echo=echo,
        ),
        progress=progress,
    )
    if verbose:
        for path, reason in summary.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(summary, file=sys.stderr)
    return summary
