"""Console functions: segment napari layers from code and get Labels data back.

In napari's console (``Window > Console``)::

    from napari_samscope import segment_image_layer, segment_everything_layer
    labels = segment_image_layer(viewer.layers["nuclei"], viewer.layers["SAM points"],
                                 viewer.layers["SAM boxes"])
    viewer.add_labels(labels, scale=viewer.layers["nuclei"].scale)

    everything = segment_everything_layer(viewer.layers["nuclei"], points_per_side=16)
    instances = segment_everything_layer(viewer.layers["nuclei"], "vit_b_lm", mode="ais")
    stack = segment_stack_layer(viewer.layers["nuclei 3D"], viewer.layers["SAM points"])

Every function returns a ``uint32`` array shaped like the image's planes (its
channel axis removed), 0 = background, with the same axis order as the layer, so
``viewer.add_labels(result, scale=image.scale, translate=image.translate)`` lies on
the image. ``model`` may be a ``SAM``, a registry name or a path; by default the
model loaded in the viewer's samscope widgets is used, else the project's default.
They run in the calling thread (use the widgets for background work).

Large images and reused embeddings: ``embeddings="cells.emb.zarr"`` (as the widget's
"embeddings file" field) keeps the image's tile embeddings in a zarr store, created on
first use and read by the next call (or the next session), which then encodes nothing;
a store made for another image or model is refused. ``tile_shape=`` / ``halo=`` choose
the tiling (default: the model's input, halo 1/8 of it)::

    labels = segment_everything_layer(viewer.layers["slide"], mode="ais",
                                      embeddings="slide.emb.zarr", tile_shape=1024, halo=128)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_samscope._napari import engine
from napari_samscope._napari.coords import PlaneGeometry, PlaneKey, current_geometry
from napari_samscope._napari.images import ImageSettings, Normalization, PlaneSource
from napari_samscope._napari.instances import (
    EverythingMode,
    everything_planes_iter,
    require_decoder,
)
from napari_samscope._napari.labels import Segmentation
from napari_samscope._napari.options import Scope, parse
from napari_samscope._napari.prompts import collect_prompts
from napari_samscope._napari.session import get_session
from napari_samscope.core.progress import run

__all__ = ["segment_image_layer", "segment_everything_layer", "segment_stack_layer"]


def _viewer(viewer: Any) -> Any:
    if viewer is not None:
        return getattr(viewer, "__wrapped__", viewer)
    try:
        from napari import current_viewer

        found = current_viewer()
    except ImportError:  # pragma: no cover - napari is a dependency of the plugin
        found = None
    return getattr(found, "__wrapped__", found)


def _predictor(model: Any, viewer: Any) -> Any:
    from napari_samscope.core.predict.resolve import as_predictor

    if model is None and viewer is not None:
        session = get_session(viewer)
        if session.sam is not None:
            return session.new_predictor()
    return as_predictor(model)


def _instance_model(model: Any, viewer: Any) -> Any:
    """The ``SAM`` (with its instance decoder) for the decoder modes."""
    if model is None and viewer is not None and get_session(viewer).sam is not None:
        return get_session(viewer).sam
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        from napari_samscope.core.predict.sam_api import SAM

        return SAM(model)
    if not hasattr(model, "has_instance_decoder"):
        raise TypeError(
            "The instance decoder modes need a SAM, a registry name or a checkpoint path as "
            f"model, not a {type(model).__name__}."
        )
    return model


def _geometry(image: Any, viewer: Any, channel_axis: int | None) -> tuple[PlaneGeometry, Any]:
    """The plane geometry from the viewer's dims, or the last two axes and plane 0."""
    if viewer is not None and image in viewer.layers:
        point = viewer.dims.point
        return current_geometry(image, viewer.dims.order, point, channel_axis), point
    world = np.asarray(image.data_to_world(np.zeros(image.ndim)), dtype=float)
    return current_geometry(image, tuple(range(image.ndim)), world, channel_axis), world


def _source(image: Any, geometry: PlaneGeometry, settings: ImageSettings, tiling: dict[str, Any]) -> PlaneSource:
    """The layer's snapshot with the tiling keywords (``embeddings``, ``tile_shape``,
    ``halo``), the geometry checked before any model is loaded."""
    if tiling.get("tile_shape") is not None or tiling.get("halo") is not None:
        from napari_samscope.core.tiling.geometry import check_tiling

        tile, halo = tiling.get("tile_shape"), tiling.get("halo")
        check_tiling(tile if tile is not None else max(1, 2 * int(max(np.ravel(halo))) + 1),
                     halo if halo is not None else 0)
    return PlaneSource.from_layer(image, geometry, settings, **tiling)


def _settings(normalization: str, channel_axis: int | None, channels: Any) -> ImageSettings:
    try:
        norm = Normalization(normalization)
    except ValueError:
        valid = [n.value for n in Normalization]
        raise ValueError(f"normalization must be one of {valid}, not {normalization!r}.") from None
    return ImageSettings(norm, channel_axis, None if channels is None else tuple(channels))


def _prompt_layer(prompts: Any, kind: str) -> Any:
    """Layers pass through; an ``(N, D)`` array of world coordinates becomes a layer."""
    from napari.layers import Layer, Points, Shapes

    if prompts is None or isinstance(prompts, Layer):
        return prompts

    if kind == "points":
        return Points(np.atleast_2d(np.asarray(prompts, dtype=float)))
    return Shapes([np.asarray(b, dtype=float) for b in prompts], shape_type="rectangle")


def _to_labels(geometry: PlaneGeometry, segmentation: Segmentation) -> np.ndarray:
    out = np.zeros(geometry.labels_shape, dtype=np.uint32)
    areas = [(sum(int(m.sum()) for m in obj.values()), k) for k, obj in enumerate(segmentation.objects)]
    for _area, k in sorted(areas, reverse=True):  # small objects stay visible on top
        idx = segmentation.indices(k)
        out[idx] = k + 1
    return out


def segment_image_layer(
    image: Any,
    points: Any = None,
    boxes: Any = None,
    model: Any = None,
    *,
    viewer: Any = None,
    normalization: str = "percentile",
    channel_axis: int | None = None,
    channels: Any = None,
    embeddings: Any = None,
    tile_shape: Any = None,
    halo: Any = None,
) -> np.ndarray:
    """Segment the objects prompted on an image layer (every prompted plane).

    Args:
        image: a napari Image layer (2D, a stack or a time series; grey, RGB or with
            ``channel_axis``).
        points: a Points layer (polarity in its ``label`` feature) or an ``(N, D)`` array
            of world coordinates (all positive).
        boxes: a Shapes layer (rectangles, polygons, ellipses) or a list of ``(4, D)``
            rectangle corner arrays in world coordinates.
        model: a ``SAM``, a ``Predictor``, a registry name or a path; default: the
            viewer's loaded model or the project's default model.
        viewer: the viewer whose ``dims`` give the displayed plane axes (default: the
            current viewer, else the image's last two axes).
        normalization: ``"percentile"``, ``"contrast limits"`` or ``"minmax"``.
        embeddings: a ``.zarr`` embedding store for the image's tiles (created on
            first use, reused by later calls: nothing is encoded again), as the
            widget's "embeddings file"; refused when made for another image or model.
        tile_shape, halo: segment by tiles of this size (halo included, at most the
            model input) with this overlap; default: the model input and 1/8 of it.

    Returns:
        ``uint32`` labels shaped like the image's planes, objects numbered 1..N
        (boxes first, then the free points of each plane).

    Raises:
        ValueError: no prompt lies on the image, or bad settings.
    """
    viewer = _viewer(viewer)
    geometry, point = _geometry(image, viewer, channel_axis)
    prompts = collect_prompts(image, geometry, point, _prompt_layer(points, "points"),
                              _prompt_layer(boxes, "boxes"))
    if not prompts.prompted_planes:
        raise ValueError(f"No prompt lies on image '{image.name}'; add points or boxes on it.")
    source = _source(image, geometry, _settings(normalization, channel_axis, channels),
                     {"embeddings": embeddings, "tile_shape": tile_shape, "halo": halo})
    predictor = _predictor(model, viewer)
    objects: list[dict[PlaneKey, np.ndarray]] = []
    for key in prompts.prompted_planes:
        seg = run(engine.segment_plane_iter(predictor, None, source, key,
                                            prompts.on(key).objects()))
        objects.extend(seg.objects)
    return _to_labels(geometry, Segmentation(geometry, objects))


def segment_everything_layer(
    image: Any,
    model: Any = None,
    *,
    stack: bool = False,
    link_iou: float = 0.3,
    viewer: Any = None,
    normalization: str = "percentile",
    channel_axis: int | None = None,
    channels: Any = None,
    embeddings: Any = None,
    tile_shape: Any = None,
    halo: Any = None,
    mode: str = "amg",
    **params: Any,
) -> np.ndarray:
    """Segment everything on the current plane of ``image`` (or every plane, ``stack=True``).

    With ``stack=True`` ids are linked across planes by overlap (``link_iou``), so an
    object keeps one id through the stack. ``mode``: ``"amg"`` (the grid of point prompts;
    ``params`` go to ``MaskGenerator``: ``points_per_side``, ``pred_iou_thresh``, ...), or
    ``"ais"`` / ``"apg"`` with a model that has an instance decoder (``params`` with
    micro-sam's names, as ``SAM.segment_instances``).
    ``embeddings``, ``tile_shape``, ``halo``: as :func:`segment_image_layer` (AIS and APG
    then decode each tile's maps from its embedding and run once on the whole plane).

    Returns:
        ``uint32`` labels shaped like the image's planes (only the segmented plane(s)
        are non-zero).
    """
    viewer = _viewer(viewer)
    mode = parse(EverythingMode, mode, "mode")
    geometry, _point = _geometry(image, viewer, channel_axis)
    source = _source(image, geometry, _settings(normalization, channel_axis, channels),
                     {"embeddings": embeddings, "tile_shape": tile_shape, "halo": halo})
    if stack and geometry.stack_axis is None:
        raise ValueError(f"'{image.name}' has a single plane; call with stack=False.")
    sam = None
    if mode.uses_decoder:
        sam = _instance_model(model, viewer)
        require_decoder(sam, mode)
        predictor = sam.predictor()
    else:
        predictor = _predictor(model, viewer)
    scope = Scope.STACK if stack else Scope.PLANE
    planes = run(everything_planes_iter(sam, predictor, None, source, scope, mode, params, link_iou))
    out = np.zeros(geometry.labels_shape, dtype=np.uint32)
    for key, plane in planes.items():
        out[geometry.labels_index(key)] = plane
    return out


def segment_stack_layer(
    image: Any,
    points: Any = None,
    boxes: Any = None,
    model: Any = None,
    *,
    mode: str = "mask",
    iou_threshold: float = 0.5,
    viewer: Any = None,
    normalization: str = "percentile",
    channel_axis: int | None = None,
    channels: Any = None,
    embeddings: Any = None,
    tile_shape: Any = None,
    halo: Any = None,
) -> np.ndarray:
    """Follow one prompted object through a stack ("Segment all slices").

    The prompts on one or more planes describe one object; it is propagated to the
    neighbouring planes (``mode``: ``"mask"``, ``"box"`` or ``"points"``) until the
    IoU with the previous plane drops below ``iou_threshold``, the mask vanishes, the
    stack ends, or a plane holds a single negative point. Between two prompted
    planes both sides fill in.
    ``embeddings``, ``tile_shape``, ``halo``: as :func:`segment_image_layer`.

    Returns:
        ``uint32`` labels shaped like the image's planes with the object as 1.
    """
    viewer = _viewer(viewer)
    geometry, point = _geometry(image, viewer, channel_axis)
    prompts = collect_prompts(image, geometry, point, _prompt_layer(points, "points"),
                              _prompt_layer(boxes, "boxes"))
    source = _source(image, geometry, _settings(normalization, channel_axis, channels),
                     {"embeddings": embeddings, "tile_shape": tile_shape, "halo": halo})
    predictor = _predictor(model, viewer)
    seg = run(engine.propagate_prompts_iter(predictor, None, source, prompts,
                                            mode=mode, iou_threshold=iou_threshold))
    return _to_labels(geometry, seg)
