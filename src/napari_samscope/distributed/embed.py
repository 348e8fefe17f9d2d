"""``samscope embed`` on a dask cluster: the tiles of every plane, encoded by the workers
into one embedding store.

One task first creates (or checks, or with ``recompute`` replaces) the store on a worker
and lists the tiles it still lacks; the missing tiles of each plane are then split into
tasks of a few tiles (never across planes), enough for every worker to have several.
Each task encodes its tiles on the worker with the worker's cached model and writes them
into the store, one tile at a time: a tile is one zarr chunk written atomically and
marked complete after its features, so workers writing different tiles of one store at
once never corrupt it, and a rerun (or the retry of a lost worker's task) encodes only
the tiles not yet marked. Every plane is mapped to 8 bits by its own contrast limits, as
in the calling process, so the store holds the same embeddings as an in-process run.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_samscope.core.progress import Job
from napari_samscope.distributed.cluster import (
    ClusterSpec,
    open_client,
    require_distributed,
    run_tasks,
)
from napari_samscope.distributed.worker import ModelRef, cached_model

__all__ = ["EmbedJob", "EmbedSummary", "embed_job", "embed_prepare_task", "embed_tiles_task"]

_TILERS: dict[tuple[Any, ...], Any] = {}  # per worker process: (job key) -> TiledPredictor
TASKS_PER_WORKER = 4  # tasks per worker when tiles are split (balances uneven workers)


@dataclass(frozen=True)
class EmbedJob:
    """One image into one store: what every task of a run shares.

    ``image`` and ``out`` are absolute paths that the workers can read and write (a
    shared file system); ``tile_shape`` / ``halo`` None take the model's defaults.
    """

    image: str
    out: str
    ref: ModelRef
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    rgb: bool = False


@dataclass
class EmbedSummary:
    """``planes`` x ``tiles`` per plane of ``tile_shape`` / ``halo``; ``encoded`` now,
    ``reused`` from the store."""

    planes: int
    tiles: int
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    encoded: int = 0
    reused: int = 0


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _tiler(job: EmbedJob, plane: int, recompute: bool = False) -> tuple[Any, Any]:
    """``(tiled predictor, image)`` of this worker for ``job``, set to ``plane``.

    The open image, the model and the open store are kept between the tasks of a run;
    only the plane changes. The key includes the image file's and the store's stamps, so
    a rewritten image or a recomputed store is opened afresh.
    """
    from napari_samscope.core.tiling import TiledPredictor
    from napari_samscope.core.tiling.lazy import open_lazy

    def key() -> tuple[Any, ...]:
        return (job, job.ref.cache_key(), _stamp(job.image), _stamp(os.path.join(job.out, "zarr.json")))

    entry = None if recompute else _TILERS.get(key())
    try:
        if entry is None:
            image = open_lazy(job.image)
            tiled = TiledPredictor(cached_model(job.ref).predictor())
            tiled.set_image(image, tile_shape=job.tile_shape, halo=job.halo, embeddings=job.out,
                            plane=plane, rgb=job.rgb, recompute=recompute)
            if len(_TILERS) >= 4:  # a long-lived worker keeps the last few images only
                _TILERS.clear()
            entry = _TILERS[key()] = [tiled, image, plane]
        elif entry[2] != plane:
            entry[0].set_image(entry[1], tile_shape=job.tile_shape, halo=job.halo,
                               embeddings=entry[0].store, plane=plane, rgb=job.rgb)
            entry[2] = plane
    except ValueError as exc:
        if "could not load" in str(exc):  # the model's own message names the worker
            raise
        where = f"{socket.gethostname()} (process {os.getpid()})"
        raise ValueError(
            f"the worker on {where} could not embed {job.image}: {' '.join(str(exc).split())}"
        ) from None
    return entry[0], entry[1]


def embed_prepare_task(job: EmbedJob, recompute: bool = False) -> tuple[EmbedSummary, list[list[int]]]:
    """Create or check the store (on a worker); the summary so far and, per plane, the
    indices of the tiles it lacks."""
    from napari_samscope.core.tiling.lazy import plane_count

    tiled, image = _tiler(job, 0, recompute=recompute)
    planes = plane_count(image, job.rgb)
    missing = [[int(i) for i, done in enumerate(tiled.store.done(p)) if not done] for p in range(planes)]
    grid = tiled.grid
    summary = EmbedSummary(planes, len(grid), tuple(grid.tile_shape), tuple(grid.halo))
    summary.reused = planes * len(grid) - sum(len(m) for m in missing)
    return summary, missing


def embed_tiles_task(job: EmbedJob, plane: int, tiles: list[int]) -> int:
    """Encode ``tiles`` of ``plane`` into the store (those not yet there); returns how many
    were encoded."""
    tiled, _ = _tiler(job, plane)
    return tiled.precompute_all(tiles=tiles)


def split_tiles(missing: list[list[int]], workers: int) -> list[tuple[int, list[int]]]:
    """``(plane, tiles)`` tasks: each plane's missing tiles in chunks small enough that
    every worker gets about ``TASKS_PER_WORKER`` tasks (a chunk never spans two planes)."""
    total = sum(len(m) for m in missing)
    size = max(1, math.ceil(total / max(1, workers * TASKS_PER_WORKER)))
    return [(plane, tiles[i : i + size]) for plane, tiles in enumerate(missing)
            for i in range(0, len(tiles), size)]


def embed_job(
    image: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    device: str = "",
    dtype: str = "default",
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    rgb: bool = False,
    recompute: bool = False,
    scheduler: str = "local",
    workers: int | None = None,
    retries: int = 2,
    echo: Callable[[str], Any] | None = print,
) -> Job[EmbedSummary]:
    """Embed every plane of ``image`` into the store ``out`` on a cluster (yields
    ``Progress`` per task); the workers read ``image`` and write ``out`` themselves.

    Raises:
        ImportError: ``distributed`` is not installed.
        ValueError: an unreachable scheduler, a store made for another image, model or
            tiling (without ``recompute``), or a worker that cannot load the model or
            read the image.
    """
    spec = ClusterSpec(scheduler, workers)
    if spec.in_process:
        raise ValueError("embed_job needs a scheduler ('local' or an address)")
    require_distributed()
    job = EmbedJob(str(Path(image).expanduser().absolute()), str(Path(out).expanduser().absolute()),
                   ModelRef.of(model, device, dtype), tile_shape, halo, bool(rgb))
    with open_client(spec, echo=echo) as client:
        first = client.submit(embed_prepare_task, job, recompute, pure=False, retries=int(retries))
        summary, missing = first.result()
        count = len(client.scheduler_info().get("workers", {})) or 1
        tasks = split_tiles(missing, count)
        done = yield from run_tasks(client, embed_tiles_task, [(job, p, t) for p, t in tasks],
                                    retries=retries, message="encoding tiles")
    summary.encoded = int(sum(done))
    summary.reused += sum(len(t) for _, t in tasks) - summary.encoded  # tiles a retry found done
    return summary
