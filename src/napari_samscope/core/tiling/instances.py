"""The instance decoder's modes (AIS, APG) on a large image, tile by tile, stitched.

AIS: each tile's ``(3, h, w)`` maps are decoded from that tile's embedding (from memory,
the embedding store, or encoded now: a store's cached tiles are never encoded again),
and only the tile's *inner* region is kept (the halo split between neighbours as
:class:`~napari_samscope.core.tiling.geometry.TileGrid` defines it, so each kept pixel
was decoded with at least ``halo`` pixels of context). The inner regions partition the
image, so they assemble into one ``(3, H, W) float32`` array, and AIS's seeded watershed
(:func:`~napari_samscope.core.instances.postprocess.instances_from_maps`) runs *once* on
it: an object across a tile boundary is one object, as on an untiled image, as long as
it is smaller than the halo (then both tiles see it whole and their maps agree).

The assembled maps are written into a preallocated array: by default a numpy array in
memory (12 bytes a pixel: 48 MB for 2048 x 2048), or any writable ``(3, H, W)`` array
given as ``out`` (a ``numpy.memmap`` keeps a huge image's maps on disk; the watershed
then reads them through the page cache).

APG: the point prompts come from the assembled maps (as untiled APG takes them from the
whole image's maps); each point is decoded by SAM's mask decoder on the tile that holds
it with the most margin from a cut edge (the tiled predictor's routing,
:meth:`TileGrid.route`), masks stay cropped to their box, and they are merged as APG
merges (:func:`~napari_samscope.core.instances.apg.merge_masks`: NMS on mask IoU, painted
largest first, split into pieces, small pieces removed) without ever holding one
full-image mask per object.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_samscope.core.progress import Progress, run
from napari_samscope.core.tiling.geometry import Tile, TileGrid

__all__ = [
    "CroppedMask",
    "merge_cropped_masks",
    "segment_instances_tiled",
    "segment_instances_tiled_iter",
    "tiled_instance_maps",
    "tiled_instance_maps_iter",
]

#: ``(tile, embedding) -> (3, h, w)`` maps of one tile (default: the instance decoder).
TileMaps = Callable[[Tile, Any], np.ndarray]


def _decoder_maps(tiled: Any, decoder: Any) -> TileMaps:
    """The instance decoder run on one tile's embedding."""
    from napari_samscope.core.instances.maps import instance_maps_from_embedding

    if decoder is None:
        raise ValueError("The tiled instance modes need an instance decoder (or maps_of).")
    size = int(tiled.predictor.img_size)
    dtype = getattr(tiled.predictor, "dtype", None)
    return lambda tile, emb: instance_maps_from_embedding(decoder, emb, size, dtype)


def _check_out(out: Any, grid: TileGrid) -> Any:
    want = (3, *grid.image_shape)
    if out is None:
        return np.empty(want, dtype=np.float32)
    if tuple(getattr(out, "shape", ())) != want:
        raise ValueError(
            f"out must be a (3, H, W) array of shape {want} for this image, not "
            f"{tuple(getattr(out, 'shape', ()))}."
        )
    return out


def tiled_instance_maps_iter(
    tiled: Any,
    decoder: Any = None,
    *,
    maps_of: TileMaps | None = None,
    out: Any = None,
) -> Generator[Progress, None, Any]:
    """The instance decoder's maps of the current plane of ``tiled``, assembled from the
    tiles' inner regions (module docstring), yielding progress per tile.

    Args:
        tiled: a :class:`~napari_samscope.core.tiling.predictor.TiledPredictor` with an
            image set (its store, if any, supplies the tile embeddings).
        decoder: the model's instance decoder (``SAM.instance_decoder``).
        maps_of: instead of ``decoder``, a function ``(tile, embedding) -> (3, h, w)``.
        out: a writable ``(3, H, W)`` array to fill (e.g. a ``numpy.memmap``); default:
            a new float32 numpy array.

    Returns (as the generator's value):
        ``out``, filled: foreground, centre distance, boundary distance.
    """
    grid = tiled._require_grid()
    maps_of = maps_of if maps_of is not None else _decoder_maps(tiled, decoder)
    out = _check_out(out, grid)
    for tile in grid:
        yield Progress("instance decoder: tiles", tile.index, len(grid))
        maps = np.asarray(maps_of(tile, tiled.tile_embedding(tile.index)), dtype=np.float32)
        if maps.shape != (3, *tile.shape):
            raise ValueError(f"The maps of tile {tile.index} have shape {maps.shape}, not {(3, *tile.shape)}.")
        oy0, _, ox0, _ = tile.outer
        y0, y1, x0, x1 = tile.inner
        out[:, y0:y1, x0:x1] = maps[:, y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0]
    yield Progress("instance decoder: tiles", len(grid), len(grid))
    return out


def tiled_instance_maps(tiled: Any, decoder: Any = None, progress: Any = None, **kwargs: Any) -> Any:
    """Run :func:`tiled_instance_maps_iter` to the end (``progress`` as in ``core.progress.run``)."""
    return run(tiled_instance_maps_iter(tiled, decoder, **kwargs), progress=progress)


def segment_instances_tiled_iter(
    tiled: Any,
    decoder: Any = None,
    mode: str = "ais",
    *,
    maps_of: TileMaps | None = None,
    out: Any = None,
    **params: Any,
) -> Generator[Progress, None, np.ndarray]:
    """AIS or APG (``mode``) on the current plane of ``tiled`` (module docstring).

    ``params`` are the mode's (``AISParams`` or ``APGParams``, micro-sam's names), checked
    before any tile is decoded; ``decoder``, ``maps_of`` and ``out`` as in
    :func:`tiled_instance_maps_iter`.

    Returns (as the generator's value):
        ``(H, W)`` uint32 labels, 0 background, objects numbered 1..N.

    Raises:
        ValueError / TypeError: an unknown mode or bad parameters.
    """
    from napari_samscope.core.instances.apg import APGParams, point_prompts_from_maps
    from napari_samscope.core.instances.postprocess import AISParams, instances_from_maps

    mode = str(getattr(mode, "value", mode)).lower()
    if mode not in ("ais", "apg"):
        raise ValueError(f"Unknown instance segmentation mode {mode!r}; use one of 'ais', 'apg'.")
    apg = APGParams.from_kwargs(**params) if mode == "apg" else None
    if apg is None:
        AISParams.from_kwargs(**params)
    maps = yield from tiled_instance_maps_iter(tiled, decoder, maps_of=maps_of, out=out)
    yield Progress(f"instance decoder: {mode.upper()}", 0, 1)
    if apg is None:
        return instances_from_maps(maps, **params)
    points = point_prompts_from_maps(
        np.asarray(maps),
        foreground_threshold=apg.foreground_threshold,
        center_distance_threshold=apg.center_distance_threshold,
        boundary_distance_threshold=apg.boundary_distance_threshold,
    )
    masks, scores = yield from _decode_points_iter(tiled, points, apg)
    return merge_cropped_masks(masks, scores, int(apg.min_size), apg.nms_threshold, tiled.image_shape)


def segment_instances_tiled(
    tiled: Any, decoder: Any = None, mode: str = "ais", progress: Any = None, **kwargs: Any
) -> np.ndarray:
    """Run :func:`segment_instances_tiled_iter` to the end (``progress`` as in ``core.progress.run``)."""
    return run(segment_instances_tiled_iter(tiled, decoder, mode, **kwargs), progress=progress)


# ----------------------------------------------------------------------------- APG


class CroppedMask:
    """A bool mask cropped to its box: ``crop`` ``(h, w)`` whose top-left pixel is
    ``(y0, x0)`` of the image."""

    __slots__ = ("crop", "y0", "x0", "area")

    def __init__(self, crop: np.ndarray, y0: int, x0: int) -> None:
        rows, cols = np.nonzero(crop.any(axis=1))[0], np.nonzero(crop.any(axis=0))[0]
        if len(rows):
            crop = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            y0, x0 = y0 + int(rows[0]), x0 + int(cols[0])
        self.crop, self.y0, self.x0 = np.ascontiguousarray(crop, dtype=bool), int(y0), int(x0)
        self.area = int(np.count_nonzero(crop))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)``, exclusive."""
        return self.y0, self.x0, self.y0 + self.crop.shape[0], self.x0 + self.crop.shape[1]

    def iou(self, other: CroppedMask) -> float:
        ay0, ax0, ay1, ax1 = self.box
        by0, bx0, by1, bx1 = other.box
        y0, x0, y1, x1 = max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1)
        if y1 <= y0 or x1 <= x0:
            return 0.0
        a = self.crop[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
        b = other.crop[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        inter = int(np.count_nonzero(a & b))
        return inter / max(1, self.area + other.area - inter)


def _decode_points_iter(
    tiled: Any, points: np.ndarray, params: Any
) -> Generator[Progress, None, tuple[list[CroppedMask], list[float]]]:
    """Each ``(x, y)`` point decoded on its tile (masks over ``min_size`` pixels kept)."""
    import torch

    from napari_samscope.core.everything.mask_ops import stability_score
    from napari_samscope.core.predict.transforms import apply_coords

    grid = tiled._require_grid()
    tile_of = {t.outer: t.index for t in grid}
    groups: dict[int, list[int]] = {}
    for k, (x, y) in enumerate(points):
        # a point always lies inside some tile: its window is that tile's outer window
        groups.setdefault(tile_of[grid.route([x], [y])], []).append(k)
    predictor = tiled.predictor
    masks: list[CroppedMask] = []
    scores: list[float] = []
    batch = int(params.batch_size)
    for step, (index, members) in enumerate(sorted(groups.items())):
        yield Progress("APG: decoding the seeds, tile by tile", step, len(groups))
        emb = tiled.tile_embedding(index)
        predictor.set_embedding(emb)
        oy0, _, ox0, _ = grid[index].outer
        local = points[members] - (ox0, oy0)
        threshold = predictor.model.mask_threshold
        with torch.no_grad():
            for start in range(0, len(local), batch):
                chunk = local[start : start + batch]
                coords = apply_coords(chunk[:, None, :], emb.original_size, emb.input_size)
                coords_t = torch.as_tensor(coords, dtype=torch.float32, device=predictor.device)
                labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=predictor.device)
                low, iou = predictor.decode(coords_t, labels_t, multimask_output=False)
                logits = predictor.mask_upsampler.logits(low[:, 0])
                score = iou[:, 0] * torch.nan_to_num(stability_score(logits, threshold, 1.0))
                binary = (logits > threshold).cpu().numpy()
                for mask, value in zip(binary, score.float().cpu().numpy()):
                    if np.count_nonzero(mask) > params.min_size:
                        masks.append(CroppedMask(mask, oy0, ox0))
                        scores.append(float(value))
    yield Progress("APG: decoding the seeds, tile by tile", len(groups), len(groups))
    return masks, scores


def merge_cropped_masks(
    masks: list[CroppedMask], scores: Any, min_size: int, nms_threshold: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """:func:`~napari_samscope.core.instances.apg.merge_masks` on cropped masks: the same
    labels, with memory for one ``(H, W)`` label image instead of ``N`` full masks."""
    from napari_samscope.core.instances.apg import _split_and_filter

    scores = np.asarray(scores, dtype=np.float64)
    candidates = [k for k, m in enumerate(masks) if m.area > min_size]
    order = sorted(candidates, key=lambda k: -scores[k])  # stable, as numpy's argsort
    cell = 64
    buckets: dict[tuple[int, int], list[int]] = {}
    kept: list[int] = []
    for k in order:  # greedy NMS on mask IoU, best score first
        y0, x0, y1, x1 = masks[k].box
        cells = [(r, c) for r in range(y0 // cell, (y1 - 1) // cell + 1)
                 for c in range(x0 // cell, (x1 - 1) // cell + 1)]
        near = {j for c in cells for j in buckets.get(c, ())}
        if any(masks[k].iou(masks[j]) > nms_threshold for j in near):
            continue
        for c in cells:
            buckets.setdefault(c, []).append(k)
        kept.append(k)
    painted = np.zeros(tuple(shape), dtype=np.uint32)
    by_area = sorted(kept, key=lambda k: -masks[k].area)  # largest first, never overwriting
    for new_id, k in enumerate(by_area, start=1):
        y0, x0, y1, x1 = masks[k].box
        view = painted[y0:y1, x0:x1]
        view[masks[k].crop & (view == 0)] = new_id
    return _split_and_filter(painted, int(min_size))
