"""SAM masks -> napari Labels layers: the preview, and commits that Ctrl+Z undoes.

A :class:`Segmentation` holds objects as ``{plane key: (H, W) bool mask}`` so the
same structure serves one object on one plane, several boxes on one plane, and one
3D object propagated through a stack.

Commits go through ``Labels.data_setitem`` inside ``Labels.block_history`` so that
a whole commit is one undo step, take the next free ids, and never overwrite
existing labels unless asked to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneGeometry, PlaneKey
from napari_samscope.core.predict.label_image import paint_labels

__all__ = [
    "Segmentation",
    "next_free_id",
    "check_labels_layer",
    "commit",
    "write_preview",
    "write_planes",
    "count_ids",
]


@dataclass
class Segmentation:
    """Objects on an image layer, each a mapping ``plane key -> (H, W) bool`` mask.
    ``draft``: quick drafts a live preview shows until the full result arrives (never
    committed)."""

    geometry: PlaneGeometry
    objects: list[dict[PlaneKey, np.ndarray]] = field(default_factory=list)
    draft: bool = False

    @property
    def planes(self) -> set[PlaneKey]:
        return {key for obj in self.objects for key in obj}

    def is_empty(self) -> bool:
        return not any(mask.any() for obj in self.objects for mask in obj.values())

    def indices(self, k: int) -> tuple[np.ndarray, ...]:
        """Fancy indices into a matching Labels layer for object ``k`` (all its planes)."""
        parts = [self.geometry.labels_indices(key, m) for key, m in self.objects[k].items()]
        if not parts:
            return tuple(np.zeros(0, dtype=np.intp) for _ in self.geometry.spatial_axes)
        return tuple(np.concatenate(axis) for axis in zip(*parts))

    def label_plane(self, key: PlaneKey, dtype: Any = np.uint8) -> np.ndarray:
        """``(H, W)`` label image of plane ``key``: object ``k`` drawn with value ``k+1``.

        Larger objects are drawn first so that small ones stay visible on top.
        """
        present = [k for k, obj in enumerate(self.objects) if key in obj]
        return paint_labels([self.objects[k][key] for k in present], self.geometry.plane_shape,
                            values=[k + 1 for k in present], dtype=dtype, earlier_wins_ties=True)


def next_free_id(data: Any) -> int:
    """One more than the largest label in ``data`` (1 for an empty layer)."""
    arr = np.asarray(data)
    return int(arr.max()) + 1 if arr.size else 1


def check_labels_layer(layer: Any, geometry: PlaneGeometry) -> None:
    """Raise ``ValueError`` unless ``layer``'s data matches the image's planes."""
    shape = tuple(int(s) for s in layer.data.shape)
    if shape != geometry.labels_shape:
        raise ValueError(
            f"Labels layer '{layer.name}' has shape {shape} but the image needs "
            f"{geometry.labels_shape}; choose another labels layer or let the plugin create one."
        )


def commit(layer: Any, segmentation: Segmentation, overwrite: bool = False) -> list[int]:
    """Write every object of ``segmentation`` into Labels ``layer`` with new ids.

    Object ``k`` gets id ``next_free_id + k'`` where ``k'`` counts only objects that
    write at least one pixel. Without ``overwrite`` only background pixels (0) are
    written, so existing labels are never changed. Where new objects overlap, the
    smaller one wins (as in the preview). The commit is one undo step.

    Returns:
        The ids written, in object order.

    Raises:
        ValueError: the layer's shape does not match, or its dtype cannot hold the ids.
    """
    check_labels_layer(layer, segmentation.geometry)
    data = layer.data
    new_id = next_free_id(data)
    dtype = np.dtype(data.dtype)
    planned: list[tuple[tuple[np.ndarray, ...], int]] = []
    for k in range(len(segmentation.objects)):
        idx = segmentation.indices(k)
        if not overwrite and idx[0].size:
            free = np.asarray(data[idx]) == 0
            idx = tuple(a[free] for a in idx)
        if idx[0].size == 0:
            continue
        label = new_id + len(planned)
        if np.issubdtype(dtype, np.integer) and label > np.iinfo(dtype).max:
            raise ValueError(
                f"Labels layer '{layer.name}' ({dtype}) cannot hold label {label}; "
                "convert it to a larger integer type (for example uint32) first."
            )
        planned.append((idx, label))
    if not planned:
        return []
    # Large objects first, so that where new objects overlap the smaller one wins,
    # exactly as the preview shows them.
    with layer.block_history():
        for idx, label in sorted(planned, key=lambda p: -p[0][0].size):
            layer.data_setitem(idx, label, refresh=False)
    layer.refresh()
    return [label for _idx, label in planned]


#: Above this fraction of a plane's pixels changing, the preview is redrawn whole
#: (one texture upload) rather than pixel by pixel.
PARTIAL_REDRAW_FRACTION = 0.25

Region = tuple[int, int, int, int]  # r0, r1, c0, c1 on a (H, W) plane; empty when r0 == r1


def _bbox(mask: np.ndarray) -> Region:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _union(a: Region, b: Region) -> Region:
    if a[0] == a[1]:
        return b
    if b[0] == b[1]:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _plane_view(data: np.ndarray, geometry: PlaneGeometry, key: PlaneKey) -> np.ndarray:
    """Writable ``(H, W)`` view of plane ``key`` of a numpy Labels array."""
    view = data[geometry.labels_index(key)]
    return view.T if geometry.row_axis > geometry.col_axis else view


def _label_region(
    segmentation: Segmentation, key: PlaneKey, region: Region, dtype: Any
) -> np.ndarray:
    """:meth:`Segmentation.label_plane` cut to ``region`` (computed only there)."""
    r0, r1, c0, c1 = region
    cut = {k: obj[key][r0:r1, c0:c1] for k, obj in enumerate(segmentation.objects) if key in obj}
    # larger objects first: small ones stay visible on top
    return paint_labels(list(cut.values()), (r1 - r0, c1 - c0), values=[k + 1 for k in cut],
                        dtype=dtype, earlier_wins_ties=True)


def _without_history(layer: Any) -> Any:
    """napari's undo deque of ``layer`` when it has one we can trim, else ``None``."""
    history = getattr(layer, "_undo_history", None)
    return history if hasattr(history, "pop") and hasattr(layer, "data_setitem") else None


def write_preview(
    layer: Any, segmentation: Segmentation | None, previous: Iterable[tuple[Any, ...]] = ()
) -> list[tuple[Any, ...]]:
    """Show ``segmentation`` in the preview Labels ``layer`` (no undo history).

    ``previous`` is what the last call returned: the ``(plane key, region)`` pairs it
    drew. Only the pixels that change, inside the bounding boxes of the old and new
    masks, are written; when few change they go through ``Labels.data_setitem``
    (napari then uploads only that part of the texture, and the history entry it makes
    is dropped), else the planes are written in place and the layer is refreshed once.

    Returns:
        The ``(plane key, region)`` pairs drawn now (pass them as ``previous`` next time).
    """
    data = layer.data
    regions: dict[PlaneKey, Region] = {}
    previous = list(previous)
    geometry = segmentation.geometry if segmentation is not None else None
    if geometry is None and previous:
        geometry = previous[-1][2]
    if geometry is None:
        return []
    if segmentation is not None:
        check_labels_layer(layer, geometry)
    elif tuple(data.shape) != geometry.labels_shape:
        return []  # not the layer those regions were drawn on: nothing of ours to clear
    refresh = False
    for key, region, old_geometry in previous:
        if old_geometry == geometry:
            regions[key] = _union(regions.get(key, (0, 0, 0, 0)), region)
        elif tuple(data.shape) == old_geometry.labels_shape:  # drawn for another image
            r0, r1, c0, c1 = region
            _plane_view(data, old_geometry, key)[r0:r1, c0:c1] = 0
            refresh = True
    drawn: list[tuple[Any, ...]] = []
    if segmentation is not None:
        for key in sorted(segmentation.planes):
            box = (0, 0, 0, 0)
            for obj in segmentation.objects:
                if key in obj:
                    box = _union(box, _bbox(obj[key]))
            regions[key] = _union(regions.get(key, (0, 0, 0, 0)), box)
            drawn.append((key, box, segmentation.geometry))
    changes = []  # (key, rows, cols, values) in plane coordinates
    for key, region in regions.items():
        r0, r1, c0, c1 = region
        if r0 == r1:
            continue
        old = _plane_view(data, geometry, key)[r0:r1, c0:c1]
        new = (_label_region(segmentation, key, region, data.dtype)
               if segmentation is not None and key in segmentation.planes
               else np.zeros_like(old))
        rows, cols = np.nonzero(old != new)
        if rows.size:
            changes.append((key, rows + r0, cols + c0, new[rows, cols]))
    if not changes:
        if refresh:
            layer.refresh()
        return drawn
    total = sum(c[1].size for c in changes)
    plane_size = int(np.prod(geometry.plane_shape))
    history = _without_history(layer) if isinstance(data, np.ndarray) else None
    if history is not None and not refresh and total <= PARTIAL_REDRAW_FRACTION * plane_size:
        for key, rows, cols, values in changes:
            kept = len(history)
            layer.data_setitem(geometry.labels_indices_at(key, rows, cols), values)
            while len(history) > kept:  # the preview has no undo
                history.pop()
        return drawn
    for key, rows, cols, values in changes:
        data[geometry.labels_indices_at(key, rows, cols)] = values
    layer.refresh()
    return drawn


def write_planes(layer: Any, geometry: PlaneGeometry, planes: dict[PlaneKey, np.ndarray]) -> None:
    """Replace whole planes of a plugin-owned Labels ``layer`` with ``(H, W)`` label images
    (also when the view shows the columns axis before the rows axis)."""
    check_labels_layer(layer, geometry)
    flipped = geometry.row_axis > geometry.col_axis
    for key, plane in planes.items():
        layer.data[geometry.labels_index(key)] = plane.T if flipped else plane
    layer.refresh()


def count_ids(planes: Iterable[np.ndarray]) -> int:
    """How many distinct non-zero ids the label ``planes`` hold together (an object
    whose id is linked through z counts once)."""
    ids: set[int] = set()
    for plane in planes:
        ids.update(int(i) for i in np.unique(np.asarray(plane)) if i != 0)
    return len(ids)
