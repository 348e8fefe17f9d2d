"""Segment everything in a large image tile by tile, stitched across the halos.

Each tile is segmented with :class:`~napari_samscope.core.everything.MaskGenerator` on
its own embedding (from memory, the store, or encoded now). Stitching:

1. a tile keeps the masks whose box centre lies in its inner region grown by half the
   halo, so an object on a boundary is kept by both neighbours rather than by neither;
2. duplicates are then removed across tiles: two masks overlapping by more than
   ``dedup_overlap`` of the smaller one are one object, and the copy seen with the most
   margin from a cut tile edge wins (a mask touching a cut edge is probably truncated),
   then the higher predicted IoU.

An object is therefore neither lost nor duplicated as long as it is smaller than the halo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import numpy as np

from napari_samscope.core.everything.generator import MaskGenerator
from napari_samscope.core.everything.records import EverythingResult, MaskRecord
from napari_samscope.core.progress import Progress, run
from napari_samscope.core.tiling.geometry import Tile, TileGrid
from napari_samscope.core.tiling.predictor import TiledPredictor

__all__ = ["segment_everything_tiled", "segment_everything_tiled_iter", "stitch_records"]


def segment_everything_tiled_iter(
    tiled: TiledPredictor,
    *,
    dedup_overlap: float = 0.5,
    generator: Any = None,
    **params: Any,
) -> Generator[Progress, None, EverythingResult]:
    """Segment everything in the current image of ``tiled``, yielding progress.

    Args:
        tiled: a :class:`TiledPredictor` with an image set.
        dedup_overlap: fraction of the smaller mask above which two masks from different
            tiles are one object.
        generator: a :class:`MaskGenerator` of ``tiled.predictor`` to use (or any object
            with its ``generate_iter(rgb, embedding=...)``); default: a new one made
            with ``params``.
        **params: :class:`MaskGenerator` parameters (``points_per_side``, ...).

    Returns (as the generator's value):
        An :class:`EverythingResult` in original image coordinates.
    """
    if not 0.0 < dedup_overlap <= 1.0:
        raise ValueError(f"dedup_overlap must be in (0, 1], not {dedup_overlap}.")
    grid = tiled._require_grid()
    if generator is None:
        generator = MaskGenerator(tiled.predictor, **params)
    elif params:
        raise ValueError("Pass MaskGenerator parameters either to the generator or here, not both.")
    candidates: list[tuple[MaskRecord, float]] = []
    for tile in grid:
        yield Progress("segment everything: tiles", tile.index, len(grid))
        rgb = tiled.read_rgb(tile.outer)
        job = generator.generate_iter(rgb, embedding=tiled.tile_embedding(tile.index))
        while True:
            try:
                next(job)
            except StopIteration as stop:
                result = stop.value
                break
        for record in result:
            shifted = _shift(record, tile, grid.image_shape)
            if shifted.area and _centre_in(shifted, tile, grid):
                candidates.append((shifted, _margin(shifted, tile, grid)))
    yield Progress("segment everything: stitching", len(grid), len(grid))
    records = stitch_records(candidates, dedup_overlap)
    return EverythingResult(records, grid.image_shape)


def segment_everything_tiled(
    tiled: TiledPredictor, progress: Any = None, **kwargs: Any
) -> EverythingResult:
    """Run :func:`segment_everything_tiled_iter` to the end (``progress`` as in
    ``core.progress.run``)."""
    return run(segment_everything_tiled_iter(tiled, **kwargs), progress=progress)


def _shift(record: MaskRecord, tile: Tile, image_shape: tuple[int, int]) -> MaskRecord:
    """``record`` from tile coordinates to image coordinates."""
    y0, _, x0, _ = tile.outer
    x, y, w, h = record.bbox
    cx, cy, cw, ch = record.crop_box
    px, py = record.point_coords
    return dataclasses.replace(
        record,
        bbox=(x + x0, y + y0, w, h),
        crop_box=(cx + x0, cy + y0, cw, ch),
        point_coords=(px + x0, py + y0),
        image_shape=tuple(image_shape),
    )


def _centre_in(record: MaskRecord, tile: Tile, grid: TileGrid) -> bool:
    x, y, w, h = record.bbox
    cy, cx = y + h / 2.0, x + w / 2.0
    iy0, iy1, ix0, ix1 = tile.inner
    gy, gx = grid.halo[0] / 2.0, grid.halo[1] / 2.0
    return iy0 - gy <= cy < iy1 + gy and ix0 - gx <= cx < ix1 + gx


def _margin(record: MaskRecord, tile: Tile, grid: TileGrid) -> float:
    x, y, w, h = record.bbox
    return grid.margin(tile, (y, y + h + 1, x, x + w + 1))


def stitch_records(
    candidates: list[tuple[MaskRecord, float]], dedup_overlap: float = 0.5
) -> list[MaskRecord]:
    """Drop duplicates among ``(record, margin)`` candidates from different tiles (see the
    module docstring); the survivors keep their order of preference."""
    order = sorted(
        range(len(candidates)),
        key=lambda i: (-min(candidates[i][1], 1e9), -candidates[i][0].predicted_iou),
    )
    cell = 64
    buckets: dict[tuple[int, int], list[int]] = {}
    kept: list[MaskRecord] = []
    for i in order:
        record = candidates[i][0]
        x0, y0, x1, y1 = record.box_xyxy
        cells = [
            (cy, cx) for cy in range(y0 // cell, y1 // cell + 1) for cx in range(x0 // cell, x1 // cell + 1)
        ]
        seen = {j for c in cells for j in buckets.get(c, ())}
        if any(_overlap(record, kept[j]) > dedup_overlap for j in seen):
            continue
        for c in cells:
            buckets.setdefault(c, []).append(len(kept))
        kept.append(record)
    return kept


def _overlap(a: MaskRecord, b: MaskRecord) -> float:
    """Intersection over the smaller area of two records' masks."""
    ax0, ay0, ax1, ay1 = a.box_xyxy
    bx0, by0, bx1, by1 = b.box_xyxy
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 > x1 or y0 > y1:
        return 0.0
    ma = a.crop_mask[y0 - ay0 : y1 - ay0 + 1, x0 - ax0 : x1 - ax0 + 1]
    mb = b.crop_mask[y0 - by0 : y1 - by0 + 1, x0 - bx0 : x1 - bx0 + 1]
    inter = int(np.count_nonzero(ma & mb))
    return inter / max(1, min(a.area, b.area))
