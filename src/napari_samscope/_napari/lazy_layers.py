"""Image layers whose data is not in memory (dask, zarr, multiscale), read plane by plane.

A numpy layer's stack line is normalised as a whole (``core.volume.StackNormalizer``).
A *lazy* layer (its data is anything but a numpy array, or it is multiscale, whose
full-resolution level is used) is never read whole:

- :class:`LayerView` shows the layer as the array the core's tiling reads window by
  window (``core.tiling.lazy``): ``(*plane index, H, W[, C])``, with the plane axes of
  the viewer last and the channels (if any) after them. Only the windows asked for are
  read.
- :class:`LazyStack` stands where a ``StackNormalizer`` is used (encoding, propagation,
  segment-everything through a stack) and reads a plane only when that plane is
  encoded. Each plane is normalised on its own (percentiles or min/max of that plane,
  or the layer's contrast limits), as the core does for the planes of a tiled image,
  so that no other plane has to be read to encode one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneGeometry, PlaneKey
from napari_samscope.core.predict.image import Normalization
from napari_samscope.core.volume import StackNormalizer

__all__ = ["LayerView", "LazyStack"]


def _as_numpy(part: Any) -> np.ndarray:
    if hasattr(part, "compute") and not isinstance(part, np.ndarray):  # dask
        part = part.compute()
    return np.asarray(part)


class LayerView:
    """A read-only view of layer data as ``(*key, H, W[, C])`` that reads only what is
    indexed.

    ``key`` are the layer axes that are neither shown as rows and columns nor the channel
    axis (:attr:`PlaneGeometry.key_axes`, in layer order), so a plane's
    :data:`~napari_samscope._napari.coords.PlaneKey` indexes the leading axes. The channel
    axis (or an RGB layer's colour axis) comes last; ``channels`` keeps only those
    channels, in that order.

    Indexing: a tuple of one integer per key axis, then up to two slices (rows,
    columns); the result is a numpy array.
    """

    def __init__(
        self, data: Any, geometry: PlaneGeometry, rgb: bool, channels: tuple[int, ...] | None = None
    ) -> None:
        self.data = data
        self.geometry = geometry
        self.rgb = rgb
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        lead = tuple(int(geometry.shape[a]) for a in geometry.key_axes)
        trailing: tuple[int, ...] = ()
        if rgb:
            trailing = (int(data.shape[-1]),)
        elif geometry.channel_axis is not None:
            trailing = (int(geometry.shape[geometry.channel_axis]),)
        if self.channels is not None and trailing:
            trailing = (len(self.channels),)
        self.shape = lead + tuple(int(s) for s in geometry.plane_shape) + trailing
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)
        self._lead = len(lead)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        g = self.geometry
        if len(index) < self._lead or any(
            not isinstance(i, (int, np.integer)) for i in index[: self._lead]
        ):
            raise IndexError(f"A LayerView is indexed by {self._lead} plane indices, then slices.")
        rows, cols = (tuple(index[self._lead :]) + (slice(None), slice(None)))[:2]
        full: list[Any] = [slice(None)] * g.ndim
        for axis, i in zip(g.key_axes, index[: self._lead]):
            full[axis] = int(i)
        full[g.row_axis], full[g.col_axis] = rows, cols
        part = _as_numpy(self.data[tuple(full)])
        order = list(g.plane_order())
        if self.rgb:
            order.append(part.ndim - 1)
        if order != list(range(part.ndim)):
            part = np.transpose(part, order)
        if self.channels is not None and part.ndim == 3:
            part = part[..., list(self.channels)]
        return part


class _LineVolume:
    """The planes of one stack line of a :class:`LayerView` as ``(Z, H, W[, C])``:
    ``volume[z]`` reads plane ``z`` only."""

    def __init__(self, view: LayerView, keys: list[PlaneKey]) -> None:
        self.view, self.keys = view, keys
        plane = view.shape[view._lead :]
        self.shape = (len(keys), *plane)
        self.dtype = view.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, z: Any) -> np.ndarray:
        if not isinstance(z, (int, np.integer)):
            raise IndexError("The planes of a lazy stack are read one at a time.")
        return self.view[tuple(self.keys[int(z)])]


class LazyStack(StackNormalizer):
    """A ``StackNormalizer`` over a stack line of a lazy layer that reads a plane only
    when it is converted, and normalises each plane on its own (see the module
    docstring).

    Args:
        view: the layer as a :class:`LayerView` (all channels kept).
        keys: the plane keys of the line, in stack order.
        channels: 1 to 3 channel indices used as R, G, B (None: all, at most 3; RGBA
            drops alpha).
        normalization: percentiles or min/max of each plane (ignored for 8-bit data).
        contrast_limits: ``(lo, hi)`` used for every plane instead (the layer's).
    """

    def __init__(
        self,
        view: LayerView,
        keys: list[PlaneKey],
        *,
        channels: Any = None,
        normalization: Normalization | str = Normalization.PERCENTILE,
        contrast_limits: Any = None,
    ) -> None:
        from napari_samscope.core.volume.stack import stack_channels

        volume = _LineVolume(view, keys)
        channels = stack_channels(tuple(volume.shape), channels)
        self.volume = volume
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.normalization = Normalization.parse(normalization, "normalization")
        self.contrast_limits = (
            None if contrast_limits is None else [float(v) for v in np.ravel(contrast_limits)[:2]]
        )
        self._identity = repr((id(view.data), tuple(map(tuple, keys))))

    def plane(self, z: int) -> np.ndarray:
        """Plane ``z`` as ``(H, W, 3)`` uint8, read now."""
        from napari_samscope.core.predict.image import to_rgb_uint8

        data = self.volume[z]
        kwargs: dict[str, Any] = {"allow_constant": True}
        if data.ndim == 3:
            kwargs.update(channel_axis=-1, channels=self.channels)
        if self.contrast_limits is not None:
            kwargs["contrast_limits"] = self.contrast_limits
        else:
            kwargs["normalization"] = self.normalization
        return to_rgb_uint8(data, **kwargs)

    def signature(self) -> str:
        """Identifies the line without reading it (the layer's data and the planes)."""
        import hashlib

        text = f"{self._identity}{self.contrast_limits}{self.normalization.value}"
        return hashlib.sha1(text.encode()).hexdigest()[:16]
