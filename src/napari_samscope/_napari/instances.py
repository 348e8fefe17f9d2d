"""Segment-everything's modes for the napari docks (no Qt): the grid of point prompts
(AMG) and the two instance-decoder modes, AIS and APG (``core.instances``).

The decoder modes need a model with an instance decoder (``SAM.has_instance_decoder``).
They run on the plane's embedding from the session's cache (encoding it if needed), so a
plane already encoded for prompting is not encoded again. A tiled layer (an embeddings
file, or a lazy layer larger than the model input) runs tile by tile instead
(``core.tiling.segment_instances_tiled_iter``: the tiles' maps stitched, one watershed). On a stack every plane is
segmented on its own and the ids are linked through z by overlap, as segment-everything
does.

Parameter names and defaults are micro-sam's; they are repeated here
(:data:`DECODER_DEFAULTS`) so that building a widget does not import torch, and a test
checks that they agree with ``core.instances``.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from napari_samscope._napari import engine
from napari_samscope._napari.coords import PlaneKey
from napari_samscope._napari.engine import embedding_iter
from napari_samscope._napari.images import PlaneSource
from napari_samscope._napari.options import Scope
from napari_samscope._napari.tiled import instances_tiled_iter
from napari_samscope.core.progress import Progress

__all__ = [
    "EverythingMode",
    "DecoderField",
    "DECODER_FIELDS",
    "DECODER_DEFAULTS",
    "decoder_params",
    "model_has_decoder",
    "require_decoder",
    "instances_plane_iter",
    "instances_stack_iter",
    "everything_planes_iter",
]


class EverythingMode(str, Enum):
    """How segment-everything finds the objects."""

    AMG = "amg"  # SAM's mask decoder on a grid of point prompts
    AIS = "ais"  # the instance decoder's maps, seeded watershed
    APG = "apg"  # the instance decoder's seeds as point prompts, refined by SAM

    @property
    def uses_decoder(self) -> bool:
        return self is not EverythingMode.AMG


@dataclass(frozen=True)
class DecoderField:
    """One decoder-mode parameter as a widget shows it."""

    name: str
    low: float
    high: float
    tip: str
    integer: bool = False


#: The decoder modes' parameters (micro-sam's names), in the order shown.
DECODER_FIELDS = (
    DecoderField("foreground_threshold", 0.0, 1.0, "Foreground where the foreground map is above this"),
    DecoderField("center_distance_threshold", 0.0, 1.0, "Seeds where the centre distance is below this"),
    DecoderField("boundary_distance_threshold", 0.0, 1.0,
                 "... and the boundary distance is below this"),
    DecoderField("foreground_smoothing", 0.0, 20.0, "Gaussian sigma of the foreground map (0: none)"),
    DecoderField("distance_smoothing", 0.0, 20.0, "Gaussian sigma of the distance maps (0: none)"),
    DecoderField("nms_threshold", 0.0, 1.0, "Drop a mask overlapping a better one more than this"),
    DecoderField("min_size", 0, 1_000_000, "Remove objects smaller than this (pixels)", integer=True),
)

#: Each decoder mode's parameters and micro-sam's defaults (``AISParams``, ``APGParams``;
#: APG's ``batch_size`` is not shown: it changes speed, not results).
DECODER_DEFAULTS: dict[EverythingMode, dict[str, float]] = {
    EverythingMode.AIS: {
        "foreground_threshold": 0.5, "center_distance_threshold": 0.5,
        "boundary_distance_threshold": 0.5, "foreground_smoothing": 1.0,
        "distance_smoothing": 1.6, "min_size": 0,
    },
    EverythingMode.APG: {
        "foreground_threshold": 0.5, "center_distance_threshold": 0.5,
        "boundary_distance_threshold": 0.5, "nms_threshold": 0.9, "min_size": 25,
    },
}


def decoder_params(mode: EverythingMode, values: Mapping[str, float]) -> dict[str, Any]:
    """The parameters of decoder ``mode`` taken from ``values`` (the shown fields; the
    others are ignored), checked by the core.

    Raises:
        ValueError / TypeError: a bad value, with the core's message.
    """
    if not mode.uses_decoder:
        raise ValueError(f"'{mode.value}' does not use the instance decoder.")
    fields = {f.name: f for f in DECODER_FIELDS}
    params: dict[str, Any] = {}
    for name, default in DECODER_DEFAULTS[mode].items():
        value = values.get(name, default)
        params[name] = int(value) if fields[name].integer else float(value)
    if mode is EverythingMode.AIS:
        from napari_samscope.core.instances.postprocess import AISParams

        AISParams.from_kwargs(**params)
    else:
        from napari_samscope.core.instances.apg import APGParams

        APGParams.from_kwargs(**params)
    return params


def model_has_decoder(sam: Any, selected_name: str | None = None) -> bool:
    """Whether the decoder modes can run: the loaded ``sam`` has an instance decoder, or,
    when none is loaded, the registry model ``selected_name`` comes with one (a model
    given by path is known only once loaded)."""
    if sam is not None:
        return bool(getattr(sam, "has_instance_decoder", False))
    if not selected_name:
        return False
    from napari_samscope.core.weights.microsam_zoo import decoder_name

    return decoder_name(str(selected_name)) is not None


def require_decoder(sam: Any, mode: EverythingMode) -> None:
    """Raise the core's error (it names the models that have a decoder) when ``sam`` cannot
    run decoder ``mode``."""
    if mode.uses_decoder and not model_has_decoder(sam):
        from napari_samscope.core.instances.api import no_decoder_message

        raise ValueError(no_decoder_message(getattr(sam, "name", "?"), f"'{mode.value}'"))


def instances_plane_iter(
    sam: Any,
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    key: PlaneKey,
    mode: EverythingMode,
    params: Mapping[str, Any],
) -> Generator[Progress, None, np.ndarray]:
    """Decoder-mode instances of plane ``key``: ``(H, W)`` uint32, 0 background.

    The plane's embedding comes from ``cache`` or is encoded (and cached) by ``predictor``
    (a predictor of ``sam``). A tiled layer (an embeddings file, or a lazy layer larger
    than the model input: ``engine.uses_tiles``) is segmented tile by tile instead, each
    tile's maps decoded from its embedding (read from the file when it has it) and AIS
    run once on the assembled maps (``_napari.tiled.instances_tiled_iter``).
    """
    if engine.uses_tiles(predictor, source):
        require_decoder(sam, mode)
        return (yield from instances_tiled_iter(
            predictor, sam.instance_decoder, source, key, mode.value, dict(params)))
    embedding = yield from embedding_iter(predictor, cache, source, key)
    yield Progress(f"instance decoder ({mode.value.upper()})", 0, 1)
    labels = sam.segment_instances(embedding, mode=mode.value, **params)
    return np.asarray(labels, dtype=np.uint32)


def instances_stack_iter(
    sam: Any,
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    mode: EverythingMode,
    params: Mapping[str, Any],
    link_iou: float = 0.3,
) -> Generator[Progress, None, tuple[list[PlaneKey], np.ndarray]]:
    """Decoder-mode instances of every plane of the stack line through the current plane,
    ids linked through z by overlap (``core.volume.link_labels``): ``(keys, (Z, H, W) uint32)``.
    Cancelling stops between planes; finished embeddings stay cached."""
    from napari_samscope.core.volume.everything import link_labels

    if not 0.0 < float(link_iou) <= 1.0:  # checked before any plane is encoded
        raise ValueError(f"link_iou must be in (0, 1], not {link_iou!r}.")
    keys = source.stack_keys()
    planes = []
    for z, key in enumerate(keys):
        yield Progress(f"instance decoder ({mode.value.upper()}) plane {z + 1}/{len(keys)}",
                       z, len(keys))
        labels = yield from instances_plane_iter(sam, predictor, cache, source, key, mode, params)
        planes.append(labels)
    yield Progress(f"instance decoder ({mode.value.upper()})", len(keys), len(keys))
    return keys, np.asarray(link_labels(np.stack(planes), link_iou=link_iou), dtype=np.uint32)


def everything_planes_iter(
    sam: Any,
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    scope: Scope,
    mode: EverythingMode,
    params: Mapping[str, Any],
    link_iou: float = 0.3,
) -> Generator[Progress, None, dict[PlaneKey, np.ndarray]]:
    """The segment-everything dock's job: ``{plane key: (H, W) uint32 labels}`` for the
    current plane (``scope`` ``Scope.PLANE``) or every plane of its stack line
    (``Scope.STACK``, ids linked through z), by ``mode``. ``params`` are the mode's:
    ``MaskGenerator``'s for AMG, :func:`decoder_params` for AIS and APG."""
    if scope is Scope.PLANE:
        key = source.geometry.current
        if mode.uses_decoder:
            labels = yield from instances_plane_iter(sam, predictor, cache, source, key, mode, params)
        else:
            labels = yield from engine.everything_plane_iter(predictor, cache, source, key, dict(params))
        return {key: labels}
    if mode.uses_decoder:
        keys, volume = yield from instances_stack_iter(
            sam, predictor, cache, source, mode, params, link_iou=link_iou)
    else:
        keys, volume = yield from engine.everything_stack_iter(
            predictor, cache, source, dict(params), link_iou=link_iou)
    return dict(zip(keys, volume))
