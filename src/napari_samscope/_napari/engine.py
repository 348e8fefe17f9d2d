"""The segmentation jobs behind the widgets and the console API (no Qt).

Every job is a generator that yields :class:`~napari_samscope.core.progress.Progress`
and returns its result (the project's compute contract): the widgets run them in
``napari.qt.threading`` workers, :mod:`napari_samscope._napari.api` runs them
headless with ``core.progress.run``. Jobs read images through a
:class:`~napari_samscope._napari.images.PlaneSource` snapshot, never through a
layer, so a layer deleted mid-run cannot break them.

Embeddings live in a ``core.volume.EmbeddingCache`` under the core's key
``(image_key, z, embedding_key)`` (``PlaneSource.image_key`` names the stack line), so the
preview, "Precompute embeddings", propagation and segment-everything share them.

A layer with an embeddings file, or a lazy layer whose planes are larger than the
model input, is segmented by tiles instead (:mod:`napari_samscope._napari.tiled`):
prompts, "Precompute embeddings" and segment-everything on a plane go through the
core's tiled predictor; ``segment_plane_iter`` and ``precompute_iter`` choose the path.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Generator, Hashable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneKey
from napari_samscope._napari.images import PlaneSource
from napari_samscope._napari.labels import Segmentation
from napari_samscope._napari.options import PropagationMode, parse
from napari_samscope._napari.prompts import ObjectPrompt, PromptSet, mask_to_prompt_logits
from napari_samscope._napari.refinement import ClickMemory, Decoded
from napari_samscope._napari.tiled import (
    decode_tiled,
    precompute_tiled_iter,
    tiled_plane_iter,
    uses_tiles,
)
from napari_samscope.core.predict.input_scale import embedding_key
from napari_samscope.core.predict.resolution import SmallObjectWarning
from napari_samscope.core.progress import Progress

__all__ = [
    "PROPAGATION_MODES",
    "embedding_iter",
    "cached_embeddings",
    "decode_objects",
    "decode_planes",
    "segment_plane_iter",
    "precompute_iter",
    "propagate_prompts_iter",
    "everything_plane_iter",
    "everything_stack_iter",
    "annotate_planes_iter",
    "segment_tiled_iter",
    "uses_tiles",
]

PROPAGATION_MODES = tuple(mode.value for mode in PropagationMode)


def embedding_iter(
    predictor: Any, cache: Any, source: PlaneSource, key: PlaneKey
) -> Generator[Progress, None, Any]:
    """The embedding of plane ``key``: from ``cache``, or encoded (and cached) now.

    A cached embedding returns at once, without yielding. The cache stores a new
    embedding before the next yield, so cancelling never throws away a finished
    encoding.
    """
    from napari_samscope.core.volume import encode_planes_iter

    z, image_key = source.z_of(key), source.image_key(key)
    if cache is not None:
        hit = cache.get((image_key, z, embedding_key(predictor)))
        if hit is not None:
            return hit  # no progress to report: the live preview stays quiet
    stack = yield from _stack_iter(source, key)
    with warnings.catch_warnings(record=True) as caught:  # e.g. a plane shrunk below the
        warnings.simplefilter("always", SmallObjectWarning)  # model's scale: say so
        found = yield from encode_planes_iter(predictor, stack, [z], cache=cache, image_key=image_key)
    notify_warnings(caught)
    return found[z]


def cached_embeddings(
    predictor: Any, cache: Any, source: PlaneSource, keys: Sequence[PlaneKey]
) -> dict[PlaneKey, Any] | None:
    """The cached embeddings of planes ``keys``, or ``None`` unless every one is cached
    (always ``None`` for a tiled layer: its tiles are chosen by the prompts)."""
    if cache is None or uses_tiles(predictor, source):
        return None
    found = {}
    for key in keys:
        hit = cache.get((source.image_key(key), source.z_of(key), embedding_key(predictor)))
        if hit is None:
            return None
        found[key] = hit
    return found


def decode_planes(
    predictor: Any,
    embeddings: dict[PlaneKey, Any],
    prompts: PromptSet,
    geometry: Any,
    lock: threading.Lock | None = None,
    memory: ClickMemory | None = None,
    draft: bool = False,
) -> Segmentation:
    """Decode the objects prompted on each plane of ``embeddings`` (all already encoded):
    the same result as :func:`segment_plane_iter` plane by plane, with no encoding.
    With ``memory`` (the live preview), a click added to an object refines its last mask
    (:mod:`~napari_samscope._napari.refinement`). ``draft``: the predictor's quick draft
    of each object (``Predictor.predict(draft=True)``), marked as such; it reads the click
    memory but does not write to it."""
    objects: list[dict[PlaneKey, np.ndarray]] = []
    for key, embedding in embeddings.items():
        scope = (key, getattr(embedding, "model_key", None), getattr(embedding, "input_size", None),
                 getattr(embedding, "original_size", None))
        masks = decode_objects(predictor, embedding, prompts.on(key).objects(), lock,
                               memory=memory, scope=scope, draft=draft)
        objects.extend({key: m} for m in masks)
    return Segmentation(geometry, objects, draft=draft)


def _stack_iter(source: PlaneSource, key: PlaneKey) -> Generator[Progress, None, Any]:
    yield Progress("reading the image", 0, 1)
    return source.stack(key)


def decode_objects(
    predictor: Any,
    embedding: Any,
    objects: Sequence[ObjectPrompt],
    lock: threading.Lock | None = None,
    multimask_output: bool = False,
    memory: ClickMemory | None = None,
    scope: Hashable = None,
    draft: bool = False,
) -> list[np.ndarray]:
    """One ``(H, W)`` bool mask per object, decoded on ``embedding``.

    Two or more objects made of a box alone are decoded in one batch; the others one
    by one (their point counts differ). ``lock`` guards the predictor's current
    embedding when several threads share it. With ``memory``, an object whose prompts
    extend one decoded before on ``scope`` gets that object's logits as its mask prompt,
    and the objects decoded now are remembered (single-mask output only). ``draft``:
    the predictor's quick drafts (one pass, :meth:`Predictor.predict` ``draft``), which
    are not remembered.
    """
    if multimask_output:
        memory = None
    decoded: list[Decoded] = []
    masks: list[np.ndarray | None] = [None] * len(objects)
    with lock if lock is not None else nullcontext(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SmallObjectWarning)
        predictor.set_embedding(embedding)
        extra = {"draft": True} if draft else {}  # other predictors need not know drafts
        box_only = [i for i, o in enumerate(objects)
                    if o.box is not None and o.mask is None and len(o.points) == 0]
        if len(box_only) > 1:  # N objects: one mask each (the best candidate with multimask)
            boxes = np.stack([objects[i].box for i in box_only])
            pred = predictor.predict(bboxes=boxes, multimask_output=multimask_output, **extra)
            for j, i in enumerate(box_only):
                masks[i] = pred.masks[j]
                if memory is not None and pred.logits is not None:
                    decoded.append(Decoded(objects[i], None, pred.logits[j]))
        for i, obj in enumerate(objects):
            if masks[i] is not None:
                continue
            kwargs: dict[str, Any] = {"multimask_output": multimask_output, **extra}
            if len(obj.points):
                kwargs["points"], kwargs["labels"] = obj.points, obj.labels
            if obj.box is not None:
                kwargs["bboxes"] = obj.box
            if obj.mask is not None:
                kwargs["masks"] = mask_to_prompt_logits(
                    obj.mask, predictor.lowres_size, scale=_prompt_scale(predictor, obj.mask.shape)
                )
            previous = None if memory is None else memory.mask_input(scope, obj)
            if previous is not None:
                kwargs["masks"] = previous
            pred = predictor.predict(**kwargs)
            best = int(np.argmax(pred.scores)) if multimask_output else 0
            masks[i] = pred.masks[best]
            if memory is not None and pred.logits is not None:
                decoded.append(Decoded(obj, previous, pred.logits[best]))
    if memory is not None and not draft:
        memory.remember(scope, decoded)
    notify_warnings(caught)
    return [np.asarray(m, dtype=bool) for m in masks]  # type: ignore[arg-type]


def notify_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """Show each distinct :class:`SmallObjectWarning` as a napari notification (a user
    looking at the canvas never sees the console) and pass other warnings on."""
    shown: set[str] = set()
    for record in caught:
        if issubclass(record.category, SmallObjectWarning):
            text = str(record.message)
            if text not in shown:
                shown.add(text)
                from napari.utils.notifications import show_warning

                show_warning(text)
        else:
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)


def segment_plane_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    key: PlaneKey,
    objects: Sequence[ObjectPrompt],
    lock: threading.Lock | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Segment the objects prompted on plane ``key`` (encoding the plane, or the tiles
    under the prompts of a tiled layer, if needed)."""
    if uses_tiles(predictor, source):
        entry = yield from tiled_plane_iter(predictor, source, key)
        masks = _decode_tiled(entry, objects)
        return Segmentation(source.geometry, [{key: m} for m in masks])
    embedding = yield from embedding_iter(predictor, cache, source, key)
    masks = decode_objects(predictor, embedding, objects, lock)
    return Segmentation(source.geometry, [{key: m} for m in masks])


def segment_tiled_iter(
    predictor: Any, source: PlaneSource, prompts: PromptSet
) -> Generator[Progress, None, Segmentation]:
    """Segment the objects prompted on every prompted plane of a tiled layer
    (:func:`uses_tiles`): only the tiles under the prompts are read and encoded (or read
    from the embeddings file)."""
    objects: list[dict[PlaneKey, np.ndarray]] = []
    for key in prompts.prompted_planes:
        entry = yield from tiled_plane_iter(predictor, source, key)
        objects.extend({key: m} for m in _decode_tiled(entry, prompts.on(key).objects()))
    return Segmentation(source.geometry, objects)


def _decode_tiled(entry: Any, objects: Sequence[ObjectPrompt]) -> list[np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SmallObjectWarning)
        masks = decode_tiled(entry, objects)
    notify_warnings(caught)
    return masks


def precompute_iter(
    predictor: Any, cache: Any, source: PlaneSource, around: PlaneKey | None = None,
    batch_size: int = 2,
) -> Generator[Progress, None, int]:
    """Encode every plane of the stack line through ``around`` that is not cached yet.

    Returns the number of planes of the line. Each finished batch is cached before
    the next yield, so cancelling keeps the work done.

    A tiled layer (:func:`uses_tiles`) encodes the tiles of every plane of the line
    into its embeddings file, plane by plane; without a file (a large lazy layer) only
    the plane through ``around`` is encoded, since tiles without a file live in memory.
    """
    from napari_samscope.core.volume import encode_planes_iter

    around = source.geometry.current if around is None else around
    if uses_tiles(predictor, source):
        keys = source.stack_keys(around) if source.embeddings is not None else [tuple(around)]
        yield from precompute_tiled_iter(predictor, source, keys)
        return len(keys)
    stack = yield from _stack_iter(source, around)
    done = yield from encode_planes_iter(
        predictor, stack, None, batch_size=batch_size, cache=cache,
        image_key=source.image_key(around))
    return len(done)


def propagate_prompts_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    prompts: PromptSet,
    mode: PropagationMode | str = PropagationMode.MASK,
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
        ValueError: no stack, no prompt on this stack, several objects on one plane,
            a bad mode.
    """
    from napari_samscope.core.volume import propagate_iter

    mode = parse(PropagationMode, mode, "Propagation mode").value
    geometry = source.geometry
    if geometry.stack_axis is None:
        raise ValueError("This image has a single plane; use 'Segment' instead of 'all slices'.")
    keys = source.stack_keys()
    line = set(keys)
    seeds: dict[int, np.ndarray] = {}
    for key in prompts.prompted_planes:
        if key not in line:
            continue
        objects = prompts.on(key).objects()
        if len(objects) != 1:
            raise ValueError(
                f"'Segment all slices' follows one object, but the prompts on plane {key} "
                f"describe {len(objects)}; keep one box (or one group of points) per plane."
            )
        seg = yield from segment_plane_iter(predictor, cache, source, key, objects, lock)
        if seg.objects[0][key].any():
            seeds[source.z_of(key)] = seg.objects[0][key]
    if not seeds:
        raise ValueError(
            f"Add a prompt on a plane of this stack of '{source.name}' (one whose mask is "
            "not empty) before 'Segment all slices'."
        )
    stops = [source.z_of(k) for k in prompts.stop_planes if k in line]
    stack = source.stack(keys[0])
    volume = yield from propagate_iter(
        predictor, stack, seeds, mode=mode, iou_threshold=iou_threshold, stop_planes=stops,
        cache=cache, image_key=source.image_key(keys[0]))
    obj = {keys[z]: volume[z] for z in range(len(keys)) if volume[z].any()}
    return Segmentation(geometry, [obj])


def everything_plane_iter(
    predictor: Any, cache: Any, source: PlaneSource, key: PlaneKey, params: dict[str, Any]
) -> Generator[Progress, None, np.ndarray]:
    """Segment everything on plane ``key``: a ``(H, W) uint32`` label image.

    A cached embedding of the plane is reused.
    """
    from napari_samscope.core.everything.generator import MaskGenerator

    if uses_tiles(predictor, source):
        return (yield from _everything_tiled_iter(predictor, source, key, params))
    generator = MaskGenerator(predictor, **params)
    stack = yield from _stack_iter(source, key)
    z = source.z_of(key)
    cached = cache.get((source.image_key(key), z, embedding_key(predictor))) if cache is not None else None
    result = yield from generator.generate_iter(stack.plane(z), embedding=cached)
    return np.asarray(result.to_label_image(), dtype=np.uint32)


def _everything_tiled_iter(
    predictor: Any, source: PlaneSource, key: PlaneKey, params: dict[str, Any]
) -> Generator[Progress, None, np.ndarray]:
    """Segment everything on plane ``key`` of a tiled layer, tile by tile, stitched
    across the halos (``core.tiling.segment_everything_tiled_iter``)."""
    from napari_samscope.core.tiling import segment_everything_tiled_iter

    entry = yield from tiled_plane_iter(predictor, source, key)
    steps = segment_everything_tiled_iter(entry.tiled, **params)
    while True:
        with entry.lock:
            try:
                report = next(steps)
            except StopIteration as stop:
                result = stop.value
                break
        yield report
    return np.asarray(result.to_label_image(), dtype=np.uint32)


def everything_stack_iter(
    predictor: Any, cache: Any, source: PlaneSource, params: dict[str, Any], link_iou: float = 0.3
) -> Generator[Progress, None, tuple[list[PlaneKey], np.ndarray]]:
    """Segment everything on every plane of the stack line through the current plane and
    link ids across planes by overlap: ``(keys, (Z, H, W) uint32)``."""
    from napari_samscope.core.everything.generator import MaskGenerator
    from napari_samscope.core.volume import segment_volume_everything_iter

    keys = source.stack_keys()
    stack = yield from _stack_iter(source, keys[0])
    generator = MaskGenerator(predictor, **params)
    labels = yield from segment_volume_everything_iter(
        generator, stack, link_iou=link_iou, cache=cache, image_key=source.image_key(keys[0]))
    return keys, np.asarray(labels, dtype=np.uint32)


def annotate_planes_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    keys: Sequence[PlaneKey],
    objects_of: Any,
    lock: threading.Lock | None = None,
) -> Generator[Progress, None, dict[PlaneKey, np.ndarray]]:
    """Segment the objects of every plane of ``keys``: ``{key: (H, W) uint32}``, ids from 1
    on each plane, larger objects painted first so that small ones stay visible.

    ``objects_of(key, rgb_plane)`` gives the plane's :class:`ObjectPrompt` list (boxes
    from a detector or a Shapes layer). Embeddings come from and go to ``cache``.
    """
    planes = {}
    for i, key in enumerate(keys):
        yield Progress(f"auto-annotating plane {i + 1}/{len(keys)}", i, len(keys))
        stack = source.stack(key)
        objects = objects_of(key, stack.plane(source.z_of(key)))
        if not objects:
            planes[key] = np.zeros(source.geometry.plane_shape, dtype=np.uint32)
            continue
        embedding = yield from embedding_iter(predictor, cache, source, key)
        masks = [m for m in decode_objects(predictor, embedding, objects, lock) if m.any()]
        planes[key] = Segmentation(source.geometry, [{key: m} for m in masks]).label_plane(
            key, np.uint32)
    yield Progress("auto-annotating", len(keys), len(keys))
    return planes


def _prompt_scale(predictor: Any, shape: tuple[int, ...]) -> float | None:
    """Low-resolution prompt pixels per image pixel for a mask of ``shape`` on the
    predictor's current image: None (SAM's fill geometry) unless the image was placed at
    another magnification (``scale="auto"`` or a number)."""
    magnification = getattr(predictor, "magnification", None)
    height, width = int(shape[0]), int(shape[1])
    if magnification is None or magnification == predictor.img_size * 1.0 / max(height, width):
        return None
    return float(magnification) * predictor.lowres_size / predictor.img_size
