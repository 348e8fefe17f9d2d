"""Segment everything on every plane of a stack and give each object one id through it."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from napari_samscope.core.progress import Progress
from napari_samscope.core.volume.stack import (
    EmbeddingCache,
    StackNormalizer,
    plane_embedding,
    plane_indices,
)

__all__ = ["link_labels", "segment_volume_everything_iter"]


def segment_volume_everything_iter(
    generator: Any,
    volume: np.ndarray | StackNormalizer,
    *,
    link_iou: float = 0.3,
    planes: Sequence[int] | None = None,
    cache: EmbeddingCache | None = None,
    image_key: str | None = None,
    **norm_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Segment everything on every plane, then link ids through the stack.

    Args:
        generator: a :class:`~napari_samscope.core.everything.generator.MaskGenerator`.
        volume: ``(Z, H, W[, C])`` stack or a :class:`StackNormalizer`.
        link_iou: minimum IoU for an object to keep its id from one plane to the next.
        planes: the planes to segment (default all; the others stay 0).
        cache: cached whole-plane embeddings are reused (and new ones stored).
        **norm_kwargs: for :class:`StackNormalizer` when ``volume`` is an array.

    Returns (as the generator's value):
        ``(Z, H, W)`` uint32 labels; one object keeps one id through z (see :func:`link_labels`).
    """
    stack = (
        volume if isinstance(volume, StackNormalizer) else StackNormalizer(volume, **norm_kwargs)
    )
    wanted = plane_indices(planes, len(stack))
    key = image_key if image_key is not None else stack.signature()
    predictor = generator.predictor
    labels = np.zeros((len(stack), *stack.plane_shape), dtype=np.uint32)
    for i, z in enumerate(wanted):
        yield Progress(f"segment everything: plane {z}", i, len(wanted))
        embedding = plane_embedding(predictor, stack, key, cache, z) if cache is not None else None
        result = yield from generator.generate_iter(stack.plane(z), embedding=embedding)
        labels[z] = result.to_label_image()
    yield Progress("linking objects through the stack", len(wanted), len(wanted))
    return link_labels(labels, link_iou=link_iou)


def link_labels(
    label_planes: np.ndarray | Sequence[np.ndarray], link_iou: float = 0.3
) -> np.ndarray:
    """Give each object one id through a stack of independently labelled planes.

    Plane by plane, objects are matched to the objects of the previous plane by an
    optimal one-to-one assignment maximising the total IoU (Hungarian algorithm);
    a pair is linked when its IoU is at least ``link_iou``. An unmatched object gets a
    new id (an object missing from a plane is not bridged across the gap).

    Args:
        label_planes: ``(Z, H, W)`` integer labels (0 = background), ids per plane arbitrary.
        link_iou: the minimum IoU of a link, in ``(0, 1]``.

    Returns:
        ``(Z, H, W)`` uint32 with ids 1, 2, ... in order of first appearance.
    """
    from scipy.optimize import linear_sum_assignment

    planes = np.asarray(label_planes)
    if planes.ndim != 3:
        raise ValueError(f"label_planes must be (Z, H, W), not shape {planes.shape}.")
    if planes.dtype.kind not in "ui" or (planes.size and planes.min() < 0):
        raise ValueError("label_planes must hold non-negative integer labels.")
    if not 0.0 < link_iou <= 1.0:
        raise ValueError(f"link_iou must be in (0, 1], not {link_iou!r}.")
    out = np.zeros(planes.shape, dtype=np.uint32)
    next_id = 1
    # the previous plane as indices into its raw ids, and the linked id of each index
    prev_plane, prev_ids, prev_objects = None, np.zeros(0, np.int64), np.zeros(0, bool)
    for z, plane in enumerate(planes):
        ids, inverse = np.unique(plane, return_inverse=True)
        inverse = inverse.reshape(plane.shape)
        objects = ids != 0
        new_ids = np.zeros(len(ids), dtype=np.int64)
        if prev_plane is not None and objects.any() and prev_objects.any():
            # intersections between previous linked ids and current raw ids
            pair = prev_plane.astype(np.int64) * len(ids) + inverse
            counts = np.bincount(pair.ravel(), minlength=len(prev_ids) * len(ids))
            inter = counts.reshape(len(prev_ids), len(ids)).astype(np.float64)
            area_prev, area_cur = inter.sum(1), inter.sum(0)
            union = area_prev[:, None] + area_cur[None, :] - inter
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            iou[~prev_objects, :], iou[:, ~objects] = 0.0, 0.0  # background never links
            rows, cols = linear_sum_assignment(iou, maximize=True)
            for r, c in zip(rows, cols):
                if iou[r, c] >= link_iou:
                    new_ids[c] = prev_ids[r]
        for c in np.flatnonzero(objects & (new_ids == 0)):
            new_ids[c] = next_id
            next_id += 1
        out[z] = new_ids[inverse]
        prev_plane, prev_ids, prev_objects = inverse, new_ids, objects
    return out
