"""Planes of napari image layers -> the 8-bit RGB images SAM encodes.

An image layer may be greyscale, RGB(A), or hold a channel axis; it may be 2D, a
3D stack or a time series, and of any dtype. :class:`ImageSettings` says how its
planes become 8-bit RGB (``core.image.to_rgb_uint8`` does the conversion):

- ``Normalization.PERCENTILE``: automatic 0.5-99.5 percentiles per plane and channel
  (the core's default);
- ``Normalization.CONTRAST``: the layer's current contrast limits (what the user
  sees), identical for every plane of a stack;
- ``Normalization.MINMAX``: minimum and maximum per plane and channel.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneGeometry, PlaneKey
from napari_samscope.core.progress import Progress

__all__ = [
    "Normalization",
    "ImageSettings",
    "PlaneSource",
    "plane_array",
]


class Normalization(str, Enum):
    """How a plane's intensities are mapped to 0..255."""

    PERCENTILE = "percentile"
    CONTRAST = "contrast limits"
    MINMAX = "minmax"


@dataclass(frozen=True)
class ImageSettings:
    """How planes of an image layer are turned into SAM's 8-bit RGB input.

    Attributes:
        normalization: see :class:`Normalization`.
        channel_axis: the layer axis that holds channels, or ``None`` (greyscale or RGB).
        channels: 1 to 3 channel indices used as R, G, B (required with more than 3).
    """

    normalization: Normalization = Normalization.PERCENTILE
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None

    def signature(self, layer: Any) -> tuple[Any, ...]:
        """What changes the embedding of a plane (part of the embedding cache key)."""
        limits = None
        if self.normalization is Normalization.CONTRAST:
            limits = tuple(float(v) for v in np.ravel(layer.contrast_limits))
        return (self.normalization.value, self.channel_axis, self.channels, limits)


def _level0(layer: Any) -> Any:
    data = layer.data
    return data[0] if getattr(layer, "multiscale", False) else data


def plane_array(data: Any, geometry: PlaneGeometry, key: PlaneKey, rgb: bool) -> np.ndarray:
    """The plane ``key`` of image ``data`` as ``(H, W)``, ``(H, W, C)`` (channel axis)
    or ``(H, W, 3|4)`` (RGB layer), read into memory (works for dask and zarr)."""
    plane = np.asarray(data[geometry.image_index(key)])
    order = list(geometry.plane_order())
    if rgb:
        order.append(plane.ndim - 1)
    if order != list(range(plane.ndim)):
        plane = np.transpose(plane, order)
    return plane


def _convert_kwargs(layer: Any, settings: ImageSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.channel_axis is not None:
        kwargs["channel_axis"] = -1
        if settings.channels is not None:
            kwargs["channels"] = list(settings.channels)
    if settings.normalization is Normalization.CONTRAST:
        kwargs["contrast_limits"] = tuple(float(v) for v in np.ravel(layer.contrast_limits)[:2])
    elif settings.normalization is Normalization.MINMAX:
        kwargs["normalization"] = "minmax"
    return kwargs


@dataclass(frozen=True)
class PlaneSource:
    """A snapshot of what is needed to read an image layer's planes as SAM input.

    Made on the GUI thread with :meth:`from_layer`; a worker then reads planes from
    it without touching the layer (which the user may delete meanwhile).

    Attributes:
        name: the layer's name (for messages).
        data: the layer's data (level 0 of a multiscale layer).
        rgb: whether the layer is RGB(A) (a trailing colour axis).
        geometry: the plane geometry.
        settings: the conversion settings.
        signature: :meth:`ImageSettings.signature` at snapshot time.
        convert_kwargs: keyword arguments for ``core.image.to_rgb_uint8``.
    """

    name: str
    data: Any
    rgb: bool
    geometry: PlaneGeometry
    settings: ImageSettings
    signature: tuple[Any, ...]
    convert_kwargs: dict[str, Any]

    @classmethod
    def from_layer(cls, layer: Any, geometry: PlaneGeometry, settings: ImageSettings) -> PlaneSource:
        return cls(
            name=str(layer.name),
            data=_level0(layer),
            rgb=bool(getattr(layer, "rgb", False)),
            geometry=geometry,
            settings=settings,
            signature=settings.signature(layer),
            convert_kwargs=_convert_kwargs(layer, settings),
        )

    def plane(self, key: PlaneKey) -> np.ndarray:
        """The raw plane ``key`` (see :func:`plane_array`)."""
        return plane_array(self.data, self.geometry, key, self.rgb)

    def rgb_plane(self, key: PlaneKey, blank_if_constant: bool = False) -> np.ndarray:
        """Plane ``key`` as SAM input: ``(H, W, 3) uint8``.

        Args:
            blank_if_constant: return zeros for a constant plane (an empty plane of a
                stack) instead of raising.

        Raises:
            ValueError: the plane cannot be converted (for example, more than 3
                channels and no channel choice), with the core's message.
        """
        from napari_samscope.core.image import to_rgb_uint8

        plane = self.plane(key)
        try:
            return to_rgb_uint8(plane, **self.convert_kwargs)
        except ValueError as error:
            if blank_if_constant and "constant" in str(error).lower():
                return np.zeros((*plane.shape[:2], 3), dtype=np.uint8)
            raise ValueError(f"Cannot segment plane {key} of layer '{self.name}': {error}") from error

    def stack_keys(self, around: PlaneKey | None = None) -> list[PlaneKey]:
        """Every plane along the stack axis through ``around`` (default: the current one)."""
        geometry = self.geometry
        around = geometry.current if around is None else around
        if geometry.stack_axis is None:
            return [around]
        n = geometry.shape[geometry.stack_axis]
        return [geometry.with_stack_index(around, z) for z in range(n)]

    def stack_rgb_iter(self, keys: Sequence[PlaneKey]) -> Generator[Progress, None, np.ndarray]:
        """The planes ``keys`` as one ``(Z, H, W, 3) uint8`` volume; constant planes are black.

        Yields ``Progress("preparing planes", i, Z)`` so a worker can be cancelled.
        """
        h, w = self.geometry.plane_shape
        out = np.empty((len(keys), h, w, 3), dtype=np.uint8)
        for i, key in enumerate(keys):
            yield Progress("preparing planes", i, len(keys))
            out[i] = self.rgb_plane(key, blank_if_constant=True)
        yield Progress("preparing planes", len(keys), len(keys))
        return out
