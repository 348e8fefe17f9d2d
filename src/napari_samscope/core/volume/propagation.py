"""Propagation: grow 2D seed masks into one 3D object, plane by plane.

Each step prompts the next plane with the previous plane's mask (as a box, a
low-resolution mask prompt plus its box, or points deep inside it). Also importable
from ``core.volume``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch

from napari_samscope.core.choices import Choice
from napari_samscope.core.progress import Progress
from napari_samscope.core.volume.stack import (
    EmbeddingCache,
    StackNormalizer,
    plane_embedding,
    plane_indices,
)

__all__ = [
    "PROPAGATION_MODES",
    "PropagationMode",
    "mask_to_lowres_logits",
    "points_inside",
    "propagate_iter",
]


class PropagationMode(Choice):
    """What prompts the next plane (strings are accepted too)."""

    #: a low-resolution mask prompt of the previous plane's mask, plus its box
    MASK = "mask"
    #: the box of the previous plane's mask
    BOX = "box"
    #: ``n_points`` positive points deep inside the previous plane's mask
    POINTS = "points"


#: The valid strings of :class:`PropagationMode`.
PROPAGATION_MODES = PropagationMode.values()


def propagate_iter(
    predictor: Any,
    volume: np.ndarray | StackNormalizer,
    seeds: dict[int, np.ndarray],
    *,
    mode: PropagationMode | str = PropagationMode.MASK,
    iou_threshold: float = 0.5,
    stop_planes: Sequence[int] = (),
    cache: EmbeddingCache | None = None,
    image_key: str | None = None,
    n_points: int = 3,
    **norm_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Grow 2D seed masks into one 3D object, plane by plane, in both directions.

    Each step prompts the next plane with the previous plane's mask: its box
    (``"box"``), a low-resolution mask prompt plus its box (``"mask"``), or
    ``n_points`` positive points deep inside it (``"points"``). A direction stops
    before a plane where the new mask is empty, where its IoU with the previous plane's
    mask is below ``iou_threshold``, at a plane of ``stop_planes`` (the plugin passes the
    planes that hold a single negative point), or at the stack's edge.

    Between two seeded planes both seeds grow towards each other and **meet in the
    middle**: each plane is filled from the nearer seed (the lower one on a tie); if
    one side stops early, the other side continues up to it.

    Args:
        predictor: a ``Predictor`` (its current image is restored afterwards).
        volume: ``(Z, H, W[, C])`` stack or a :class:`StackNormalizer`.
        seeds: ``{plane: (H, W) bool mask}``, at least one non-empty mask.
        cache: embedding cache (planes are encoded on demand and stored there).
        **norm_kwargs: for :class:`StackNormalizer` when ``volume`` is an array.

    Returns (as the generator's value):
        ``(Z, H, W)`` bool: the seeds and the propagated masks.
    """
    mode = PropagationMode.parse(mode, "mode")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be between 0 and 1, not {iou_threshold!r}.")
    stack = (
        volume if isinstance(volume, StackNormalizer) else StackNormalizer(volume, **norm_kwargs)
    )
    depth, shape = len(stack), stack.plane_shape
    seeds = _check_seeds(seeds, depth, shape)
    stops = set(plane_indices(list(stop_planes), depth)) - set(seeds)
    key = image_key if image_key is not None else stack.signature()
    out = np.zeros((depth, *shape), dtype=bool)
    for z, mask in seeds.items():
        out[z] = mask
    order = sorted(seeds)
    # Each span is bounded by seeds (or the stack's ends, -1 and depth); a chain grows
    # from a seed into the span: [current plane, step, seed, alive].
    spans = [(-1, order[0])] + list(zip(order, order[1:])) + [(order[-1], depth)]
    total, done = depth - len(order), 0
    previous = predictor.get_embedding() if predictor.is_image_set else None
    try:
        for a, b in spans:
            chains = [c for c in ([a, +1, a, a >= 0], [b, -1, b, b < depth]) if c[3]]
            while True:
                up = next((c for c in chains if c[1] > 0), None)
                down = next((c for c in chains if c[1] < 0), None)
                top = down[0] if down else b  # planes strictly between are free
                bottom = up[0] if up else a
                alive = [c for c in chains if c[3] and bottom < c[0] + c[1] < top]
                if not alive:
                    break
                # the chain nearer to its seed goes first (meet in the middle; lower on ties)
                chain = min(alive, key=lambda c: (abs(c[0] - c[2]), -c[1]))
                z = chain[0] + chain[1]
                mask = None
                if z not in stops:
                    mask = _step(predictor, stack, key, cache, out[chain[0]], z, mode, n_points)
                if mask is None or not mask.any() or _iou(mask, out[chain[0]]) < iou_threshold:
                    chain[3] = False
                else:
                    out[z] = mask
                    chain[0] = z
                done += 1
                yield Progress("propagating", min(done, total), total)
    finally:
        if previous is not None:
            predictor.set_embedding(previous)
        else:
            predictor.reset_image()
    return out


def _check_seeds(
    seeds: dict[int, np.ndarray], depth: int, shape: tuple[int, int]
) -> dict[int, np.ndarray]:
    if not isinstance(seeds, dict) or not seeds:
        raise ValueError("seeds must be a non-empty dict {plane: (H, W) bool mask}.")
    out = {}
    for z, mask in seeds.items():
        (z,) = plane_indices([z], depth)
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(
                f"The seed mask of plane {z} has shape {mask.shape}, not the plane's {shape}."
            )
        if mask.dtype != np.bool_:
            raise TypeError(f"Seed masks must be bool arrays, not {mask.dtype} (plane {z}).")
        if not mask.any():
            raise ValueError(
                f"The seed mask of plane {z} is empty; draw or segment the object first."
            )
        out[z] = mask
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _step(
    predictor: Any,
    stack: StackNormalizer,
    key: str,
    cache: EmbeddingCache | None,
    previous: np.ndarray,
    z: int,
    mode: PropagationMode,
    n_points: int,
) -> np.ndarray:
    """Segment plane ``z`` prompted by the previous plane's mask; returns ``(H, W)`` bool."""
    predictor.set_embedding(plane_embedding(predictor, stack, key, cache, z))
    rows, cols = np.flatnonzero(previous.any(1)), np.flatnonzero(previous.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)  # XYXY
    if mode is PropagationMode.BOX:
        prompts: dict[str, Any] = {"bboxes": box}
    elif mode is PropagationMode.MASK:
        prompts = {"bboxes": box, "masks": mask_to_lowres_logits(predictor, previous)}
    else:
        prompts = {"points": points_inside(previous, n_points)}
    return predictor.predict(multimask_output=False, **prompts).masks[0]


def mask_to_lowres_logits(predictor: Any, mask: np.ndarray, scale: float = 20.0) -> np.ndarray:
    """A ``(H, W)`` bool mask as an ``(L, L)`` float32 mask prompt in the model frame.

    The mask is resized like the image (to the current image's ``input_size`` when the
    mask has its size, whatever its input scale; else longest side to ``S``), zero-padded
    to ``S x S``, area-averaged to ``L x L`` and mapped to logits ``scale * (2 f - 1)``.
    """
    from torch.nn import functional as F

    from napari_samscope.core.predict.transforms import resize_longest_side_shape

    size, lowres = predictor.img_size, predictor.lowres_size
    h, w = resize_longest_side_shape(mask.shape[0], mask.shape[1], size)
    if getattr(predictor, "original_size", None) == tuple(mask.shape[:2]) and predictor.input_size:
        h, w = predictor.input_size
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, (h, w), mode="bilinear", align_corners=False, antialias=True)
    m = F.pad(m, (0, size - w, 0, size - h))
    m = F.adaptive_avg_pool2d(m, lowres)[0, 0]
    return (scale * (2.0 * m - 1.0)).numpy()


def points_inside(mask: np.ndarray, n_points: int = 3) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` points deep inside ``mask``, spread out (farthest-point sampling).

    The first point is where the distance to the background is largest; the next ones
    are the pixels of the inner half (by distance) farthest from the points so far.
    """
    from scipy.ndimage import distance_transform_edt

    if n_points < 1:
        raise ValueError(f"n_points must be at least 1, not {n_points}.")
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    inner = np.argwhere(depth >= max(1.0, 0.5 * depth.max()))  # (row, col)
    inner = inner[:: max(1, len(inner) // 4096)]
    chosen = [np.unravel_index(int(np.argmax(depth)), depth.shape)]
    for _ in range(1, min(n_points, len(inner))):
        dist = np.min([np.hypot(*(inner - np.array(p)).T) for p in chosen], axis=0)
        if dist.max() <= 0:
            break
        chosen.append(tuple(inner[int(np.argmax(dist))]))
    return np.array([[c, r] for r, c in chosen], dtype=np.float64)
