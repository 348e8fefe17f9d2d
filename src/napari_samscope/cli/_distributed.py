"""``--scheduler`` / ``--workers``: the batch commands on a dask cluster.

The commands add the options with :func:`add_scheduler` and hand the job to this module
when :func:`wants_cluster` says so; without the options nothing changes (the job runs
in the ``samscope`` process, and ``distributed`` is never imported).
"""

from __future__ import annotations

import argparse

from napari_samscope.cli._common import ProgressBar, UsageError

__all__ = ["add_scheduler", "run_annotate", "run_embed", "run_everything", "wants_cluster"]


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (a whole number, 1 or more)")
    return value


def add_scheduler(parser: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers`` (needs ``napari-samscope[distributed]``)."""
    group = parser.add_argument_group(
        "running on a dask cluster (needs: pip install 'napari-samscope[distributed]')"
    )
    group.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="'local' (a local cluster of --workers processes) or the address of a running "
             "dask scheduler, such as tcp://host:8786; default: run in this process",
    )
    group.add_argument(
        "--workers", type=_workers, default=None, metavar="N",
        help="worker processes of the local cluster, one thread each [one per CPU core]; "
             "implies --scheduler local",
    )


def refuse_scale(args: argparse.Namespace) -> None:
    """``--scale``, ``--flips`` or ``--zoom`` with ``--scheduler/--workers`` is a usage
    error (the workers load the model themselves, with its defaults)."""
    for option, what in (("scale", "scale"), ("flips", "flips"), ("zoom", "zoom")):
        if getattr(args, option, None) is not None:
            raise UsageError(f"--{option} does not apply to --scheduler/--workers runs yet; "
                             f"the workers use the model's default {what}")


def wants_cluster(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a dask cluster."""
    return getattr(args, "scheduler", None) is not None or getattr(args, "workers", None) is not None


def _spec(args: argparse.Namespace):  # -> ClusterSpec
    from napari_samscope.distributed.cluster import ClusterSpec

    try:
        return ClusterSpec(args.scheduler, args.workers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_annotate(args: argparse.Namespace) -> int:
    """``samscope annotate`` on the cluster of ``--scheduler`` / ``--workers``."""
    spec = _spec(args)
    from napari_samscope.core.progress import run
    from napari_samscope.distributed.annotate import auto_annotate_job_distributed

    job = auto_annotate_job_distributed(
        args.data, det_model=args.det_model, sam_model=args.sam_model, device=args.device,
        output_dir=args.output_dir, conf=args.conf, classes=args.classes, max_det=args.max_det,
        overwrite=args.overwrite, save_tiff=args.save_tiff, save_coco=args.save_coco,
        split_parts=args.split_parts, channel_axis=args.channel_axis, dtype=args.dtype,
        scheduler=spec.address, workers=spec.workers, echo=print,
    )
    with ProgressBar() as bar:
        summary = run(job, progress=bar)
    for path, reason in summary.failed:
        print(f"skipped {path}: {reason}")
    print(summary)
    return 1 if summary.failed else 0


def run_everything(args: argparse.Namespace, options) -> int:  # options: EverythingBatchOptions
    """``samscope everything`` on the cluster of ``--scheduler`` / ``--workers``."""
    from pathlib import Path

    from napari_samscope.core.everything.batch import print_failures
    from napari_samscope.core.progress import run
    from napari_samscope.distributed.everything import everything_folder_job

    spec = _spec(args)
    job = everything_folder_job(
        args.source, args.out, options, model=args.model, device=args.device, dtype=args.dtype,
        scheduler=spec.address, workers=spec.workers, echo=print,
    )
    with ProgressBar() as bar:
        summary = run(job, progress=bar)
    for line in summary.notes + summary.lines:
        print(line)
    print_failures(summary)
    print(summary.text(Path(args.out)))
    return 1 if summary.failed else 0


def run_embed(args: argparse.Namespace, image, rgb: bool) -> int:
    """``samscope embed`` on the cluster of ``--scheduler`` / ``--workers``."""
    import time
    from pathlib import Path

    import numpy as np

    from napari_samscope.core.progress import run
    from napari_samscope.distributed.embed import embed_job

    spec = _spec(args)
    start = time.perf_counter()
    job = embed_job(
        args.image, args.out, model=args.model, device=args.device, dtype=args.dtype,
        tile_shape=args.tile_shape, halo=args.halo, rgb=rgb, recompute=args.recompute,
        scheduler=spec.address, workers=spec.workers, echo=print,
    )
    with ProgressBar() as bar:
        summary = run(job, progress=bar)
    print(
        f"{Path(args.image).name}: shape {tuple(image.shape)} {np.dtype(image.dtype)}, "
        f"{summary.planes} plane(s) x {summary.tiles} tiles of {summary.tile_shape} "
        f"(halo {summary.halo}); encoded {summary.encoded}, reused {summary.reused} in "
        f"{time.perf_counter() - start:.1f} s -> {args.out}"
    )
    return 0
