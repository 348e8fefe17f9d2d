"""The one place where napari coordinates become SAM coordinates.

napari speaks world coordinates ``(..., row, col)``: every layer maps its own data
coordinates to the world through its ``scale``, ``translate``, ``rotate``,
``shear`` and ``affine``. The core speaks SAM's convention: ``(x, y)`` =
``(column, row)`` in pixels of one 2D plane of the image.

The path from a prompt to SAM is always::

    prompt layer data --data_to_world--> world --image.world_to_data--> image data
    image data (row, col) on the plane axes --> SAM (x, y) = (col, row)

Pixel convention: napari puts the centre of pixel ``i`` at data coordinate ``i``;
SAM takes pixel indices and adds 0.5 itself, so a data coordinate is used as a SAM
coordinate without any shift.

Nothing here ever modifies a layer's transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PlaneKey",
    "PlaneGeometry",
    "spatial_shape",
    "world_to_layer_data",
    "layer_data_to_world",
    "current_geometry",
    "plane_key_of",
    "rowcol_to_xy",
]

#: Index of a plane on the image's non-plane spatial axes, in layer axis order
#: (``()`` for a 2D image).
PlaneKey = tuple[int, ...]


@dataclass(frozen=True)
class PlaneGeometry:
    """How an image layer is cut into the 2D planes that SAM segments.

    Axes are the image *layer's* data axes (``layer.ndim`` of them; the RGB(A) axis
    of an RGB layer is not one of them).

    Attributes:
        ndim: ``layer.ndim``.
        shape: the layer's data shape on those axes (without an RGB axis).
        row_axis, col_axis: the layer axes shown as the plane's rows and columns
            (the last two displayed axes of the viewer).
        channel_axis: the layer axis holding channels, or ``None``.
        current: the plane under the viewer's current ``dims`` point.
        stack_axis: the axis along which "Segment all slices" propagates (the next
            axis in the viewer's order that is neither a plane nor the channel axis),
            or ``None`` for a single 2D plane.
    """

    ndim: int
    shape: tuple[int, ...]
    row_axis: int
    col_axis: int
    channel_axis: int | None
    current: PlaneKey
    stack_axis: int | None

    @property
    def key_axes(self) -> tuple[int, ...]:
        """The layer axes indexed by a :data:`PlaneKey`, in order."""
        skip = {self.row_axis, self.col_axis, self.channel_axis}
        return tuple(a for a in range(self.ndim) if a not in skip)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Every layer axis except the channel axis (the axes of a Labels layer)."""
        return tuple(a for a in range(self.ndim) if a != self.channel_axis)

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of a Labels layer that matches the image (channel axis removed)."""
        return tuple(self.shape[a] for a in self.spatial_axes)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one plane."""
        return (self.shape[self.row_axis], self.shape[self.col_axis])

    @property
    def stack_position(self) -> int | None:
        """Position of :attr:`stack_axis` inside a :data:`PlaneKey`."""
        if self.stack_axis is None:
            return None
        return self.key_axes.index(self.stack_axis)

    def with_stack_index(self, key: PlaneKey, index: int) -> PlaneKey:
        """``key`` moved to plane ``index`` along the stack axis."""
        pos = self.stack_position
        if pos is None:
            raise ValueError("This image has a single plane; there is no stack axis.")
        return (*key[:pos], int(index), *key[pos + 1 :])

    def image_index(self, key: PlaneKey) -> tuple[Any, ...]:
        """Index into the image layer's data that selects the plane ``key``.

        The result keeps the plane axes and the channel axis (as slices) and, for an
        RGB layer, the colour axis (numpy keeps trailing axes).
        """
        index: list[Any] = [slice(None)] * self.ndim
        for axis, i in zip(self.key_axes, key):
            index[axis] = int(i)
        return tuple(index)

    def labels_index(self, key: PlaneKey) -> tuple[Any, ...]:
        """Index into a matching Labels layer's data that selects the plane ``key``."""
        full = self.image_index(key)
        return tuple(full[a] for a in self.spatial_axes)

    def labels_indices(self, key: PlaneKey, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fancy indices (one int array per Labels axis) of the ``True`` pixels of a
        ``(H, W)`` bool ``mask`` on plane ``key``."""
        rows, cols = np.nonzero(mask)
        return self.labels_indices_at(key, rows, cols)

    def labels_indices_at(
        self, key: PlaneKey, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Fancy indices (one int array per Labels axis) of pixels ``(rows, cols)`` of
        plane ``key`` (``(H, W)`` plane coordinates, equal-length int arrays)."""
        by_axis: dict[int, np.ndarray] = {self.row_axis: rows, self.col_axis: cols}
        for axis, i in zip(self.key_axes, key):
            by_axis[axis] = np.full(rows.shape, int(i), dtype=rows.dtype)
        return tuple(by_axis[a] for a in self.spatial_axes)

    def plane_order(self) -> tuple[int, ...]:
        """Axis permutation taking a plane (after ``image_index``) to ``(H, W[, C])``.

        Only meaningful with a channel axis; the remaining axes of a plane are, in
        layer order, the row, column and channel axes.
        """
        kept = sorted(a for a in (self.row_axis, self.col_axis, self.channel_axis) if a is not None)
        order = [kept.index(self.row_axis), kept.index(self.col_axis)]
        if self.channel_axis is not None:
            order.append(kept.index(self.channel_axis))
        return tuple(order)


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """The data shape of an image layer on its ``layer.ndim`` axes (RGB axis dropped)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    return shape[: layer.ndim]


def world_to_layer_data(layer: Any, world: np.ndarray) -> np.ndarray:
    """World coordinates ``(N, D)`` -> ``layer``'s data coordinates ``(N, layer.ndim)``.

    Uses ``layer.world_to_data``, so scale, translate, rotate, shear and affine are
    respected. When ``D > layer.ndim`` the last ``layer.ndim`` world axes are used
    (napari aligns layers on their trailing axes).
    """
    world = np.atleast_2d(np.asarray(world, dtype=float))
    if world.shape[1] < layer.ndim:
        raise ValueError(
            f"world coordinates have {world.shape[1]} axes but layer '{layer.name}' has "
            f"{layer.ndim}; pass full world coordinates."
        )
    out = np.empty((world.shape[0], layer.ndim), dtype=float)
    for i, position in enumerate(world):
        out[i] = np.asarray(layer.world_to_data(position), dtype=float)
    return out


def layer_data_to_world(layer: Any, data: np.ndarray) -> np.ndarray:
    """``layer``'s data coordinates ``(N, layer.ndim)`` -> world ``(N, layer.ndim)``.

    The result covers the layer's own (trailing) world axes only.
    """
    data = np.atleast_2d(np.asarray(data, dtype=float))
    out = np.empty_like(data)
    for i, position in enumerate(data):
        out[i] = np.asarray(layer.data_to_world(position), dtype=float)
    return out


def _layer_axis(world_axis: int, world_ndim: int, layer_ndim: int) -> int:
    return world_axis - (world_ndim - layer_ndim)


def current_geometry(
    layer: Any,
    dims_order: Sequence[int],
    dims_point: Sequence[float],
    channel_axis: int | None = None,
) -> PlaneGeometry:
    """The plane of image ``layer`` under the viewer's current ``dims`` state.

    Args:
        layer: a napari Image layer.
        dims_order: ``viewer.dims.order`` (world axes; the last two are displayed in
            2D as rows and columns).
        dims_point: ``viewer.dims.point`` (world coordinates).
        channel_axis: a layer axis that holds channels (kept whole), or ``None``.

    Raises:
        ValueError: if the displayed axes are not axes of the layer, a displayed axis
            is the channel axis, or the current point lies outside the layer.
    """
    world_ndim = len(dims_point)
    ndim = int(layer.ndim)
    shape = spatial_shape(layer)
    if channel_axis is not None and not 0 <= channel_axis < ndim:
        raise ValueError(
            f"channel axis {channel_axis} does not exist in layer '{layer.name}' "
            f"({ndim} axes); choose an axis between 0 and {ndim - 1}."
        )
    order = [int(a) for a in dims_order]
    row_axis = _layer_axis(order[-2], world_ndim, ndim)
    col_axis = _layer_axis(order[-1], world_ndim, ndim)
    if min(row_axis, col_axis) < 0:
        raise ValueError(
            f"The displayed axes are not axes of layer '{layer.name}' ({ndim}D); "
            "show two of its axes in the viewer (for example with the 'transpose' button)."
        )
    if channel_axis in (row_axis, col_axis):
        raise ValueError(
            f"The channel axis {channel_axis} of layer '{layer.name}' is displayed as a plane "
            "axis; display two spatial axes or choose another channel axis."
        )
    if ndim - (channel_axis is not None) < 2:
        raise ValueError(f"layer '{layer.name}' has fewer than two spatial axes.")

    data_point = np.asarray(layer.world_to_data(np.asarray(dims_point, dtype=float)), float)
    skip = {row_axis, col_axis, channel_axis}
    key: list[int] = []
    for axis in range(ndim):
        if axis in skip:
            continue
        index = int(np.round(data_point[axis]))
        if not 0 <= index < shape[axis]:
            raise ValueError(
                f"The current slice (index {index} on axis {axis}) lies outside layer "
                f"'{layer.name}' (size {shape[axis]}); move the slider onto the image."
            )
        key.append(index)

    stack_axis = None
    for world_axis in reversed(order[:-2]):
        axis = _layer_axis(world_axis, world_ndim, ndim)
        if axis >= 0 and axis != channel_axis:
            stack_axis = axis
            break
    return PlaneGeometry(
        ndim=ndim,
        shape=shape,
        row_axis=row_axis,
        col_axis=col_axis,
        channel_axis=channel_axis,
        current=tuple(key),
        stack_axis=stack_axis,
    )


def plane_key_of(geometry: PlaneGeometry, image_data_coords: np.ndarray) -> list[PlaneKey | None]:
    """The plane each point ``(N, ndim)`` (image data coordinates) lies on.

    Coordinates are rounded as napari does when it slices. A point outside the
    image on a non-plane axis gets ``None``.
    """
    coords = np.atleast_2d(np.asarray(image_data_coords, dtype=float))
    keys: list[PlaneKey | None] = []
    for point in coords:
        key = []
        for axis in geometry.key_axes:
            index = int(np.round(point[axis]))
            if not 0 <= index < geometry.shape[axis]:
                key = None
                break
            key.append(index)
        keys.append(None if key is None else tuple(key))
    return keys


def rowcol_to_xy(geometry: PlaneGeometry, image_data_coords: np.ndarray) -> np.ndarray:
    """SAM ``(x, y)`` = ``(col, row)`` float32 ``(N, 2)`` from image data coordinates."""
    coords = np.atleast_2d(np.asarray(image_data_coords, dtype=float))
    return np.stack(
        [coords[:, geometry.col_axis], coords[:, geometry.row_axis]], axis=1
    ).astype(np.float32)
