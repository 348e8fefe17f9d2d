"""The segmentation jobs behind the widgets and the console API (no Qt).

Every job is a generator that yields :class:`~napari_samscope.core.progress.Progress`
and returns its result (the project's compute contract): the widgets run them in
``napari.qt.threading`` workers, :mod:`napari_samscope._napari.api` runs them
headless with ``core.progress.run``. Jobs read images through a
:class:`~napari_samscope._napari.images.PlaneSource` snapshot, never through a
layer, so a layer deleted mid-run cannot break them.

Embeddings are cached per plane in an ``EmbeddingCache`` under the key
``(image_id, plane key, conversion signature, model key)``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Hashable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneKey
from napari_samscope._napari.images import PlaneSource
from napari_samscope._napari.labels import Segmentation
from napari_samscope._napari.prompts import ObjectPrompt, PromptSet, mask_to_prompt_logits
from napari_samscope.core.progress import Progress

__all__ = [
    "PropagationMode",
    "cache_key",
    "embedding_iter",
    "decode_objects",
    "segment_plane_iter",
    "precompute_iter",
    "propagate_prompts_iter",
    "everything_plane_iter",
    "everything_stack_iter",
]

PROPAGATION_MODES = ("mask", "box", "points")
PropagationMode = str


def cache_key(image_id: Hashable, source: PlaneSource, model_key: str, key: PlaneKey) -> tuple:
    """The embedding-cache key of plane ``key`` of an image (see the module docstring)."""
    return (image_id, tuple(key), source.signature, model_key)


def embedding_iter(
    predictor: Any, cache: Any, source: PlaneSource, image_id: Hashable, key: PlaneKey
) -> Generator[Progress, None, Any]:
    """The embedding of plane ``key``: from ``cache``, or encoded (and cached) now.

    Yields before encoding and after caching, so cancelling never throws away a
    finished encoding.
    """
    ck = cache_key(image_id, source, predictor.model_key, key)
    embedding = cache.get(ck) if cache is not None else None
    if embedding is None:
        yield Progress(f"encoding plane {key}" if key else "encoding image", 0, 1)
        (embedding,) = predictor.encode([source.rgb_plane(key)])
        if cache is not None:
            cache.put(ck, embedding)
        yield Progress(f"encoding plane {key}" if key else "encoding image", 1, 1)
    return embedding


def decode_objects(
    predictor: Any,
    embedding: Any,
    objects: Sequence[ObjectPrompt],
    lock: threading.Lock | None = None,
    multimask_output: bool = False,
) -> list[np.ndarray]:
    """One ``(H, W)`` bool mask per object, decoded on ``embedding``.

    Objects made of a box alone are decoded in one batch; others one by one (their
    point counts differ). ``lock`` guards the predictor's current embedding when
    several threads share it.
    """
    masks: list[np.ndarray | None] = [None] * len(objects)
    with lock if lock is not None else nullcontext():
        predictor.set_embedding(embedding)
        box_only = [i for i, o in enumerate(objects) if o.box is not None and o.mask is None
                    and len(o.points) == 0]
        if len(box_only) > 1:  # N objects: one mask each (the best candidate with multimask)
            boxes = np.stack([objects[i].box for i in box_only])
            pred = predictor.predict(bboxes=boxes, multimask_output=multimask_output)
            for j, i in enumerate(box_only):
                masks[i] = pred.masks[j]
        for i, obj in enumerate(objects):
            if masks[i] is not None:
                continue
            kwargs: dict[str, Any] = {"multimask_output": multimask_output}
            if len(obj.points):
                kwargs["points"], kwargs["labels"] = obj.points, obj.labels
            if obj.box is not None:
                kwargs["bboxes"] = obj.box
            if obj.mask is not None:
                kwargs["masks"] = mask_to_prompt_logits(obj.mask, predictor.lowres_size)
            pred = predictor.predict(**kwargs)
            best = int(np.argmax(pred.scores)) if multimask_output else 0
            masks[i] = pred.masks[best]
    return [np.asarray(m, dtype=bool) for m in masks]  # type: ignore[arg-type]


def segment_plane_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    image_id: Hashable,
    key: PlaneKey,
    objects: Sequence[ObjectPrompt],
    lock: threading.Lock | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Segment the objects prompted on plane ``key`` (encoding the plane if needed)."""
    embedding = yield from embedding_iter(predictor, cache, source, image_id, key)
    masks = decode_objects(predictor, embedding, objects, lock)
    return Segmentation(source.geometry, [{key: m} for m in masks])


def precompute_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    image_id: Hashable,
    keys: Sequence[PlaneKey],
    batch_size: int = 2,
) -> Generator[Progress, None, int]:
    """Encode the planes ``keys`` that are not cached yet, ``batch_size`` at a time.

    Returns the number of planes encoded now. Each finished batch is cached before
    the next yield, so cancelling keeps the work done.
    """
    model_key = predictor.model_key
    todo = [k for k in keys if cache.get(cache_key(image_id, source, model_key, k)) is None]
    total = len(todo)
    for start in range(0, total, batch_size):
        yield Progress("encoding planes", start, total)
        chunk = todo[start : start + batch_size]
        rgbs = [source.rgb_plane(k, blank_if_constant=True) for k in chunk]
        for k, embedding in zip(chunk, predictor.encode(rgbs, batch_size=batch_size)):
            cache.put(cache_key(image_id, source, model_key, k), embedding)
    yield Progress("encoding planes", total, total)
    return total


def propagate_prompts_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    image_id: Hashable,
    prompts: PromptSet,
    mode: PropagationMode = "mask",
    iou_threshold: float = 0.5,
    lock: threading.Lock | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Segment one object through the stack from the prompted plane(s).

    The prompted planes on the stack line through the current plane are segmented
    first (each must describe exactly one object); their masks seed
    ``core.volume.propagate_iter``, which goes both ways, fills between two seeded
    planes, and stops at the IoU threshold, a vanished mask, the stack's edge, or a
    plane whose only prompt is one negative point.

    Raises:
        ValueError: no prompt on this stack, several objects on one plane, a bad mode.
    """
    from napari_samscope.core.volume import propagate_iter

    if mode not in PROPAGATION_MODES:
        raise ValueError(f"Propagation mode must be one of {PROPAGATION_MODES}, not {mode!r}.")
    geometry = source.geometry
    if geometry.stack_axis is None:
        raise ValueError("This image has a single plane; use 'Segment' instead of 'all slices'.")
    keys = source.stack_keys()
    index = {k: z for z, k in enumerate(keys)}
    seeds: dict[int, np.ndarray] = {}
    for key in prompts.prompted_planes:
        if key not in index:
            continue
        objects = prompts.on(key).objects()
        if len(objects) != 1:
            raise ValueError(
                f"'Segment all slices' follows one object, but the prompts on plane {key} "
                f"describe {len(objects)}; keep one box (or one group of points) per plane."
            )
        seg = yield from segment_plane_iter(predictor, cache, source, image_id, key, objects, lock)
        seeds[index[key]] = seg.objects[0][key]
    if not seeds:
        raise ValueError(
            f"Add a prompt on a plane of this stack of '{source.name}' before 'Segment all slices'."
        )
    stops = {index[k] for k in prompts.stop_planes if k in index}
    volume = yield from source.stack_rgb_iter(keys)
    result = yield from propagate_iter(
        predictor, volume, seeds, mode=mode, iou_threshold=iou_threshold, stop_planes=stops
    )
    obj = {keys[z]: np.asarray(result[z], bool) for z in range(len(keys)) if result[z].any()}
    return Segmentation(geometry, [obj])


def everything_plane_iter(
    predictor: Any, source: PlaneSource, key: PlaneKey, params: dict[str, Any]
) -> Generator[Progress, None, np.ndarray]:
    """Segment everything on plane ``key``: a ``(H, W) uint32`` label image."""
    from napari_samscope.core.everything import MaskGenerator

    generator = MaskGenerator(predictor, **params)
    result = yield from generator.generate_iter(source.rgb_plane(key))
    return np.asarray(result.to_label_image(), dtype=np.uint32)


def everything_stack_iter(
    predictor: Any, source: PlaneSource, params: dict[str, Any], link_iou: float = 0.3
) -> Generator[Progress, None, tuple[list[PlaneKey], np.ndarray]]:
    """Segment everything on every plane of the stack through the current plane and
    link ids across planes by overlap: ``(keys, (Z, H, W) uint32)``."""
    from napari_samscope.core.everything import MaskGenerator
    from napari_samscope.core.volume import segment_volume_everything_iter

    keys = source.stack_keys()
    volume = yield from source.stack_rgb_iter(keys)
    generator = MaskGenerator(predictor, **params)
    labels = yield from segment_volume_everything_iter(generator, volume, link_iou=link_iou)
    return keys, np.asarray(labels, dtype=np.uint32)
