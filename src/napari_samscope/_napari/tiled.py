"""Prompts on large lazy layers and on layers with an embeddings file: the core's tiles.

A plane is segmented through ``core.tiling.TiledPredictor`` (overlapping tiles encoded
at the model's scale, on first use, optionally kept in a zarr embedding store) when

- a tiling is asked for (``PlaneSource.tile_shape`` / ``halo``: the console functions'
  ``tile_shape=`` / ``halo=``); or
- the layer has an *embeddings file* (``PlaneSource.embeddings``): its tiles are read
  from the store, and the ones it lacks are encoded and written to it, so that opening
  the same image again (in a new viewer or a new napari) encodes nothing; or
- the layer is lazy (dask, zarr, multiscale: ``PlaneSource.lazy``) and its planes are
  larger than fits the model input at its scale (``Predictor.max_side``): only the tiles
  under the prompts are read and encoded, never the whole plane; or
- the planes are that large and tiling them is asked for (``PlaneSource.tile_large``:
  the "Segment everything" dock's "tile large planes", on by default), so that small
  objects are found at the model's scale instead of shrunk into one input.

Other layers keep the in-memory path of ``_napari.engine`` (one embedding per plane).

The layer is handed to the core as a ``_napari.lazy_layers.LayerView``: all its planes
(``(*plane key, H, W[, C])``), so one store holds every plane of the layer and a store
made by ``samscope embed`` on the same array (a 2D image, or a stack whose planes are
the viewer's) is the one napari reuses. Intensities: percentiles of a sample of each
plane (as ``samscope embed``), the layer's contrast limits, or min/max of that sample.

A polygon or ellipse prompt is its bounding box plus a mask prompt, as on an untiled
plane: the box chooses the window (the tile that holds it with the most margin, or a
window fitted around a box larger than a tile), and the filled shape, cropped to that
window, is the mask prompt at that window's geometry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneKey
from napari_samscope._napari.images import PlaneSource
from napari_samscope._napari.prompts import ObjectPrompt, mask_to_prompt_logits
from napari_samscope.core.predict.image import Normalization
from napari_samscope.core.predict.input_scale import embedding_key
from napari_samscope.core.progress import Progress

__all__ = [
    "MAX_TILED_PLANES",
    "TILES_IN_MEMORY",
    "uses_tiles",
    "tiled_plane_iter",
    "decode_tiled",
    "precompute_tiled_iter",
    "instances_tiled_iter",
    "forget_tiled",
]

#: How many planes keep their tiled predictor (and the tiles held in memory).
MAX_TILED_PLANES = 4
#: Tiles of a plane with an embeddings file kept in memory besides the file (the most
#: recently prompted ones); without a file every encoded tile of the plane is kept.
TILES_IN_MEMORY = 16


@dataclass
class _Entry:
    tiled: Any
    lock: threading.Lock


_TILED: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_TILED_LOCK = threading.Lock()


def uses_tiles(predictor: Any, source: PlaneSource) -> bool:
    """Whether planes of ``source`` are segmented by tiles (see the module docstring)."""
    if source.embeddings is not None or source.tile_shape is not None or source.halo is not None:
        return True
    side = predictor.max_side() if hasattr(predictor, "max_side") else int(predictor.img_size)
    return (source.lazy or source.tile_large) and max(source.geometry.plane_shape) > side


def forget_tiled(layer_uid: str) -> None:
    """Drop the tiled predictors kept for a layer (it left the viewer)."""
    with _TILED_LOCK:
        for key in [k for k in _TILED if k[0][0] == layer_uid]:
            del _TILED[key]


def _limits(source: PlaneSource, view: Any, key: PlaneKey, rgb: bool) -> Any:
    kwargs = source.stack_kwargs
    if "contrast_limits" in kwargs:
        limits = tuple(float(v) for v in kwargs["contrast_limits"])
        # 8-bit data at its full range is what the core does by default: say so, so that
        # a store made outside napari (``samscope embed``) matches
        return None if view.dtype == np.uint8 and limits == (0.0, 255.0) else limits
    if kwargs.get("normalization") is Normalization.MINMAX:
        from napari_samscope.core.tiling import lazy

        return lazy.estimate_contrast_limits(view, tuple(key), rgb, percentiles=(0.0, 100.0))
    return None  # the core's percentiles of a sample of the plane


def _view(source: PlaneSource) -> tuple[Any, bool]:
    """The layer as the core's tiling reads it, and whether its planes are RGB."""
    view = source.view(select_channels=True)
    plane_ndim = len(source.geometry.key_axes) + 2
    if view.ndim == plane_ndim:
        return view, False
    colours = view.shape[-1]
    if colours == 1:
        return _SingleChannel(view), False
    if colours == 4 and view.channels is None:  # RGBA: drop alpha
        from napari_samscope._napari.lazy_layers import LayerView

        view, colours = LayerView(source.data, source.geometry, source.rgb, (0, 1, 2)), 3
    if colours == 3:
        return view, True
    raise ValueError(
        f"Layer '{source.name}' gives {colours} channels; a tiled image is grey or RGB: "
        "choose 1 or 3 channels (R,G,B) in 'Image conversion'."
    )


class _SingleChannel:
    """A :class:`LayerView` with one channel, seen as greyscale."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.shape = tuple(view.shape[:-1])
        self.dtype = view.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.view[index][..., 0]


def _entry(predictor: Any, source: PlaneSource, key: PlaneKey) -> _Entry:
    """The tiled predictor of plane ``key`` (made and its store opened on first use)."""
    from napari_samscope.core.tiling import TiledPredictor

    cache_key = (source.layer_id, source.signature, tuple(key), embedding_key(predictor),
                 source.embeddings, source.tile_shape, source.halo)
    with _TILED_LOCK:
        entry = _TILED.get(cache_key)
        if entry is not None:
            store = entry.tiled.store
            if store is None or (store.path / "zarr.json").exists():
                _TILED.move_to_end(cache_key)
                return entry
            del _TILED[cache_key]  # its store was deleted: open (create) it again
    from napari_samscope.core.store import StoreMismatch

    view, rgb = _view(source)
    tiled = TiledPredictor.for_predictor(predictor, cache_tiles=TILES_IN_MEMORY)
    try:
        tiled.set_image(view, plane=tuple(key), rgb=rgb, embeddings=source.embeddings,
                        contrast_limits=_limits(source, view, key, rgb),
                        tile_shape=source.tile_shape, halo=source.halo)
    except StoreMismatch as error:
        raise StoreMismatch(
            f"{error} In napari: change or clear the 'embeddings file' field (or the image "
            "conversion settings), or delete that folder to compute it again."
        ) from error
    entry = _Entry(tiled, threading.Lock())
    with _TILED_LOCK:
        entry = _TILED.setdefault(cache_key, entry)
        _TILED.move_to_end(cache_key)
        while len(_TILED) > MAX_TILED_PLANES:
            _TILED.popitem(last=False)
    return entry


def tiled_plane_iter(
    predictor: Any, source: PlaneSource, key: PlaneKey
) -> Generator[Progress, None, Any]:
    """The tiled predictor of plane ``key`` (a ``core.tiling.TiledPredictor``).

    Raises:
        ValueError: the embeddings file cannot be used (made for another image or
            model, not a store, not writable), with the core's message.
    """
    yield Progress("reading the image", 0, 1)
    return _entry(predictor, source, key)


def decode_tiled(entry: Any, objects: Sequence[ObjectPrompt]) -> list[np.ndarray]:
    """One ``(H, W)`` bool mask per object on the entry's plane (tiles encoded or read
    from the store as the prompts need them)."""
    masks = []
    with entry.lock:
        for obj in objects:
            kwargs: dict[str, Any] = {}
            if len(obj.points):
                kwargs["points"], kwargs["labels"] = obj.points, obj.labels
            if obj.box is not None:
                kwargs["bboxes"] = obj.box
            if obj.mask is not None:
                kwargs["masks"] = _window_mask_prompt(entry.tiled, obj.mask, kwargs)
            (part,) = entry.tiled.predict_windows(**kwargs)
            masks.append(part.full_masks()[0])
    return masks


def _window_mask_prompt(tiled: Any, mask: np.ndarray, prompts: dict[str, Any]) -> np.ndarray:
    """The ``(L, L)`` mask prompt of a plane-sized ``mask`` in the window that the object's
    ``prompts`` (points, box) are decoded in, at that window's input geometry."""
    y0, y1, x0, x1 = tiled.frame_of(prompts.get("points"), prompts.get("labels"),
                                    prompts.get("bboxes"))
    emb = tiled.window_embedding((y0, y1, x0, x1))
    side, size = int(tiled.predictor.lowres_size), int(tiled.predictor.img_size)
    h, w = y1 - y0, x1 - x0
    magnification = getattr(emb, "magnification", None)
    scale = None  # SAM's fill geometry, unless the window was placed at another scale
    if magnification is not None and magnification != size * 1.0 / max(h, w):
        scale = float(magnification) * side / size
    return mask_to_prompt_logits(mask[y0:y1, x0:x1], side, scale=scale)


def precompute_tiled_iter(
    predictor: Any, source: PlaneSource, keys: Sequence[PlaneKey]
) -> Generator[Progress, None, int]:
    """Encode the tiles of planes ``keys`` that are neither in memory nor in the store,
    plane by plane; returns the number of tiles encoded. With a store each tile is
    written as soon as it is encoded (cancelling keeps them)."""
    encoded = 0
    for i, key in enumerate(keys):
        yield Progress(f"plane {i + 1}/{len(keys)}: reading the image", i, len(keys))
        entry = _entry(predictor, source, key)
        steps = entry.tiled.precompute()
        while True:
            with entry.lock:
                try:
                    report = next(steps)
                except StopIteration as stop:
                    encoded += int(stop.value)
                    break
            yield Progress(f"plane {i + 1}/{len(keys)}: {report.message}", report.done, report.total)
    return encoded


def _locked_steps(entry: Any, steps: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Run a core job on the entry's tiled predictor, holding its lock between yields
    (so prompts on the same plane wait for a step, not for the whole job)."""
    while True:
        with entry.lock:
            try:
                report = next(steps)
            except StopIteration as stop:
                return stop.value
        yield report


def instances_tiled_iter(
    predictor: Any, decoder: Any, source: PlaneSource, key: PlaneKey, mode: str,
    params: dict[str, Any],
) -> Generator[Progress, None, np.ndarray]:
    """The instance decoder's mode (``"ais"`` or ``"apg"``) on plane ``key``, tile by tile
    (``core.tiling.segment_instances_tiled_iter``: each tile's maps from its embedding,
    from the embeddings file when it has them, AIS once on the assembled maps):
    ``(H, W)`` uint32 labels."""
    from napari_samscope.core.tiling import segment_instances_tiled_iter

    entry = yield from tiled_plane_iter(predictor, source, key)
    steps = segment_instances_tiled_iter(entry.tiled, decoder, mode, **params)
    labels = yield from _locked_steps(entry, steps)
    return np.asarray(labels, dtype=np.uint32)
