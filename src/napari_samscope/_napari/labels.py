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

__all__ = [
    "Segmentation",
    "next_free_id",
    "check_labels_layer",
    "commit",
    "write_preview",
    "write_planes",
]


@dataclass
class Segmentation:
    """Objects on an image layer, each a mapping ``plane key -> (H, W) bool`` mask."""

    geometry: PlaneGeometry
    objects: list[dict[PlaneKey, np.ndarray]] = field(default_factory=list)

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
        out = np.zeros(self.geometry.plane_shape, dtype=dtype)
        present = [(int(obj[key].sum()), k) for k, obj in enumerate(self.objects) if key in obj]
        for _area, k in sorted(present, reverse=True):
            out[self.objects[k][key]] = k + 1
        return out


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


def write_preview(
    layer: Any, segmentation: Segmentation | None, previous: Iterable[tuple[Any, ...]] = ()
) -> list[tuple[Any, ...]]:
    """Show ``segmentation`` in the preview Labels ``layer`` (no undo history).

    ``previous`` lists the Labels indices (one per plane) that the last preview drew;
    they are cleared first, so only the planes that change are touched.

    Returns:
        The Labels indices drawn now (pass them as ``previous`` next time).
    """
    data = layer.data
    for index in previous:
        data[index] = 0
    drawn: list[tuple[Any, ...]] = []
    if segmentation is not None:
        geometry = segmentation.geometry
        check_labels_layer(layer, geometry)
        for key in sorted(segmentation.planes):
            index = geometry.labels_index(key)
            data[index] = segmentation.label_plane(key, data.dtype)
            drawn.append(index)
    layer.refresh()
    return drawn


def write_planes(layer: Any, geometry: PlaneGeometry, planes: dict[PlaneKey, np.ndarray]) -> None:
    """Replace whole planes of a plugin-owned Labels ``layer`` with ``(H, W)`` label images."""
    check_labels_layer(layer, geometry)
    for key, plane in planes.items():
        layer.data[geometry.labels_index(key)] = plane
    layer.refresh()
