"""Planes of napari image layers -> the 8-bit RGB images SAM encodes.

An image layer may be greyscale, RGB(A), or hold a channel axis; it may be 2D, a
3D stack or a time series, and of any dtype. :class:`ImageSettings` says how its
planes become 8-bit RGB. Conversion of an in-memory (numpy) layer is done per *stack
line* (the planes along the stack axis through a plane; one plane for a 2D image) by
``core.volume.StackNormalizer``, so every plane of a stack gets the same contrast
limits; a dask, zarr or multiscale layer is read and normalised plane by plane instead
(``_napari.lazy_layers``), so that no more than the planes in use is ever read:

- ``Normalization.PERCENTILE``: automatic 0.5-99.5 percentiles of the line, per channel
  (8-bit data is never stretched);
- ``Normalization.CONTRAST``: the layer's current contrast limits (what the user sees);
- ``Normalization.MINMAX``: minimum and maximum of the line, per channel.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneGeometry, PlaneKey
from napari_samscope.core.predict.image import Normalization

__all__ = [
    "Normalization",
    "ImageSettings",
    "PlaneSource",
    "plane_array",
    "forget_layer",
    "is_lazy",
]


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


def is_lazy(data: Any, multiscale: bool = False) -> bool:
    """Whether layer data is read plane by plane (it is not an in-memory numpy array)."""
    return multiscale or not isinstance(data, np.ndarray)


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


def _stack_kwargs(layer: Any, settings: ImageSettings) -> dict[str, Any]:
    """Keyword arguments of ``core.volume.StackNormalizer`` for this layer and settings."""
    kwargs: dict[str, Any] = {}
    if settings.channels is not None and settings.channel_axis is not None:
        kwargs["channels"] = list(settings.channels)
    if settings.normalization is Normalization.CONTRAST:
        kwargs["contrast_limits"] = tuple(float(v) for v in np.ravel(layer.contrast_limits)[:2])
    elif settings.normalization is Normalization.MINMAX:
        kwargs["normalization"] = Normalization.MINMAX
    return kwargs


def _store_path(text: Any) -> str | None:
    """The embeddings file typed by the user (``~`` expanded), or None when empty."""
    import os

    text = str(text or "").strip()
    return os.path.expanduser(text) if text else None


def _pair(value: Any) -> tuple[int, int] | None:
    """``N`` or ``(H, W)`` as ``(H, W)`` (None stays None; the core checks the values)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"A tile shape or halo is an integer or a pair of integers, not {value!r}.") from None
    return a, b


_STACKS: OrderedDict[str, Any] = OrderedDict()
_STACKS_LOCK = threading.Lock()
#: How many normalised stack lines stay in memory (each holds its planes' raw data).
MAX_STACKS = 2


def forget_layer(layer: Any) -> None:
    """Drop the normalised stack lines kept for ``layer`` (it left the viewer)."""
    uid = str(getattr(layer, "unique_id", id(layer)))
    with _STACKS_LOCK:
        for key in [k for k, stack in _STACKS.items() if stack.samscope_layer == uid]:
            del _STACKS[key]


@dataclass(frozen=True)
class PlaneSource:
    """A snapshot of what is needed to read an image layer's planes as SAM input.

    Made on the GUI thread with :meth:`from_layer`; a worker then reads planes from it
    without touching the layer (which the user may delete meanwhile).

    Planes are read by *stack line*: the planes along the stack axis through a given
    plane (one plane for a 2D image). A line is normalised as a whole
    (``core.volume.StackNormalizer``: one set of contrast limits for all its planes), so
    planes are comparable, blank planes work, and an embedding made for the preview is
    the same one that propagation and "Precompute embeddings" use (one cache key
    ``(image_key, z, model_key)``).

    Attributes:
        name: the layer's name (for messages).
        data: the layer's data (level 0 of a multiscale layer).
        rgb: whether the layer is RGB(A) (a trailing colour axis).
        geometry: the plane geometry.
        settings: the conversion settings.
        layer_id: identifies the layer and its data array.
        signature: :meth:`ImageSettings.signature` at snapshot time.
        stack_kwargs: keyword arguments for ``StackNormalizer``.
        lazy: the data is not an in-memory numpy array (dask, zarr, a multiscale
            layer): planes are read one at a time, never a whole stack line
            (``_napari.lazy_layers``).
        embeddings: the embedding store (a ``.zarr`` path) to read and write the tile
            embeddings of this layer, or ``None`` (embeddings stay in memory).
        tile_shape, halo: the tiling of a tiled layer (``core.tiling``; None: the
            model's default); either one makes the layer tiled (``_napari.tiled``).
        tile_large: planes larger than the model input at its scale are segmented by
            tiles even when the layer is in memory (lazy layers always are), so that
            small objects are not shrunk away (``_napari.tiled.uses_tiles``).
    """

    name: str
    data: Any
    rgb: bool
    geometry: PlaneGeometry
    settings: ImageSettings
    layer_id: tuple[str, int]
    signature: tuple[Any, ...]
    stack_kwargs: dict[str, Any]
    lazy: bool = False
    embeddings: str | None = None
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    tile_large: bool = False

    @classmethod
    def from_layer(
        cls, layer: Any, geometry: PlaneGeometry, settings: ImageSettings,
        embeddings: str | None = None, tile_shape: Any = None, halo: Any = None,
        tile_large: bool = False,
    ) -> PlaneSource:
        """Snapshot ``layer`` (``embeddings``, ``tile_shape``, ``halo``, ``tile_large``:
        see the class attributes; an empty ``embeddings`` = none).

        Raises:
            ValueError: more than 3 channels on the channel axis and no channel choice,
                or a chosen channel that does not exist.
        """
        data = _level0(layer)
        if settings.channel_axis is not None:
            n = geometry.shape[settings.channel_axis]
            if settings.channels is None and n > 3:
                raise ValueError(
                    f"Layer '{layer.name}' has {n} channels on axis {settings.channel_axis}; "
                    "choose up to 3 of them as R,G,B (for example 0,1,2)."
                )
            bad = [c for c in settings.channels or () if not 0 <= c < n]
            if bad or (settings.channels is not None and not 1 <= len(settings.channels) <= 3):
                raise ValueError(
                    f"Channels {settings.channels} do not fit layer '{layer.name}' ({n} channels "
                    f"on axis {settings.channel_axis}); give 1 to 3 indices from 0 to {n - 1}."
                )
        return cls(
            name=str(layer.name),
            data=data,
            rgb=bool(getattr(layer, "rgb", False)),
            geometry=geometry,
            settings=settings,
            layer_id=(str(getattr(layer, "unique_id", id(layer))), id(data)),
            signature=settings.signature(layer),
            stack_kwargs=_stack_kwargs(layer, settings),
            lazy=is_lazy(data, bool(getattr(layer, "multiscale", False))),
            embeddings=_store_path(embeddings),
            tile_shape=_pair(tile_shape), halo=_pair(halo), tile_large=bool(tile_large),
        )

    def view(self, select_channels: bool = False) -> Any:
        """The layer as a ``_napari.lazy_layers.LayerView`` (``(*key, H, W[, C])``, read
        window by window); ``select_channels`` keeps only the chosen channels."""
        from napari_samscope._napari.lazy_layers import LayerView

        channels = self.stack_kwargs.get("channels") if select_channels else None
        return LayerView(self.data, self.geometry, self.rgb,
                         None if channels is None else tuple(channels))

    # ------------------------------------------------------------------ planes and lines

    def plane(self, key: PlaneKey) -> np.ndarray:
        """The raw plane ``key`` (see :func:`plane_array`)."""
        return plane_array(self.data, self.geometry, key, self.rgb)

    def z_of(self, key: PlaneKey) -> int:
        """Index of plane ``key`` along its stack line (0 for a 2D image)."""
        pos = self.geometry.stack_position
        return 0 if pos is None else int(key[pos])

    def line_of(self, key: PlaneKey) -> PlaneKey:
        """The stack line through ``key`` (``key`` with its stack index set to 0)."""
        pos = self.geometry.stack_position
        return tuple(key) if pos is None else self.geometry.with_stack_index(key, 0)

    def stack_keys(self, around: PlaneKey | None = None) -> list[PlaneKey]:
        """Every plane along the stack axis through ``around`` (default: the current one)."""
        around = self.geometry.current if around is None else around
        if self.geometry.stack_axis is None:
            return [tuple(around)]
        n = self.geometry.shape[self.geometry.stack_axis]
        return [self.geometry.with_stack_index(around, z) for z in range(n)]

    def image_key(self, key: PlaneKey) -> str:
        """The cache's image key of the stack line through ``key``."""
        text = repr((self.layer_id, self.line_of(key), self.signature))
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def line_volume(self, key: PlaneKey) -> np.ndarray:
        """The raw stack line through ``key`` as ``(Z, H, W)`` or ``(Z, H, W, C)``.

        A view of the layer's data when it is a numpy array (no copy); other arrays
        (dask, zarr) are read into memory (:meth:`stack` never does that for them).
        """
        g = self.geometry
        index = list(g.image_index(key))
        if g.stack_axis is not None:
            index[g.stack_axis] = slice(None)
        line = np.asarray(self.data[tuple(index)])
        kept = sorted(a for a in (g.stack_axis, g.row_axis, g.col_axis, g.channel_axis)
                      if a is not None)
        order = [kept.index(a) for a in (g.stack_axis, g.row_axis, g.col_axis, g.channel_axis)
                 if a is not None]
        if self.rgb:
            order.append(line.ndim - 1)
        line = np.transpose(line, order)
        return line if g.stack_axis is not None else line[None]

    def stack(self, key: PlaneKey) -> Any:
        """The ``core.volume.StackNormalizer`` of the line through ``key`` (kept for reuse).

        Raises:
            ValueError: the line cannot be converted (constant, too many channels, ...),
                with the core's message.
        """
        from napari_samscope.core.volume import StackNormalizer

        image_key = self.image_key(key)
        with _STACKS_LOCK:
            stack = _STACKS.get(image_key)
            if stack is not None:
                _STACKS.move_to_end(image_key)
                return stack
        try:
            if self.lazy:  # read plane by plane, never the whole line
                from napari_samscope._napari.lazy_layers import LazyStack

                stack = LazyStack(self.view(), self.stack_keys(key), **self.stack_kwargs)
            else:
                stack = StackNormalizer(self.line_volume(key), **self.stack_kwargs)
        except ValueError as error:
            raise ValueError(f"Cannot segment layer '{self.name}': {error}") from error
        stack.samscope_layer = self.layer_id[0]  # for forget_layer
        with _STACKS_LOCK:
            _STACKS[image_key] = stack
            while len(_STACKS) > MAX_STACKS:
                _STACKS.popitem(last=False)
        return stack
